"""Choosing a circuit by faithfulness: the smallest top-ranked set whose faithfulness reaches a
target (Hanna et al. 2024 choose edge circuits this way; Wang et al. 2022 and Conmy et al. 2023
judge circuits by it), shared by node and edge circuits.
"""

from __future__ import annotations

from typing import Callable

EXHAUSTIVE = 64  # sizes up to this are all tried; beyond, a geometric grid refined by bisection
GROWTH = 1.25    # ratio between consecutive grid sizes


def grid(n_max: int, exhaustive: int = EXHAUSTIVE) -> list[int]:
    """Sizes tried first: every k <= ``exhaustive``, then a geometric grid up to ``n_max``."""
    sizes = list(range(1, min(n_max, exhaustive) + 1))
    k = float(sizes[-1]) if sizes else 1.0
    while sizes and sizes[-1] < n_max:
        k = max(k * GROWTH, sizes[-1] + 1)
        sizes.append(min(int(k), n_max))
    return sizes


def smallest_faithful(evaluate: Callable[[int], float], n_max: int, target: float, *,
                      exhaustive: int = EXHAUSTIVE) -> tuple[int | None, dict]:
    """The smallest k <= ``n_max`` with ``evaluate(k) >= target``.

    Faithfulness need not grow with k (a negative head can enter the set), so every size up to
    ``exhaustive`` is tried in order; past it, sizes on a geometric grid, and the first grid size
    that reaches the target is refined by bisection against the grid size before it (exact when
    faithfulness is monotone between the two).

    Args:
        evaluate: ``k -> faithfulness of the top-k set``.
        n_max: the largest size allowed (e.g. half of all heads).
        target: the faithfulness to reach.
        exhaustive: sizes tried one by one before the grid (default `EXHAUSTIVE`).
    Returns:
        ``(k or None when no allowed size reaches the target, {k: faithfulness} of every size tried)``.
    """
    tried: dict[int, float] = {}

    def f(k: int) -> float:
        if k not in tried:
            tried[k] = float(evaluate(k))
        return tried[k]

    previous = 0
    for k in grid(n_max, exhaustive):
        if f(k) >= target:
            lo, hi = previous, k  # lo fails (or is 0), hi reaches
            while hi - lo > 1:
                mid = (lo + hi) // 2
                lo, hi = (lo, mid) if f(mid) >= target else (mid, hi)
            return hi, dict(sorted(tried.items()))
        previous = k
    return None, dict(sorted(tried.items()))


def curve(evaluate: Callable[[list], float], ranking: list, sizes, *, draws: int = 5, seed: int = 0,
          universe: list | None = None) -> "pd.DataFrame":
    """Faithfulness of the top-k items of a ranking beside random k-sets, for each k in ``sizes``.

    Args:
        evaluate: ``items -> faithfulness`` of the set of those items (heads, edges).
        ranking: the items, best first (by |effect| or |score|).
        sizes: the k to evaluate (each in ``[1, len(universe)]``).
        draws: random k-sets per k, drawn uniformly from ``universe`` (default: the ranking) with
            ``numpy.random.default_rng(seed)``.
    Returns:
        DataFrame ``k, top, random_median, random_lo, random_hi`` (lo/hi: the smallest and
        largest of the draws).
    """
    import numpy as np
    import pandas as pd

    universe = list(ranking if universe is None else universe)
    rng = np.random.default_rng(seed)
    rows = []
    for k in sizes:
        k = int(k)
        top = evaluate(list(ranking[:k]))
        rand = [evaluate([universe[i] for i in rng.choice(len(universe), k, replace=False)]) for _ in range(draws)]
        rows.append({"k": k, "top": float(top), "random_median": float(np.median(rand)),
                     "random_lo": float(np.min(rand)), "random_hi": float(np.max(rand))})
    return pd.DataFrame(rows, columns=["k", "top", "random_median", "random_lo", "random_hi"])
