"""The glossary defines every score column the registered analyses store, once, with distinct
labels for distinct quantities and the direction each score ranks heads by."""

from __future__ import annotations

import pytest

from tests.dashboards.fixtures import frames
from workbench import glossary
from workbench.analyzers import ANALYZERS
from workbench.figures import score_columns


def test_every_score_and_flag_column_of_every_registered_table_is_defined():
    for name, frame in frames().items():
        for column in score_columns(frame) + [c for c in frame.columns if frame[c].dtype == bool]:
            if column in ("prompt_id", "step", "n_pruned", "depth", "context_length", "start_layer", "end_layer",
                          "dim", "position"):
                continue
            term = glossary.lookup(column, name)
            assert term is not None, f"{name}.{column} has no glossary entry"
            assert term.formula and term.source or term.direction is None, f"{name}.{column}"
    assert set(frames()) <= set(ANALYZERS)


def test_two_entropies_are_two_terms_and_sink_mass_is_the_sink_score():
    pooled, per_prompt = glossary.lookup("entropy", "head_summary"), glossary.lookup("entropy", "head_patterns")
    assert pooled is not per_prompt and pooled.label != per_prompt.label
    assert "pooled" in pooled.label and "prompts" in per_prompt.label
    assert pooled.direction == per_prompt.direction == "low"  # focused heads are the notable ones
    assert glossary.lookup("sink_mass", "head_patterns").same_as == "sink_score"
    assert glossary.lookup("effect").direction == "abs" and glossary.lookup("umap_x").direction is None
    assert "random tokens repeated twice" in glossary.lookup("induction").note  # says which prompts
    for name in ("effect", "local_mass"):  # the two the issue found undefined
        assert glossary.lookup(name).formula


def test_an_analysis_brings_its_own_terms_and_bad_directions_fail(monkeypatch):
    from workbench.analyzers import Analyzer

    term = glossary.Term("first_mass", "mean attention on key 0", "[0, 1]", "more on the first key", "Test 2024")
    monkeypatch.setitem(ANALYZERS, "toy", Analyzer("toy", lambda m, p: None, "Toy", glossary={"first_mass": term}))
    assert glossary.lookup("first_mass", "toy") is term and glossary.lookup("first_mass") is None
    assert glossary.describe("first_mass", "toy").startswith("first_mass = mean attention on key 0")
    assert "first_mass" not in glossary.__doc__ and "head_summary.entropy" in glossary.__doc__
    with pytest.raises(ValueError, match="direction 'up'"):
        glossary.Term("x", "y", direction="up")
