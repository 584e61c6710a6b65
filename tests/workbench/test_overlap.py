"""Overlap against chance: the hypergeometric expectation, p-value and expected measures equal
brute-force counts over every possible random set, and bad sizes are refused."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from workbench import overlap
from workbench.errors import WorkbenchError


@pytest.mark.parametrize("n_total,n_a,n_b,n_shared", [(9, 3, 4, 2), (9, 5, 6, 2), (8, 1, 8, 1), (10, 4, 4, 0),
                                                      (7, 6, 6, 6)])
def test_chance_equals_a_brute_force_count_over_all_random_sets(n_total, n_a, n_b, n_shared):
    universe = range(n_total)
    a = set(range(n_a))  # which n_a items does not matter: every b-subset is equally likely
    shared, jaccard = [], []
    for b in itertools.combinations(universe, n_b):
        k = len(a & set(b))
        shared.append(k)
        jaccard.append(k / len(a | set(b)))
    shared = np.asarray(shared)
    got = overlap.chance(n_total, n_a, n_b, n_shared)
    assert got["expected_shared"] == pytest.approx(shared.mean(), abs=1e-12)
    assert got["p_value"] == pytest.approx((shared >= n_shared).mean(), abs=1e-12)
    assert got["chance_jaccard"] == pytest.approx(np.mean(jaccard), abs=1e-12)
    assert got["chance_overlap_coefficient"] == pytest.approx(shared.mean() / min(n_a, n_b), abs=1e-12)
    assert got["chance_share_a_in_b"] == pytest.approx(shared.mean() / n_a, abs=1e-12)
    assert got["chance_share_b_in_a"] == pytest.approx(shared.mean() / n_b, abs=1e-12)


def test_overlap_of_hand_made_sets_with_and_without_a_universe():
    a, b = {(0, 0), (0, 1), (1, 0), (1, 1)}, {(1, 0), (1, 1), (2, 0)}
    plain = overlap.overlap(a, b)
    assert plain == {"jaccard": 2 / 5, "overlap_coefficient": 2 / 3, "share_a_in_b": 2 / 4, "share_b_in_a": 2 / 3,
                     "n_a": 4, "n_b": 3, "n_shared": 2}
    full = overlap.overlap(a, b, n_total=6)
    assert {k: full[k] for k in plain} == plain and full["n_total"] == 6
    assert full["expected_shared"] == pytest.approx(4 * 3 / 6)
    # sharing 2 of 3 where chance expects 2 is unremarkable; sharing everything of a big pair is not
    assert full["p_value"] > 0.5
    assert overlap.overlap(range(5), range(5), n_total=100)["p_value"] < 1e-7


def test_impossible_sizes_are_refused():
    with pytest.raises(WorkbenchError, match="non-empty"):
        overlap.overlap([1], [])
    with pytest.raises(WorkbenchError, match="more than n_total=3"):
        overlap.overlap([1, 2], [3, 4], n_total=3)
    with pytest.raises(WorkbenchError, match="impossible"):
        overlap.chance(5, 4, 4, 2)  # two 4-sets of 5 items share at least 3
    with pytest.raises(WorkbenchError, match=r"must be in \[1, 5\]"):
        overlap.chance(5, 6, 1, 1)
