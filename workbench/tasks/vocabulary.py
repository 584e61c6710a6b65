"""Word lists for the generated task suites, and the filter that keeps the words a tokenizer
reads as one token where they stand in a sentence.

Names, places and objects of the IOI task are Wang et al.'s (2022, "Interpretability in the
Wild", their ``ioi_dataset.py``); colours and the objects of the colored-objects task follow the
BIG-bench task "reasoning about colored objects" as Merullo et al. (2024) simplify it (three
objects, one-token colours and nouns).
"""

from __future__ import annotations

import re
import weakref

# Wang et al. 2022: the 100 first names of their IOI dataset.
NAMES = (
    "Michael", "Christopher", "Jessica", "Matthew", "Ashley", "Jennifer", "Joshua", "Amanda",
    "Daniel", "David", "James", "Robert", "John", "Joseph", "Andrew", "Ryan", "Brandon", "Jason",
    "Justin", "Sarah", "William", "Jonathan", "Stephanie", "Brian", "Nicole", "Nicholas",
    "Anthony", "Heather", "Eric", "Elizabeth", "Adam", "Megan", "Melissa", "Kevin", "Steven",
    "Thomas", "Timothy", "Christina", "Kyle", "Rachel", "Laura", "Lauren", "Amber", "Brittany",
    "Danielle", "Richard", "Kimberly", "Jeffrey", "Amy", "Crystal", "Michelle", "Tiffany",
    "Jeremy", "Benjamin", "Mark", "Emily", "Aaron", "Charles", "Rebecca", "Jacob", "Stephen",
    "Patrick", "Sean", "Erin", "Jamie", "Kelly", "Samantha", "Nathan", "Sara", "Dustin", "Paul",
    "Angela", "Tyler", "Scott", "Katherine", "Andrea", "Gregory", "Erica", "Mary", "Travis",
    "Lisa", "Kenneth", "Bryan", "Lindsey", "Kristen", "Jose", "Alexander", "Jesse", "Katie",
    "Lindsay", "Shannon", "Vanessa", "Courtney", "Christine", "Alicia", "Cody", "Allison",
    "Bradley", "Samuel",
)
PLACES = ("store", "garden", "restaurant", "school", "hospital", "office", "house", "station")
GIFTS = ("ring", "kiss", "bone", "basketball", "computer", "necklace", "drink", "snack")

COLORS = ("red", "blue", "green", "yellow", "black", "white", "purple", "orange", "pink",
          "brown", "gray", "silver", "gold")
THINGS = ("pen", "cup", "book", "ball", "hat", "bag", "phone", "lamp", "box", "mug", "plate",
          "clock", "key", "shoe", "chair", "bowl", "kite", "spoon", "sock", "card")
SURFACES = ("table", "desk", "floor", "shelf", "bed", "counter")

_SPECIAL = re.compile(r"^<.*>$|^\[.*\]$")
#: `word_tokens` per tokenizer, with the vocabulary size it was scanned at: decoding a 49k
#: vocabulary takes about a second, and every induction suite (`supports`, `task_suite`) asks.
_WORD_TOKENS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def single_tokens(tokenizer, words, *, before: str = "and") -> dict[str, int]:
    """The ``words`` that this tokenizer reads as exactly one token after ``before`` and a space
    (a name mid-sentence: ``" Mary"`` for byte-level BPE, ``"Mary"`` for a word-level vocabulary).

    Args:
        tokenizer: a Hugging Face tokenizer.
        words: candidate words, without spaces.
        before: the text the word follows (the word's own token must not merge with it).
    Returns:
        ``{word: token id}`` in the order given; a word that splits, merges with its left
        neighbour, or reads as the unknown token is left out.
    """
    head = _ids(tokenizer, before)
    unk = tokenizer.unk_token_id
    out = {}
    for word in words:
        full = _ids(tokenizer, f"{before} {word}")
        if (len(full) == len(head) + 1 and full[:len(head)] == head and full[-1] != unk
                and tokenizer.decode([full[-1]]).strip() == word):
            out[word] = full[-1]
    return out


def word_tokens(tokenizer) -> list[int]:
    """Token ids that stand for a whole word, for random-token spans (the induction suite).

    Byte-level and SentencePiece vocabularies: tokens that decode to a space and 3+ letters
    (``" house"``), which never merge with their neighbours when joined. Word-level vocabularies
    (no such tokens): tokens that decode to a letter followed by letters or digits.
    Special tokens are never chosen.
    """
    try:
        cached = _WORD_TOKENS.get(tokenizer)
    except TypeError:  # a tokenizer that cannot be weakly referenced or hashed: scan every time
        return _scan_words(tokenizer)
    size = len(tokenizer)  # added tokens change it, and so the scan
    if cached is None or cached[0] != size:
        cached = _WORD_TOKENS[tokenizer] = (size, tuple(_scan_words(tokenizer)))
    return list(cached[1])


def _scan_words(tokenizer) -> list[int]:
    vocab = tokenizer.get_vocab()
    special = set(tokenizer.all_special_ids)
    spaced, plain = [], []
    for token, i in sorted(vocab.items(), key=lambda kv: kv[1]):
        if i in special or _SPECIAL.match(token):
            continue
        text = tokenizer.decode([i])
        if re.fullmatch(r" [A-Za-z]{3,}", text):
            spaced.append(i)
        elif re.fullmatch(r"[A-Za-z][A-Za-z0-9]+", text):
            plain.append(i)
    return spaced if len(spaced) >= 100 else plain
