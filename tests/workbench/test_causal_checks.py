"""The registered causal_checks table on a non-demo causal LM whose tokenizer spells English (a
tiny random Llama over SmolLM2's vocabulary): circuit effect rankings from the circuits table,
checked on the task's held-out rows (seed 1), and the retrieval ranking's reason when skipped."""

from __future__ import annotations

import pytest
import torch

import workbench as wb
from workbench.analyzers import causal
from workbench.analyzers import causal_checks as registered
from workbench.analyzers import circuits as C
from workbench.analyzers import circuits_tables
from workbench.tasks import analysis_suite

PROMPTS = ["The cat sat on the mat and looked at the door.", "When Mary and John went to the store, John gave a drink",
           "Paris is the capital of France, and Rome is", "One, two, three, four, five, six, seven",
           "The weather today is sunny with a chance of rain", "She opened the book and began to read aloud",
           "A quick brown fox jumps over the lazy dog", "In the morning we drink coffee and eat bread",
           "The train left the station at nine o'clock"]


def _ld(model, rows, heads) -> float:
    """Mean logit difference (answer − corrupted answer, first tokens, last position) by plain
    forwards, one prompt at a time, under `wb.ablate`."""
    total = 0.0
    with torch.no_grad(), wb.ablate(model, heads):
        for row in rows:
            ids = torch.tensor([model.tokenizer(row["prompt"])["input_ids"]])
            last = model.hf_model(input_ids=ids).logits[0, -1].double()
            a, w = (model.tokenizer(row[k], add_special_tokens=False)["input_ids"][0]
                    for k in ("answer", "corrupted_answer"))
            total += float(last[a] - last[w])
    return total / len(rows)


def test_circuit_effect_rankings_are_checked_on_held_out_task_rows(english):
    table = registered.causal_checks(english, PROMPTS)
    names = table["ranking"].unique().tolist()
    for task in C.TASKS:
        assert f"circuits.effect:{task}" in names and f"circuits.effect:{task} (attribution_patching)" in names
    circuits = circuits_tables.task_circuits(english)  # the registered circuits table the rankings come from
    ioi = circuits[(circuits["task"] == "ioi") & (circuits["method"] == "activation_patching")]
    order = causal.ranked_heads(ioi, "effect")
    held = analysis_suite("ioi", english, seed=1)
    assert not {r["prompt"] for r in held} & {r["prompt"] for r in analysis_suite("ioi", english)}
    rows = table[table["ranking"] == "circuits.effect:ioi"].set_index("k")
    assert rows.index.tolist() == [1, 3]  # of 1, 3, 5, 10% of 8 heads: at most half
    assert rows.loc[1, "top_heads"] == f"L{order[0][0]}H{order[0][1]}"  # the largest signed effect first
    assert rows.loc[1, "clean"] == pytest.approx(_ld(english, held, []), abs=1e-4)
    assert rows.loc[1, "top"] == pytest.approx(_ld(english, held, [order[0]]), abs=1e-4)
    assert rows.loc[3, "bottom"] == pytest.approx(_ld(english, held, order[-3:]), abs=1e-4)
    assert rows["higher_is_better"].all() and rows["metric"].str.contains("held-out rows").all()
    assert "retrieval_heads.retrieval_score" in names or "retrieval_heads.retrieval_score" in table.attrs["skipped"]
