"""Overlap of two sets (circuits of heads, nodes or edges) and what chance alone would give.

Merullo et al. ("Circuit Component Reuse Across Tasks in Transformer Language Models") report
how much two circuits overlap, not how much two random sets of those sizes would: in a small
model two large circuits share heads whatever they compute. Here the four measures come with
their chance values: if B were a uniformly random set of |B| items out of the N in the
universe, the intersection X = |A ∩ B| is hypergeometric, X ~ Hypergeom(N, |A|, |B|), with
E[X] = |A||B|/N, and the p-value of an observed intersection k is P(X ≥ k). The expected
Jaccard index is E[X / (|A| + |B| − X)], summed over X's distribution (it is not
E[X] / E[|A ∪ B|]).

Pure set arithmetic: nothing here knows about models, frames or figures, so the analyzers and
the figures both build on it.
"""

from __future__ import annotations

from typing import Hashable, Iterable

import numpy as np
from scipy.stats import hypergeom

from workbench.errors import WorkbenchError


def measures(n_a: int, n_b: int, n_shared: int) -> dict:
    """The four overlap measures of sets of sizes ``n_a, n_b`` sharing ``n_shared`` items."""
    return {"jaccard": n_shared / (n_a + n_b - n_shared), "overlap_coefficient": n_shared / min(n_a, n_b),
            "share_a_in_b": n_shared / n_a, "share_b_in_a": n_shared / n_b}


def chance(n_total: int, n_a: int, n_b: int, n_shared: int) -> dict:
    """What two uniformly random sets of sizes ``n_a, n_b`` out of ``n_total`` would share.

    Returns:
        ``{"expected_shared": E[X], "p_value": P(X >= n_shared), "chance_jaccard",
        "chance_overlap_coefficient", "chance_share_a_in_b", "chance_share_b_in_a"}``
        (each measure's expectation under chance), X ~ Hypergeom(n_total, n_a, n_b).
    Raises:
        WorkbenchError: sizes that cannot come from one universe of ``n_total`` items.
    """
    if not 0 < n_a <= n_total or not 0 < n_b <= n_total:
        raise WorkbenchError(f"set sizes {n_a} and {n_b} must be in [1, {n_total}] (the universe's size)")
    if not max(0, n_a + n_b - n_total) <= n_shared <= min(n_a, n_b):
        raise WorkbenchError(f"{n_shared} shared items is impossible for sets of {n_a} and {n_b} out of {n_total}")
    dist = hypergeom(n_total, n_a, n_b)
    k = np.arange(max(0, n_a + n_b - n_total), min(n_a, n_b) + 1)
    pmf = dist.pmf(k)
    expected = n_a * n_b / n_total
    return {"expected_shared": expected, "p_value": float(min(1.0, dist.sf(n_shared - 1))),
            "chance_jaccard": float((pmf * k / (n_a + n_b - k)).sum()),
            "chance_overlap_coefficient": expected / min(n_a, n_b),
            "chance_share_a_in_b": expected / n_a, "chance_share_b_in_a": expected / n_b}


def overlap(a: Iterable[Hashable], b: Iterable[Hashable], *, n_total: int | None = None) -> dict:
    """Overlap of two non-empty sets, with chance beside it when the universe's size is known.

    Args:
        a, b: the two sets (any hashable items: ``(layer, head)``, node or edge names).
        n_total: how many items the universe holds (all heads of the model, all edges of the
            graph); None leaves the chance columns out.
    Returns:
        ``jaccard, overlap_coefficient, share_a_in_b, share_b_in_a, n_a, n_b, n_shared`` and,
        with ``n_total``, ``n_total`` and the keys of `chance`.
    """
    a, b = set(a), set(b)
    if not a or not b:
        raise WorkbenchError(f"overlap needs two non-empty sets; got sizes {len(a)} and {len(b)}")
    shared = len(a & b)
    out = {**measures(len(a), len(b), shared), "n_a": len(a), "n_b": len(b), "n_shared": shared}
    if n_total is not None:
        if len(a | b) > n_total:
            raise WorkbenchError(f"the two sets hold {len(a | b)} distinct items, more than n_total={n_total}")
        out.update(n_total=n_total, **chance(n_total, len(a), len(b), shared))
    return out


def beats_random(top, median, lo, hi, higher_is_better):
    """Whether ablating a ranking's top-k beats random k-sets: its metric is worse than the
    median draw and at least as bad as the worst draw (``lo`` when higher is better, ``hi``
    otherwise), so ties at a floor never count as beating random. Works on scalars and on
    equal-length arrays (then one bool per element)."""
    top, median, lo, hi = (np.asarray(v, dtype=float) for v in (top, median, lo, hi))
    up = np.asarray(higher_is_better, dtype=bool)
    out = np.where(up, (top <= lo) & (top < median), (top >= hi) & (top > median))
    return bool(out) if out.ndim == 0 else out
