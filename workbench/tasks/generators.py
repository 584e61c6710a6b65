"""Seeded row generators for any tokenizer: ioi, colored_objects, induction and passkey.

Each generator takes the tokenizer, the number of rows and a ``numpy.random.Generator`` and
returns rows (dicts) whose ``answer`` is the exact continuation of ``prompt`` for this tokenizer:
``tok(prompt) + tok(answer, add_special_tokens=False) == tok(prompt + answer)``. Every slot word
(name, place, object, colour) is one token where it stands, so clean and corrupted prompts have
equal token length and all prompts of one template have the same length (position-aware means
over a template's prompts are then defined). A row that breaks any of this is drawn again.
"""

from __future__ import annotations

import numpy as np

from workbench.errors import WorkbenchError
from workbench.tasks import haystack
from workbench.tasks.vocabulary import (
    COLORS,
    GIFTS,
    NAMES,
    PLACES,
    SURFACES,
    THINGS,
    single_tokens,
    word_tokens,
)

TRIES = 50  # draws per row before a generator gives up on this tokenizer

# Wang et al. 2022 (IOI), their 15 templates. {A} and {B} are the first two names in order,
# {S} the subject's second mention; "abba" rows have A = IO, B = S ("When Mary and John ...,
# John gave a drink to" -> " Mary"), "baba" rows the names swapped.
_IOI = (
    "Then, {A} and {B} went to the {PLACE}. {S} gave a {OBJECT} to",
    "Then, {A} and {B} had a lot of fun at the {PLACE}. {S} gave a {OBJECT} to",
    "Then, {A} and {B} were working at the {PLACE}. {S} decided to give a {OBJECT} to",
    "Then, {A} and {B} were thinking about going to the {PLACE}. {S} wanted to give a {OBJECT} to",
    "Then, {A} and {B} had a long argument, and afterwards {S} said to",
    "After {A} and {B} went to the {PLACE}, {S} gave a {OBJECT} to",
    "When {A} and {B} got a {OBJECT} at the {PLACE}, {S} decided to give it to",
    "When {A} and {B} got a {OBJECT} at the {PLACE}, {S} decided to give the {OBJECT} to",
    "While {A} and {B} were working at the {PLACE}, {S} gave a {OBJECT} to",
    "While {A} and {B} were commuting to the {PLACE}, {S} gave a {OBJECT} to",
    "After the lunch, {A} and {B} went to the {PLACE}. {S} gave a {OBJECT} to",
    "Afterwards, {A} and {B} went to the {PLACE}. {S} gave a {OBJECT} to",
    "Then, {A} and {B} had a long argument. Afterwards {S} said to",
    "The {PLACE} {A} and {B} went to had a {OBJECT}. {S} gave it to",
    "Friends {A} and {B} found a {OBJECT} at the {PLACE}. {S} gave it to",
)
IOI_TEMPLATES: dict[str, str] = {f"{order}-{i:02d}": t for order in ("abba", "baba") for i, t in enumerate(_IOI)}

# Colored objects (BIG-bench "reasoning about colored objects", three objects as in Merullo et
# al. 2024), phrased as plain statements so the colour is the next word.
COLORED_TEMPLATES: dict[str, str] = {
    "list-00": "On the {SURFACE} there is {C0} {O0}, {C1} {O1} and {C2} {O2}. The color of the {Q} is",
    "list-01": "On the {SURFACE} there is {C0} {O0}, {C1} {O1} and {C2} {O2}. Which color is the {Q}? "
               "The {Q} is colored",
}

NEEDLE = "The pass key is {KEY}. Remember it."
QUESTION = "What is the pass key? The pass key is"
PASSKEY_DIGITS = 5


def _ids(tok, text: str, special: bool = True) -> list[int]:
    return tok(text, add_special_tokens=special)["input_ids"]


def round_trips(tok, prompt: str, answer: str, ids: tuple[list[int], list[int]] | None = None) -> bool:
    """Whether ``answer`` tokenizes the same alone as after ``prompt``, with no unknown token.
    ``ids``: the caller's ``(prompt ids, answer ids)`` when it has tokenized them already."""
    p, a = ids if ids is not None else (_ids(tok, prompt), _ids(tok, answer, special=False))
    return bool(a) and tok.unk_token_id not in p + a and _ids(tok, prompt + answer) == p + a


def _pool(tok, words, before: str, need: int, what: str) -> list[str]:
    found = list(single_tokens(tok, words, before=before))
    if len(found) < need:
        raise WorkbenchError(f"this tokenizer reads only {len(found)} of the {what} as one token "
                             f"({found[:5]}); the suite needs at least {need}")
    return found


def _draw(rng: np.random.Generator, pool, k: int) -> list[str]:
    return [pool[i] for i in rng.choice(len(pool), k, replace=False)]


def _templates(chosen, known: dict[str, str], task: str) -> list[str]:
    if chosen is None:
        return list(known)
    chosen = [chosen] if isinstance(chosen, str) else list(chosen)
    bad = [t for t in chosen if t not in known]
    if bad or not chosen:
        raise WorkbenchError(f"unknown {task} template {bad[0] if bad else chosen!r}: expected some of {list(known)}")
    return chosen


def _generate(n: int, make, task: str) -> list[dict]:
    """``n`` rows from ``make(i) -> row or None`` (None: draw again), giving up after TRIES."""
    rows = []
    for i in range(n):
        for _ in range(TRIES):
            row = make(i)
            if row is not None:
                rows.append(row)
                break
        else:
            raise WorkbenchError(f"cannot build a {task} row for this tokenizer: {TRIES} draws in a row broke "
                                 "the token round trip (every word known to the vocabulary, and answers that "
                                 "tokenize the same alone and after the prompt)")
    return rows


class _Lengths:
    """Token length of each template's prompts: the first valid row fixes it."""

    def __init__(self):
        self.seen: dict[str, int] = {}

    def fits(self, template: str, length: int) -> bool:
        return self.seen.setdefault(template, length) == length


# -- ioi ----------------------------------------------------------------------------------
def ioi(tok, n: int, rng: np.random.Generator, *, templates=None) -> list[dict]:
    """Indirect-object rows (Wang et al. 2022) and their ABC counterparts.

    Returns:
        Rows with ``prompt`` ("Then, Mary and John went to the store. John gave a drink to"),
        ``answer`` (" Mary", the indirect object IO), ``corrupted_prompt`` (the same template,
        place and object with the three name slots filled by three other names: Wang et al.'s
        ABC distribution, where no name repeats), ``corrupted_answer`` (" John", the subject S:
        the contrast of the metric logit(IO) − logit(S), which the circuit analyses read on both
        runs), ``template`` (``abba-03`` / ``baba-03``: order and Wang et al.'s template index),
        ``io`` and ``s`` (the names).
    """
    names = _pool(tok, NAMES, "and", 5, "names")
    places = _pool(tok, PLACES, "the", 1, "places")
    gifts = _pool(tok, GIFTS, "a", 1, "objects")
    ids = _templates(templates, IOI_TEMPLATES, "ioi")
    lengths = _Lengths()

    def make(i: int):
        template = ids[int(rng.integers(len(ids)))]
        io, s, a2, b2, c2 = _draw(rng, names, 5)
        slots = {"PLACE": places[int(rng.integers(len(places)))], "OBJECT": gifts[int(rng.integers(len(gifts)))]}
        first, second = (io, s) if template.startswith("abba") else (s, io)
        text = IOI_TEMPLATES[template]
        clean = text.format(A=first, B=second, S=s, **slots)
        corrupt = text.format(A=a2, B=b2, S=c2, **slots)
        row = {"prompt": clean, "answer": f" {io}", "corrupted_prompt": corrupt, "corrupted_answer": f" {s}",
               "template": template, "io": io, "s": s}
        return row if _paired(tok, row, lengths) else None

    return _generate(n, make, "ioi")


def _paired(tok, row: dict, lengths: _Lengths) -> bool:
    """Clean and corrupted prompts of equal token length, one-token answers that differ and
    round-trip, and a prompt as long as the template's others (checked last: only a row that
    passes the rest fixes the template's length)."""
    p, cp = _ids(tok, row["prompt"]), _ids(tok, row["corrupted_prompt"])
    a, b = _ids(tok, row["answer"], False), _ids(tok, row["corrupted_answer"], False)
    return (len(p) == len(cp) and len(a) == len(b) == 1
            and a != b and round_trips(tok, row["prompt"], row["answer"], (p, a))
            and round_trips(tok, row["corrupted_prompt"], row["corrupted_answer"], (cp, b))
            and lengths.fits(row["template"], len(p)))


# -- colored objects ----------------------------------------------------------------------
def colored_objects(tok, n: int, rng: np.random.Generator, *, templates=None) -> list[dict]:
    """Colored-objects rows: a scene of three coloured objects and a question about one.

    Returns:
        Rows with ``prompt`` ("On the desk there is a red pen, a blue cup and a green book. The
        color of the cup is"), ``answer`` (" blue"), ``corrupted_prompt`` (the same scene, asking
        about another of its objects), ``corrupted_answer`` (that object's colour, " red"),
        ``template``, ``object`` and ``color`` (the asked object and its colour).
    """
    colors = _pool(tok, COLORS, "a", 3, "colours")
    things = _pool(tok, THINGS, "the", 3, "objects")
    surfaces = _pool(tok, SURFACES, "the", 1, "surfaces")
    ids = _templates(templates, COLORED_TEMPLATES, "colored_objects")
    lengths = _Lengths()

    def make(i: int):
        template = ids[int(rng.integers(len(ids)))]
        cols, objs = _draw(rng, colors, 3), _draw(rng, things, 3)
        k, j = (int(x) for x in rng.choice(3, 2, replace=False))
        scene = {"SURFACE": surfaces[int(rng.integers(len(surfaces)))],
                 **{f"C{x}": f"{'an' if cols[x][0] in 'aeiou' else 'a'} {cols[x]}" for x in range(3)},
                 **{f"O{x}": objs[x] for x in range(3)}}
        text = COLORED_TEMPLATES[template]
        row = {"prompt": text.format(Q=objs[k], **scene), "answer": f" {cols[k]}",
               "corrupted_prompt": text.format(Q=objs[j], **scene), "corrupted_answer": f" {cols[j]}",
               "template": template, "object": objs[k], "color": cols[k]}
        return row if _paired(tok, row, lengths) else None

    return _generate(n, make, "colored_objects")


# -- induction ----------------------------------------------------------------------------
def induction(tok, n: int, rng: np.random.Generator, *, span: int = 16) -> list[dict]:
    """Repeated random tokens: a span of ``span`` distinct random word tokens, then its first
    ``repeat`` tokens again; the answer is the span's next token (Olsson et al. 2022's
    repeated-random-tokens test of induction heads).

    Returns:
        Rows with ``prompt``, ``answer`` (one token), ``span`` and ``repeat`` (2 <= repeat < span).
    """
    if span < 3:
        raise WorkbenchError(f"span must be an int >= 3 (a span and a repeat of at least 2 tokens); got {span!r}")
    pool = word_tokens(tok)
    if len(pool) < span:
        raise WorkbenchError(f"this tokenizer has {len(pool)} whole-word tokens; an induction span needs {span}")
    special = _ids(tok, "", True)  # what the tokenizer adds (a BOS or nothing)

    def make(i: int):
        seq = [pool[x] for x in rng.choice(len(pool), span, replace=False)]
        repeat = int(rng.integers(2, span))
        prompt = tok.decode(seq + seq[:repeat])
        full = tok.decode(seq + seq[:repeat + 1])
        if not full.startswith(prompt):
            return None
        answer = full[len(prompt):]
        p = _ids(tok, prompt)
        if p != special + seq + seq[:repeat] or not round_trips(tok, prompt, answer, (p, _ids(tok, answer, False))):
            return None
        return {"prompt": prompt, "answer": answer, "span": span, "repeat": repeat}

    return _generate(n, make, "induction")


# -- passkey ------------------------------------------------------------------------------
def _fill(rng: np.random.Generator, budget: int, length, tail: int = 40, pool: int = 150) -> list[str]:
    """Haystack sentences whose token lengths sum to ``budget`` (or as close below as the pool
    allows): sentences in order while more than ``tail`` tokens are left, then one to three
    sentences from ``pool`` extra draws that close the gap exactly."""
    filler, used = [], 0
    while budget - used > tail:
        s = haystack.sentence(rng)
        filler.append(s)
        used += length(s)
    if used > budget:  # only when the budget itself is below one sentence
        filler, used = [], 0
    by_len: dict[int, list[str]] = {}
    for _ in range(pool):
        s = haystack.sentence(rng)
        by_len.setdefault(length(s), []).append(s)
    gap = budget - used
    best: tuple[int, list[str]] = (0, [])
    sizes = sorted(by_len)
    for a in sizes:  # one, two or three sentences; distinct draws where one length is reused
        for b in [0, *sizes]:
            for c in [0, *sizes]:
                total = a + b + c
                if total > gap or total <= best[0]:
                    continue
                want = [x for x in (a, b, c) if x]
                if all(want.count(x) <= len(by_len[x]) for x in want):
                    picked, seen = [], {}
                    for x in want:
                        picked.append(by_len[x][seen.get(x, 0)])
                        seen[x] = seen.get(x, 0) + 1
                    best = (total, picked)
    return filler + best[1]


def passkey(tok, n: int, rng: np.random.Generator, *, lengths, depths) -> list[dict]:
    """Needle-in-a-haystack rows: English filler (`workbench.tasks.haystack`) with the needle
    "The pass key is 48213. Remember it." at a depth, then "What is the pass key? The pass key
    is" and the answer " 48213".

    Rows cycle through the cells ``lengths x depths`` (so any n covers them evenly). A prompt
    has ``context_length`` tokens with the tokenizer's special tokens, or up to a sentence's
    worth fewer when no filler sentence fits the last gap exactly (``n_tokens`` is the real
    count). Depth 0 puts the needle first, 1 right before the question (counted in sentences).

    Returns:
        Rows with ``prompt``, ``answer``, ``context_length``, ``depth``, ``n_tokens``, ``needle``.
    """
    cells = [(int(c), float(d)) for c in lengths for d in depths]
    special = len(_ids(tok, "", True))
    cost = {}

    def length(sentence: str) -> int:
        if sentence not in cost:
            cost[sentence] = len(_ids(tok, " " + sentence, False))
        return cost[sentence]

    def make(i: int):
        target, depth = cells[i % len(cells)]
        key = "".join(str(d) for d in [int(rng.integers(1, 10)), *rng.integers(0, 10, PASSKEY_DIGITS - 1)])
        needle = NEEDLE.format(KEY=key)
        budget = target - special - len(_ids(tok, needle + " " + QUESTION, False))
        if budget < 0:
            raise WorkbenchError(f"passkey context_length {target} is too short for the needle and the question "
                                 f"({target - budget} tokens); expected lengths of at least {target - budget + 8}")
        filler = _fill(rng, budget, length)
        at = round(depth * len(filler))
        prompt = " ".join([*filler[:at], needle, *filler[at:], QUESTION])
        answer = f" {key}"
        p, a = _ids(tok, prompt), _ids(tok, answer, False)  # a prompt of up to context_length tokens: once
        n_tokens = len(p)
        if n_tokens > target or not round_trips(tok, prompt, answer, (p, a)):
            return None
        if sum(p[s:s + len(a)] == a for s in range(len(p) - len(a) + 1)) != 1:
            return None  # the answer's tokens must occur once in the prompt: in the needle
        return {"prompt": prompt, "answer": answer, "context_length": target, "depth": depth,
                "n_tokens": n_tokens, "needle": needle}

    return _generate(n, make, "passkey")
