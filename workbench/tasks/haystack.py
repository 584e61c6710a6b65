"""Plain English filler text from a small seeded grammar: the haystacks of the passkey suite.

Sentences such as "The old farmer walked to the river in the morning." or "A small dog slept
under the table while it rained." come from word lists and a handful of sentence shapes, so a
seed fixes the text and nothing is downloaded. The words avoid digits and the needle's words
("pass", "key", "remember"), so the needle is the only place the answer can be copied from.
"""

from __future__ import annotations

import numpy as np

_ADJECTIVES = ("old", "young", "small", "tall", "quiet", "busy", "kind", "tired", "happy",
               "careful", "clever", "friendly", "shy", "brave", "patient", "curious")
_MATERIAL = ("heavy", "wooden", "broken", "shiny", "new", "large", "dusty", "tiny")
_PEOPLE = ("farmer", "teacher", "baker", "doctor", "painter", "student", "driver", "gardener",
           "neighbor", "fisherman", "writer", "nurse", "child", "musician", "sailor", "cook")
_ANIMALS = ("dog", "cat", "horse", "bird", "fox", "goat", "rabbit", "duck", "cow", "owl")
_PLACES = ("river", "market", "village", "forest", "hill", "bridge", "library", "harbor",
           "field", "garden", "station", "church", "lake", "bakery", "school", "square")
_THINGS = ("basket", "letter", "lamp", "blanket", "map", "book", "bottle", "box", "coat",
           "bicycle", "ladder", "kettle", "umbrella", "bucket", "chair", "window")
_TIMES = ("in the morning", "after lunch", "before dinner", "at noon", "late at night",
          "on a cold day", "in the spring", "every evening", "last summer", "at dawn")
_MOTION = ("walked to", "ran to", "drove to", "went back to", "hurried to", "wandered to")
_LOOK = ("looked at", "painted", "cleaned", "carried", "found", "fixed", "opened", "sold")
_REST = ("slept", "waited", "sang", "read", "rested", "worked", "listened", "smiled")
_WEATHER = ("it rained", "the wind was strong", "the sun was warm", "the sky was grey",
            "snow began to fall", "the air was still", "the streets were empty")
_FEELINGS = ("glad", "surprised", "calm", "proud", "sleepy", "hungry", "worried", "pleased")
_WHERE = ("near the", "under the", "beside the", "behind the", "across the", "inside the")


def _pick(rng: np.random.Generator, words) -> str:
    return words[int(rng.integers(len(words)))]


def _someone(rng: np.random.Generator, capital: bool = False) -> str:
    if rng.random() < 0.25:
        who = f"{_pick(rng, ('a', 'the'))} {_pick(rng, _ADJECTIVES)} {_pick(rng, _ANIMALS)}"
    else:
        det = _pick(rng, ("the", "the", "a", "my", "our"))
        adj = f"{_pick(rng, _ADJECTIVES)} " if rng.random() < 0.6 else ""
        who = f"{det} {adj}{_pick(rng, _PEOPLE)}"
    return who[0].upper() + who[1:] if capital else who


def sentence(rng: np.random.Generator) -> str:
    """One sentence of the grammar, capitalised and ending with a full stop."""
    shape = rng.integers(7)
    who = _someone(rng, capital=True)
    if shape == 0:
        return f"{who} {_pick(rng, _MOTION)} the {_pick(rng, _PLACES)} {_pick(rng, _TIMES)}."
    if shape == 1:
        return f"{who} {_pick(rng, _LOOK)} the {_pick(rng, _THINGS)} {_pick(rng, _WHERE)} {_pick(rng, _PLACES)}."
    if shape == 2:
        return f"{who} {_pick(rng, _REST)} {_pick(rng, _WHERE)} {_pick(rng, _THINGS)} while {_pick(rng, _WEATHER)}."
    if shape == 3:
        weather = _pick(rng, _WEATHER)
        return f"{_pick(rng, _TIMES).capitalize()} {weather}, and {_someone(rng)} {_pick(rng, _REST)}."
    if shape == 4:
        return f"{who} was {_pick(rng, _FEELINGS)} to see {_someone(rng)} at the {_pick(rng, _PLACES)}."
    if shape == 5:
        return f"{who} {_pick(rng, _LOOK)} a {_pick(rng, _MATERIAL)} {_pick(rng, _THINGS)} and gave it to {_someone(rng)}."
    return f"There is a {_pick(rng, _THINGS)} {_pick(rng, _WHERE)} {_pick(rng, _PLACES)}, and nobody knows why."


def sentences(rng: np.random.Generator, n: int) -> list[str]:
    """``n`` sentences (without leading spaces)."""
    return [sentence(rng) for _ in range(n)]
