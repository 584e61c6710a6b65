"""Choosing a circuit by faithfulness: the smallest top-ranked set whose faithfulness reaches a
target (Hanna et al. 2024 choose edge circuits this way; Wang et al. 2022 and Conmy et al. 2023
judge circuits by it), shared by node and edge circuits.
"""

from __future__ import annotations

from typing import Callable

EXHAUSTIVE = 64  # sizes up to this are all tried; beyond, a geometric grid refined by bisection
GROWTH = 1.25    # ratio between consecutive grid sizes


def grid(n_max: int) -> list[int]:
    """Sizes tried first: every k <= `EXHAUSTIVE`, then a geometric grid up to ``n_max``."""
    sizes = list(range(1, min(n_max, EXHAUSTIVE) + 1))
    k = float(sizes[-1]) if sizes else 1.0
    while sizes and sizes[-1] < n_max:
        k = max(k * GROWTH, sizes[-1] + 1)
        sizes.append(min(int(k), n_max))
    return sizes


def smallest_faithful(evaluate: Callable[[int], float], n_max: int, target: float) -> tuple[int | None, dict]:
    """The smallest k <= ``n_max`` with ``evaluate(k) >= target``.

    Faithfulness need not grow with k (a negative head can enter the set), so every size up to
    `EXHAUSTIVE` is tried in order; past it, sizes on a geometric grid, and the first grid size
    that reaches the target is refined by bisection against the grid size before it (exact when
    faithfulness is monotone between the two).

    Args:
        evaluate: ``k -> faithfulness of the top-k set``.
        n_max: the largest size allowed (e.g. half of all heads).
        target: the faithfulness to reach.
    Returns:
        ``(k or None when no allowed size reaches the target, {k: faithfulness} of every size tried)``.
    """
    tried: dict[int, float] = {}

    def f(k: int) -> float:
        if k not in tried:
            tried[k] = float(evaluate(k))
        return tried[k]

    previous = 0
    for k in grid(n_max):
        if f(k) >= target:
            lo, hi = previous, k  # lo fails (or is 0), hi reaches
            while hi - lo > 1:
                mid = (lo + hi) // 2
                lo, hi = (lo, mid) if f(mid) >= target else (mid, hi)
            return hi, dict(sorted(tried.items()))
        previous = k
    return None, dict(sorted(tried.items()))
