"""IOI attention signatures on the hand-built copy model, whose heads' patterns are known: the
previous-token heads attend to the token before, and the induction head attends from the
subject's second mention (S2) to the token after its first (S1 + 1)."""

from __future__ import annotations

import pytest

from tests.workbench import copy_model
from workbench.analyzers.circuits_roles import ioi_attention
from workbench.errors import WorkbenchError


def rows():
    # IO S f S g ... END: "w20 w30 w40 w30 w50" with io = w20, s = w30 (S1 at 2, S2 at 4, END at 5)
    return [{"prompt": f"w{a} w{b} w{c} w{b} w{d}", "answer": f" w{a}", "corrupted_prompt": f"w{a} w{b} w{c} w{b} w{d}",
             "corrupted_answer": f" w{b}", "io": f"w{a}", "s": f"w{b}"}
            for a, b, c, d in [(20, 30, 40, 50), (21, 31, 41, 51), (22, 32, 42, 52)]]


def test_known_heads_have_their_signatures():
    frame = ioi_attention(copy_model.load(), rows()).set_index(["layer", "head"])
    assert frame.attrs["n"] == 3
    assert frame.loc[copy_model.PREVIOUS, "prev_token"] == pytest.approx(1.0, abs=1e-3)
    assert frame.loc[(1, 1), "prev_token"] == pytest.approx(1.0, abs=1e-3)
    induction = frame.loc[copy_model.INDUCTION]
    assert induction["s2_to_s1_next"] == pytest.approx(1.0, abs=1e-3) and induction["s2_to_s1"] < 1e-3
    # the induction head at END (w50, never seen before) finds no match: attention spread evenly
    assert induction["end_to_io"] == pytest.approx(1 / 6, abs=1e-3)
    assert frame.loc[(0, 1), "end_to_s2"] == pytest.approx(1 / 6, abs=1e-3)  # the all-zero head is uniform


def test_rows_without_names_are_refused():
    bad = [dict(r, s="w99") for r in rows()]  # S never appears twice
    with pytest.raises(WorkbenchError, match="single-token names"):
        ioi_attention(copy_model.load(), bad)
