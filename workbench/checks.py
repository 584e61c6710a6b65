"""Argument checks shared by every public entry point: one clear `WorkbenchError` naming the
value given and what was expected (DESIGN.md "Bad input").

Integers accept Python and numpy integers (``operator.index``) but never bools or floats;
numbers must be finite unless stated.

    >>> positive_int("batch_size", 4)
    4
    >>> fraction("threshold", 0.1, low_open=False)
    0.1
"""

from __future__ import annotations

import math
import operator
from typing import Any, Iterable, Sequence

from workbench.errors import WorkbenchError


def integer(name: str, value: Any, *, low: int | None = None, high: int | None = None) -> int:
    """An int in ``[low, high]`` (either bound optional); numpy integers are accepted."""
    if (low, high) == (1, None):
        what = "a positive int"
    else:
        what = "an int" + ("" if low is None and high is None else f" >= {low}" if high is None else
                           f" <= {high}" if low is None else f" in [{low}, {high}]")
    if isinstance(value, bool):
        raise WorkbenchError(f"{name} must be {what}; got the bool {value!r}")
    try:
        number = operator.index(value)
    except TypeError:
        raise WorkbenchError(f"{name} must be {what}; got {value!r} ({type(value).__name__})") from None
    if (low is not None and number < low) or (high is not None and number > high):
        raise WorkbenchError(f"{name} must be {what}; got {number!r}")
    return int(number)


def positive_int(name: str, value: Any) -> int:
    """An int >= 1."""
    return integer(name, value, low=1)


def number(name: str, value: Any, *, low: float | None = None, high: float | None = None,
           low_open: bool = False, high_open: bool = False, finite: bool = True) -> float:
    """A real number (int, float or numpy scalar, not bool or str) within the given bounds; NaN
    never passes, infinities only with ``finite=False``."""
    if (low, high, low_open) == (0.0, None, True):
        what = "a positive number"
    elif low is None and high is None:
        what = "a finite number" if finite else "a number"
    else:
        left, right = "(" if low_open else "[", ")" if high_open else "]"
        what = f"a number in {left}{'-inf' if low is None else f'{low:g}'}, {'inf' if high is None else f'{high:g}'}{right}"
    if isinstance(value, (bool, str)):
        kind = "bool" if isinstance(value, bool) else "string"
        raise WorkbenchError(f"{name} must be {what}; got the {kind} {value!r}")
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise WorkbenchError(f"{name} must be {what}; got {value!r} ({type(value).__name__})") from None
    too_low = low is not None and (x <= low if low_open else x < low)
    too_high = high is not None and (x >= high if high_open else x > high)
    if math.isnan(x) or (finite and math.isinf(x)) or too_low or too_high:
        shown = value.item() if hasattr(value, "item") and getattr(value, "ndim", 1) == 0 else value  # numpy scalars
        raise WorkbenchError(f"{name} must be {what}; got {shown!r}")
    return x


def positive(name: str, value: Any) -> float:
    """A finite number > 0."""
    return number(name, value, low=0.0, low_open=True)


def fraction(name: str, value: Any, *, low_open: bool = True, high_open: bool = False) -> float:
    """A number in (0, 1] by default; the ends are set with ``low_open`` / ``high_open``."""
    return number(name, value, low=0.0, high=1.0, low_open=low_open, high_open=high_open)


def choice(name: str, value: Any, options: Sequence[str]) -> str:
    """One of ``options`` (exact match)."""
    if not isinstance(value, str) or value not in options:
        raise WorkbenchError(f"unknown {name} {value!r}: expected one of {list(options)}")
    return value


def names(name: str, value: Any, options: Iterable[str]) -> list[str]:
    """A non-empty list of names from ``options``; a single string is one name, not its letters."""
    options = list(options)
    chosen = [value] if isinstance(value, str) else list(value)
    if not chosen:
        raise WorkbenchError(f"{name} is empty: expected at least one of {options}")
    one = (name[:-2] + "is" if name.endswith("ses") else  # analyses: analysis
           name[:-1] if name.endswith("s") and not name.endswith(("is", "ss")) else name)
    for item in chosen:
        if item not in options:
            raise WorkbenchError(f"unknown {one} {item!r}: expected one of {options}")
    return chosen
