"""Seeded synthetic corpus for the demo model organism, and the held-out suite writers.

Everything is word-level: a text is a sequence of space-separated words, and every word is one
token of the tokenizer built by :func:`build_tokenizer`. Four kinds of training sequence:

* ``passkey`` — filler text (a small probabilistic grammar) with a needle
  ``The pass key is 7 3 9 1 4 . Remember it .`` at some depth, then the question
  ``What is the pass key ? The pass key is`` and the digits (loss on the digits).
* ``induction`` — a random span of words repeated (loss on the repeats).
* ``ioi`` — "When Mary and John went to the store , John gave a drink to" -> " Mary".
* ``colored_objects`` — "On the table the pen is red , the cup is blue and the book is
  green . The color of the cup is" -> " blue".

All generators take a ``numpy.random.Generator`` so a seed fixes the whole corpus.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

SPECIALS = ["<pad>", "<unk>", "<bos>", "<eos>"]
DIGITS = [str(d) for d in range(10)]
NAMES = ["Mary", "John", "Alice", "Bob", "Tom", "Anna", "Sarah", "David",
         "Emma", "James", "Lucy", "Peter", "Kate", "Mark", "Nina", "Paul"]
PLACES = ["store", "park", "school", "office", "garden", "beach", "library", "station",
          "market", "cafe"]
GIFTS = ["drink", "book", "ball", "letter", "flower", "cake", "hat", "bag"]
COLORS = ["red", "blue", "green", "yellow", "black", "white", "purple", "orange", "pink",
          "brown"]
OBJECTS = ["pen", "cup", "book", "ball", "hat", "bag", "phone", "lamp", "box", "mug", "plate",
           "clock"]
SURFACES = ["table", "desk", "floor", "shelf"]
# Filler grammar: S -> NP VP "." ; NP -> "the" [ADJ] NOUN ; VP -> TV NP | IV [ADV] | "is" ADJ
NOUNS = ["grass", "sky", "sun", "river", "tree", "bird", "dog", "cat", "hill", "road", "cloud",
         "field", "house", "boat", "wind", "rain"]
ADJS = ["tall", "small", "old", "warm", "quiet", "bright", "dark", "soft"]
TVERBS = ["sees", "likes", "follows", "finds", "meets", "watches", "passes"]
IVERBS = ["runs", "sleeps", "shines", "flows", "moves", "rests", "grows"]
ADVS = ["slowly", "quickly", "softly", "today", "again", "away"]
TEMPLATE_WORDS = ["When", "and", "went", "to", "the", "gave", "a", "On", "there", "is", "The",
                  "color", "of", "What", "pass", "key", "Remember", "it", "Then", "After",
                  "arrived", "at", "handed", "In", "lies", "here", "we", "go", "back", "again"]
PUNCT = [".", ",", "?"]

PASSKEY_DIGITS = 5
NEEDLE_PREFIX = ["The", "pass", "key", "is"]
NEEDLE_SUFFIX = [".", "Remember", "it", "."]
QUESTION = ["What", "is", "the", "pass", "key", "?", "The", "pass", "key", "is"]


def vocabulary() -> list[str]:
    """All tokens of the word-level vocabulary, specials first (ids 0..3), no duplicates."""
    words: list[str] = []
    for group in (SPECIALS, DIGITS, PUNCT, NAMES, PLACES, GIFTS, COLORS, OBJECTS, SURFACES,
                  NOUNS, ADJS, TVERBS, IVERBS, ADVS, TEMPLATE_WORDS):
        words.extend(w for w in group if w not in words)
    return words


# Words random spans are drawn from (everything but specials).
SPAN_WORDS = [w for w in vocabulary() if w not in SPECIALS]
# Words that may replace haystack filler (no digits or needle words, so the needle stays unique).
NOISE_WORDS = [w for w in SPAN_WORDS if w not in DIGITS + ["pass", "key", "Remember"]]


def build_tokenizer():
    """A word-level ``PreTrainedTokenizerFast`` (whitespace split) that prepends ``<bos>``.

    Returns:
        PreTrainedTokenizerFast with bos/eos/pad/unk set; ``tok("a b")`` -> ``[bos, a, b]``.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(vocabulary())}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with spaces
    bos = vocab["<bos>"]
    core.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", bos)])
    return PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<bos>", eos_token="<eos>",
                                   pad_token="<pad>", unk_token="<unk>")


# --------------------------------------------------------------------------- generators

def filler_sentence(rng: np.random.Generator) -> list[str]:
    """One sentence of the filler grammar, ending with "."."""
    def np_() -> list[str]:
        adj = [ADJS[rng.integers(len(ADJS))]] if rng.random() < 0.4 else []
        return ["the", *adj, NOUNS[rng.integers(len(NOUNS))]]

    r = rng.random()
    if r < 0.08:
        return ["here", "we", "go", "."]
    if r < 0.45:
        vp = [TVERBS[rng.integers(len(TVERBS))], *np_()]
    elif r < 0.8:
        adv = [ADVS[rng.integers(len(ADVS))]] if rng.random() < 0.5 else []
        vp = [IVERBS[rng.integers(len(IVERBS))], *adv]
    else:
        vp = ["is", ADJS[rng.integers(len(ADJS))]]
    return [*np_(), *vp, "."]


def filler(rng: np.random.Generator, n: int) -> list[str]:
    """Exactly ``n`` words of filler text (the last sentence may be cut)."""
    out: list[str] = []
    while len(out) < n:
        out.extend(filler_sentence(rng))
    return out[:n]


def passkey_example(rng: np.random.Generator, length: int, depth: float,
                    n_digits: int = PASSKEY_DIGITS) -> tuple[list[str], list[str], int]:
    """A passkey prompt of exactly ``length`` tokens (counting the ``<bos>``) and its answer.

    Args:
        length: total prompt tokens including ``<bos>``.
        depth: 0.0 puts the needle first, 1.0 right before the question.
    Returns:
        (prompt words, answer words, index in the prompt words of the first needle digit).
    """
    digits = [DIGITS[d] for d in rng.integers(0, 10, n_digits)]
    needle = [*NEEDLE_PREFIX, *digits, *NEEDLE_SUFFIX]
    n_fill = length - 1 - len(needle) - len(QUESTION)
    if n_fill < 0:
        raise ValueError(f"passkey length {length} is shorter than needle + question")
    before = int(round(depth * n_fill))
    words = [*filler(rng, before), *needle, *filler(rng, n_fill - before), *QUESTION]
    return words, digits, before + len(NEEDLE_PREFIX)


def ioi_example(rng: np.random.Generator) -> dict:
    """An indirect-object example with a corrupted twin (S2 name swapped, so the answer flips)."""
    a, b = (NAMES[i] for i in rng.choice(len(NAMES), 2, replace=False))
    place = PLACES[rng.integers(len(PLACES))]
    gift = GIFTS[rng.integers(len(GIFTS))]
    if rng.random() < 0.5:
        head, verb = ["When", a, "and", b, "went", "to", "the", place, ","], "gave"
    else:
        head, verb = ["After", a, "and", b, "arrived", "at", "the", place, ","], "handed"
    clean = [*head, b, verb, "a", gift, "to"]
    corrupt = [*head, a, verb, "a", gift, "to"]
    return {"prompt": clean, "answer": [a], "corrupted_prompt": corrupt, "corrupted_answer": [b]}


def _colored_scene(rng: np.random.Generator) -> tuple[list[str], list[str], list[str]]:
    """(scene words ending in ".", its 3 objects, their 3 colors) for colored_objects."""
    cols = [COLORS[i] for i in rng.choice(len(COLORS), 3, replace=False)]
    objs = [OBJECTS[i] for i in rng.choice(len(OBJECTS), 3, replace=False)]
    surface = SURFACES[rng.integers(len(SURFACES))]
    scene = ["On", "the", surface, "the", objs[0], "is", cols[0], ",", "the", objs[1], "is",
             cols[1], "and", "the", objs[2], "is", cols[2], "."]
    return scene, objs, cols


def colored_objects_example(rng: np.random.Generator) -> dict:
    """A colored-objects example with a corrupted twin (another object is asked about).

    "On the table the pen is red , the cup is blue and the book is green . The color of the
    cup is" -> " blue". The scene states each color right after "<object> is", so the question
    is answered by the same copying (match "cup is", copy what followed) as the passkey.
    """
    scene, objs, cols = _colored_scene(rng)
    k, j = rng.choice(3, 2, replace=False)
    question = ["The", "color", "of", "the"]
    return {"prompt": [*scene, *question, objs[k], "is"], "answer": [cols[k]],
            "corrupted_prompt": [*scene, *question, objs[j], "is"], "corrupted_answer": [cols[j]]}


# --------------------------------------------------------------------------- training sequences

def _ioi_chunk(rng: np.random.Generator, swap: float = 0.0) -> tuple[list[str], list[float]]:
    """One ioi example + answer + "." as training words and loss mask (loss on the answer).

    A fraction ``swap`` of the chunks use the swapped twin (S2 is the first name, so the answer
    is the second). Trained on one order only, the model learns "answer the first name", a
    shortcut that solves the clean prompts without finding the non-repeated name and fails every
    corrupted one. ``swap=0`` draws no extra random number (the committed model's data).
    """
    ex = ioi_example(rng)
    if swap and rng.random() < swap:
        prompt, answer = ex["corrupted_prompt"], ex["corrupted_answer"]
    else:
        prompt, answer = ex["prompt"], ex["answer"]
    return [*prompt, *answer, "."], [0.0] * len(prompt) + [1.0] * len(answer) + [0.0]


def _colored_chunk(rng: np.random.Generator) -> tuple[list[str], list[float]]:
    """One colored-objects scene with 1-3 questions about it (loss on each answered color)."""
    scene, objs, cols = _colored_scene(rng)
    words, mask = list(scene), [0.0] * len(scene)
    for k in rng.permutation(3)[:int(rng.integers(1, 4))]:
        words += ["The", "color", "of", "the", objs[k], "is", cols[k], "."]
        mask += [0.0] * 6 + [1.0, 0.0]
    return words, mask


def _pack_tasks(rng: np.random.Generator, length: int, make, filler_keep: float):
    """Pack task chunks (with filler between) into exactly ``length`` tokens incl. <bos>."""
    words, mask, tries = ["<bos>"], [0.0], 0
    while True:
        chunk, chunk_mask = make(rng)
        if len(words) + len(chunk) > length:
            tries += 1
            if len(words) > 1 or tries >= 10:  # retry a few times so short contexts get one
                break
            continue
        words += chunk
        mask += chunk_mask
        gap = filler(rng, int(rng.integers(0, 12)))
        words += gap
        mask += list((rng.random(len(gap)) < filler_keep).astype(float))
    rest = length - len(words)
    if rest > 0:
        words += filler(rng, rest)
        mask += list((rng.random(rest) < filler_keep).astype(float))
    return words[:length], mask[:length]


def training_sequence(rng: np.random.Generator, length: int, kind: str,
                      filler_keep: float = 0.3, edge_depths: float = 0.0,
                      noisy_haystacks: float = 0.0,
                      ioi_swap: float = 0.0) -> tuple[list[str], list[float]]:
    """One training sequence of exactly ``length`` tokens (starting with ``<bos>``).

    Args:
        kind: ``passkey``, ``induction``, ``ioi`` or ``colored_objects``.
        filler_keep: fraction of filler tokens that carry loss.
        edge_depths: passkey only: fraction of haystacks with the needle at depth exactly 0
            (60 %) or 1 (40 %) instead of uniform.
        noisy_haystacks: passkey only: fraction of haystacks where half the filler words are
            replaced by random words (averaging over such context is no no-op).
        ioi_swap: ioi only: fraction of examples in the swapped name order (see _ioi_chunk).
    Returns:
        (words, loss mask); ``mask[i] = 1`` means token ``i`` is a prediction target.
    """
    if kind == "passkey":
        n_digits = int(min(rng.integers(3, 8), (length - 21) // 2))  # fits short contexts
        n_min = 1 + len(NEEDLE_PREFIX) + n_digits + len(NEEDLE_SUFFIX) + len(QUESTION) + n_digits
        if length < n_min + 1:
            raise ValueError(f"sequence length {length} too short for a passkey")
        depth = rng.random()
        if edge_depths and depth < edge_depths:  # the suite asks for depths exactly 0 and 1
            depth = 0.0 if depth < 0.6 * edge_depths else 1.0
        prompt, answer, needle_at = passkey_example(rng, length - n_digits - 1, depth, n_digits)
        words = ["<bos>", *prompt, *answer, "<eos>"]
        is_fill = np.ones(len(words), dtype=bool)
        is_fill[0] = False
        is_fill[needle_at + 1 - len(NEEDLE_PREFIX):needle_at + 1 + n_digits + len(NEEDLE_SUFFIX)] = 0
        is_fill[-(len(QUESTION) + n_digits + 1):] = False
        if noisy_haystacks and rng.random() < noisy_haystacks:
            noise = is_fill & (rng.random(len(words)) < 0.5)
            for i in np.flatnonzero(noise):
                words[i] = NOISE_WORDS[rng.integers(len(NOISE_WORDS))]
        mask = (is_fill & (rng.random(len(words)) < filler_keep)).astype(float)
        mask[-(n_digits + 1):] = 1.0  # the digits and <eos>
        return words, list(mask)
    if kind == "induction":
        span = int(rng.integers(5, max(6, min(40, (length - 1) // 2) + 1)))
        seq = [SPAN_WORDS[i] for i in rng.integers(0, len(SPAN_WORDS), span)]
        words, mask = ["<bos>"], [0.0]
        if rng.random() < 0.5:  # sometimes a filler prefix, so the span can start anywhere
            pre = filler(rng, int(rng.integers(0, max(1, length - 1 - 2 * span))))
            words += pre
            mask += list((rng.random(len(pre)) < filler_keep).astype(float))
        words += seq
        mask += [0.0] * span
        while len(words) < length:
            words += seq
            mask += [0.0] + [1.0] * (span - 1)  # first repeated token is not predictable
        return words[:length], mask[:length]
    if kind == "ioi":
        return _pack_tasks(rng, length, lambda r: _ioi_chunk(r, ioi_swap), filler_keep)
    if kind == "colored_objects":
        return _pack_tasks(rng, length, _colored_chunk, filler_keep)
    raise ValueError(f"unknown sequence kind {kind!r}; expected passkey, induction, ioi or "
                     "colored_objects")


# --------------------------------------------------------------------------- suites

SUITE_LENGTHS = (128, 256, 512, 1024)
SUITE_DEPTHS = (0.0, 0.25, 0.5, 0.75, 1.0)


def suite_row(prompt: list[str], answer: list[str], **extra) -> dict:
    """A suite row from word lists: ``prompt`` joined by spaces, ``answer`` with a leading space."""
    return {"prompt": " ".join(prompt), "answer": " " + " ".join(answer), **extra}


def make_suites(seed: int = 12345, n_per_cell: int = 2, n_task: int = 40) -> dict[str, list[dict]]:
    """Held-out evaluation suites (seeded; a different seed stream from training).

    Returns:
        ``{"passkey": [...], "ioi": [...], "colored_objects": [...]}``; each row has ``prompt``
        and ``answer`` (answers start with a space); ioi/colored_objects rows also have
        ``corrupted_prompt`` and ``corrupted_answer``; passkey rows ``context_length`` (prompt
        tokens including ``<bos>``) and ``depth``.
    """
    rng = np.random.default_rng([seed, 7])
    passkey = []
    for length in SUITE_LENGTHS:
        for depth in SUITE_DEPTHS:
            for _ in range(n_per_cell):
                prompt, answer, _ = passkey_example(rng, length, depth)
                passkey.append(suite_row(prompt, answer, context_length=length, depth=depth))

    def task(make) -> list[dict]:
        rows = []
        for _ in range(n_task):
            ex = make(rng)
            rows.append({**suite_row(ex["prompt"], ex["answer"]),
                         **{f"corrupted_{k}": v for k, v in
                            suite_row(ex["corrupted_prompt"], ex["corrupted_answer"]).items()}})
        return rows

    return {"passkey": passkey, "ioi": task(ioi_example),
            "colored_objects": task(colored_objects_example)}


def write_suites(out_dir: str | Path, seed: int = 12345) -> dict[str, Path]:
    """Write ``<out_dir>/{passkey,ioi,colored_objects}.jsonl``; returns the paths by task."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, rows in make_suites(seed).items():
        paths[name] = out / f"{name}.jsonl"
        paths[name].write_text("".join(json.dumps(r) + "\n" for r in rows))
    return paths


def load_suite(path: str | Path) -> list[dict]:
    """Read one suite file (JSON lines) into a list of dicts."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
