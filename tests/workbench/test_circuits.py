"""Circuits: patching finds the hand-built copy circuit, faithfulness and overlap have their
definitions' values, and the demo's ioi and colored_objects circuits are faithful and overlap."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

import workbench as wb
from tests.workbench import copy_model
from workbench.analyzers import circuits as C
from workbench.errors import WorkbenchError


def copy_task(n: int = 12, seed: int = 0) -> list[dict]:
    """a X b … a → X; corrupted: a Y b … a → Y (equal lengths, only the copied token differs)."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        w = rng.permutation(np.arange(10, 90))
        cue, x, y, fill = w[0], w[1], w[2], list(w[3:3 + int(rng.integers(2, 6))])
        head, tail = fill[:1], fill[1:]
        clean = head + [cue, x] + tail + [cue]
        corrupt = head + [cue, y] + tail + [cue]
        rows.append({"prompt": " ".join(f"w{t}" for t in clean), "answer": f" w{x}",
                     "corrupted_prompt": " ".join(f"w{t}" for t in corrupt), "corrupted_answer": f" w{y}"})
    return rows


@pytest.fixture(scope="module")
def copier():
    return copy_model.load()


def test_activation_patching_finds_exactly_the_copy_head(copier):
    frame = wb.circuit(copier, copy_task(), "activation_patching")
    assert list(frame.columns) == ["layer", "head", "effect", "in_circuit"]
    effect = frame.set_index(["layer", "head"])["effect"]
    # Only the induction head reads the corrupted token's value: patching it restores everything.
    assert effect[copy_model.INDUCTION] == pytest.approx(1.0, abs=1e-4)
    assert effect.drop(copy_model.INDUCTION).abs().max() < 1e-4
    assert frame.loc[frame["in_circuit"], ["layer", "head"]].values.tolist() == [list(copy_model.INDUCTION)]
    assert frame.attrs["ld_clean"] > 0 > frame.attrs["ld_corrupted"]


def test_attribution_patching_ranks_like_activation_patching(copier):
    exact = wb.circuit(copier, copy_task(), "activation_patching")
    fast = wb.circuit(copier, copy_task(), "attribution_patching")
    top = fast.loc[fast["effect"].abs().idxmax()]
    assert (top["layer"], top["head"]) == copy_model.INDUCTION
    assert 0.5 < top["effect"] <= 1.05  # a first-order estimate of the exact 1.0
    agree = wb.circuit_agreement(exact, fast)
    assert agree["n"] == 4 and agree["spearman"] > 0.5


def test_faithfulness_of_the_copy_circuit_is_one(copier):
    task = copy_task()
    circuit = [copy_model.PREVIOUS, copy_model.INDUCTION]
    # The other two heads write nothing (zero value or output weights), so mean-ablating them
    # leaves the logits as they are: F(C) = F(M).
    res = wb.circuit_faithfulness(copier, task, circuit, ablation="mean")
    assert res["faithfulness"] == pytest.approx(1.0, abs=1e-5) and res["n_heads"] == 2
    assert res["normalized"] == pytest.approx(1.0, abs=1e-5) and res["ablation"] == "mean"
    assert "corrupted prompts of the task" in res["reference"]
    assert res["metric_full"] == pytest.approx(wb.task_metric(copier, task)["logit_diff"], rel=1e-5)
    assert abs(res["metric_without_circuit"]) < 0.2 * res["metric_full"]
    assert wb.task_metric(copier, task, ablate=circuit)["accuracy"] < 0.2
    assert wb.task_metric(copier, task, ablate=[(1, 1)])["accuracy"] == 1.0


def test_resample_faithfulness_swaps_in_the_corrupted_run(copier):
    task = copy_task()
    patched = wb.circuit(copier, task, "activation_patching")
    res = wb.circuit_faithfulness(copier, task, [copy_model.INDUCTION])  # resample: the default
    # Only the induction head's output differs in a way the logits read: the rest may take the
    # corrupted values freely, and the induction head alone carries the corrupted answer.
    assert res["faithfulness"] == pytest.approx(1.0, abs=1e-4)
    assert res["metric_without_circuit"] == pytest.approx(patched.attrs["ld_corrupted"], rel=1e-4)
    assert res["metric_empty"] == pytest.approx(patched.attrs["ld_corrupted"], rel=1e-4)
    assert res["metric_corrupted"] == pytest.approx(patched.attrs["ld_corrupted"], rel=1e-4)
    assert res["normalized"] == pytest.approx(1.0, abs=1e-4) and res["ablation"] == "resample"
    zero = wb.circuit_faithfulness(copier, task, [copy_model.INDUCTION], ablation="zero")
    assert zero["faithfulness"] < 0.5  # the previous-token head zeroed: the induction head cannot find the copy


def same_length_task(n: int = 12, seed: int = 0) -> list[dict]:
    """copy_task rows that all have one token length, tagged with one template."""
    rows = [r for r in copy_task(4 * n, seed) if len(r["prompt"].split()) == 6][:n]
    return [dict(r, template="t") for r in rows]


def test_mean_reference_is_the_corrupted_prompts_never_the_scored_ones(copier):
    from workbench.analyzers.circuits_faithful import NodeEvaluator

    task = same_length_task()
    ev = NodeEvaluator(copier, task, ablation="mean")
    assert ev.position_aware == len(task) and ev.bases[0].ndim == 4  # one template: per-position means
    changed_clean = [dict(task[0], prompt=task[0]["prompt"].replace(task[0]["prompt"].split()[0], "w95"))] + task[1:]
    assert changed_clean[0]["prompt"] != task[0]["prompt"]
    moved = NodeEvaluator(copier, changed_clean, ablation="mean")
    assert torch.equal(moved.bases[0], ev.bases[0])  # a scored prompt changed: the means do not move
    words = task[0]["corrupted_prompt"].split()
    changed_ref = [dict(task[0], corrupted_prompt=" ".join(["w95"] + words[1:]))] + task[1:]
    assert not torch.equal(NodeEvaluator(copier, changed_ref, ablation="mean").bases[0], ev.bases[0])
    # the means are those of the corrupted prompts, computed independently
    expect = wb.heads.head_means(copier, [r["corrupted_prompt"] for r in task], by_position=True)
    assert torch.allclose(ev.bases[0], expect, atol=1e-6)
    untagged = NodeEvaluator(copier, [{k: v for k, v in r.items() if k != "template"} for r in task], ablation="mean")
    assert untagged.position_aware == 0 and untagged.bases[0].ndim == 3  # no shared template: one mean
    assert "per position for 0 of" in untagged.reference


def test_default_circuit_is_the_smallest_faithful_set_on_held_out_rows(copier):
    task = copy_task(12)
    frame = wb.circuit(copier, task, "activation_patching")
    a = frame.attrs
    assert frame.loc[frame["in_circuit"], ["layer", "head"]].values.tolist() == [list(copy_model.INDUCTION)]
    assert a["reached"] and a["size"] == 1 and a["faithfulness"] == pytest.approx(1.0, abs=1e-4)
    assert a["n"] == 6 and a["n_held_out"] == 6 and "every second row" in a["held_out"]
    assert a["ablation"] == "resample" and a["target"] == 0.8
    assert a["metric_without_circuit"] == pytest.approx(a["metric_corrupted"], rel=1e-4)  # the circuit ablated
    held = task[1::2]
    assert a["faithfulness"] == pytest.approx(wb.circuit_faithfulness(copier, held, frame)["faithfulness"], abs=1e-6)
    # a target no set of at most half the heads reaches: nothing is marked, and the frame says so
    none = wb.circuit(copier, task, "activation_patching", target=1.5)
    assert not none["in_circuit"].any() and not none.attrs["reached"] and none.attrs["faithfulness"] is None
    assert "not padded" in none.attrs["note"] and sorted(none.attrs["searched"]) == [1, 2]
    fixed = wb.circuit(copier, task, "activation_patching", top_n=2)
    assert fixed["in_circuit"].sum() == 2 and fixed.attrs["target"] is None


def test_faithfulness_curve_top_k_against_random_sets(copier):
    task = copy_task(12)
    frame = wb.circuit(copier, task, "activation_patching")
    curve = wb.circuit_curve(copier, task, frame, draws=5, ablated=True)
    assert curve["k"].tolist() == [1, 2, 3, 4]
    row = curve.set_index("k")
    assert row.loc[1, "top"] == pytest.approx(1.0, abs=1e-4) and row.loc[4, "top"] == pytest.approx(1.0, abs=1e-5)
    assert (curve["random_lo"] <= curve["random_median"]).all() and (curve["random_median"] <= curve["random_hi"]).all()
    assert row.loc[1, "random_median"] < 0.5  # most single random heads are not the induction head
    assert curve["in_circuit"].tolist() == [True, False, False, False]
    corrupted = curve.attrs["metric_corrupted"] / curve.attrs["metric_full"]
    assert row.loc[1, "ablated_top"] == pytest.approx(corrupted, abs=1e-4)  # the induction head ablated
    assert row.loc[1, "ablated_random_median"] > row.loc[1, "ablated_top"]


def test_circuit_overlap_on_hand_made_sets():
    a = [(0, 0), (0, 1), (1, 0), (1, 1)]
    b = [(1, 0), (1, 1), (2, 0)]
    res = wb.circuit_overlap(a, b)
    assert res == {"jaccard": 2 / 5, "overlap_coefficient": 2 / 3, "share_a_in_b": 2 / 4, "share_b_in_a": 2 / 3,
                   "n_a": 4, "n_b": 3, "n_shared": 2}
    grid = pd.DataFrame([(l, h) for l in range(3) for h in range(2)], columns=["layer", "head"])
    fa = grid.assign(in_circuit=[(l, h) in a for l, h in zip(grid["layer"], grid["head"])], effect=0.0)
    fb = grid.assign(in_circuit=[(l, h) in b for l, h in zip(grid["layer"], grid["head"])], effect=0.0)
    framed = wb.circuit_overlap(fa, fb)  # frames of every head: the universe is known, chance is added
    assert {k: framed[k] for k in res} == res and framed["n_total"] == 6
    assert framed["expected_shared"] == pytest.approx(4 * 3 / 6)
    # brute force: every 3-head set B' among 6, how often it shares >= 2 heads with a
    universe = list(zip(grid["layer"], grid["head"]))
    from itertools import combinations

    hits = [len(set(c) & set(a)) for c in combinations(universe, 3)]
    assert framed["p_value"] == pytest.approx(np.mean([h >= 2 for h in hits]))
    assert framed["chance_jaccard"] == pytest.approx(np.mean([h / (7 - h) for h in hits]))
    assert wb.circuit_overlap(a, a)["jaccard"] == 1.0
    assert wb.circuit_overlap([(0, 0)], [(5, 5)])["overlap_coefficient"] == 0.0


def test_membership_figure_marks_a_only_b_only_and_both():
    from workbench.figures import circuit_membership

    grid = pd.DataFrame([(l, h) for l in range(2) for h in range(2)], columns=["layer", "head"])
    fa = grid.assign(in_circuit=[True, True, False, False], effect=0.0)
    fb = grid.assign(in_circuit=[False, True, True, False], effect=0.0)
    fig = circuit_membership(fa, fb, names=("ioi", "colors"))
    assert np.asarray(fig.data[0].z).tolist() == [[1, 3], [2, 0]]  # A only, both / B only, neither
    assert "Jaccard 0.33" in fig.layout.title.text and "ioi in colors 0.50" in fig.layout.title.text


def test_bad_inputs_give_clear_errors(copier, tmp_path, minilm):
    task = copy_task(2)
    bad = tmp_path / "task.jsonl"
    bad.write_text("\n".join(json.dumps({k: v for k, v in r.items() if k != "corrupted_answer"}) for r in task))
    with pytest.raises(WorkbenchError, match=r"lacks field\(s\) \['corrupted_answer'\]"):
        wb.circuit(copier, bad)
    with pytest.raises(WorkbenchError, match=r"task example 0 lacks field\(s\) \['corrupted_prompt'\]"):
        wb.circuit(copier, [{"prompt": "w1", "answer": " w2", "corrupted_answer": " w3"}])
    uneven = [dict(task[0], corrupted_prompt=task[0]["corrupted_prompt"] + " w5")]
    with pytest.raises(WorkbenchError, match="patching needs clean and corrupted prompts of equal token length"):
        wb.circuit(copier, uneven)
    with pytest.raises(WorkbenchError, match="unknown method 'path_patching'"):
        wb.circuit(copier, task, "path_patching")
    with pytest.raises(WorkbenchError, match="unknown task 'greater_than'"):
        wb.circuit(copier, "greater_than")
    with pytest.raises(WorkbenchError, match="give top_n or threshold, not both"):
        wb.circuit(copier, task, top_n=2, threshold=0.1)
    with pytest.raises(WorkbenchError, match="unknown ablation 'corrupted'"):
        wb.circuit_faithfulness(copier, task, [(1, 0)], ablation="corrupted")
    with pytest.raises(WorkbenchError, match="circuit b is empty"):
        wb.circuit_overlap([(0, 0)], [])
    with pytest.raises(WorkbenchError, match="is an encoder"):
        wb.circuit(minilm, task)
    from workbench.analyzers import circuits_tables

    assert circuits_tables._applies(minilm) and circuits_tables._applies(copier)


# -- the demo model -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def demo():
    torch.set_num_threads(1)
    return wb.load_model("demo")


@pytest.fixture(scope="module")
def demo_circuits(demo):
    return {task: {m: wb.circuit(demo, task, m) for m in C.METHODS} for task in C.TASKS}


@pytest.mark.parametrize("task", C.TASKS)
def test_demo_default_circuit_is_faithful_and_beats_random_heads(demo, demo_circuits, task):
    frame = demo_circuits[task]["activation_patching"]
    a = frame.attrs
    heads = [tuple(map(int, h)) for h in frame.loc[frame["in_circuit"], ["layer", "head"]].values]
    agree = wb.circuit_agreement(frame, demo_circuits[task]["attribution_patching"])
    held = C.split_task(demo, task)[1]
    mean = wb.circuit_faithfulness(demo, held, frame, ablation="mean")
    print(f"\n{task}: default circuit {heads} ({a['held_out']}): faithfulness {a['faithfulness']:.3f} "
          f"(normalized {a['normalized']:.3f}, {a['ablation']}), random {len(heads)}-sets kept "
          f"{a['random_kept_median']:.3f}; ablated: circuit {a['metric_without_circuit'] / a['metric_full']:.3f} vs "
          f"random median {a['random_ablated_median']:.3f}; mean ablation over corrupted prompts "
          f"{mean['faithfulness']:.3f}; methods Spearman {agree['spearman']:.3f}")
    assert a["reached"] and a["faithfulness"] >= 0.8 and len(heads) <= demo.n_layers * demo.n_heads // 2
    assert "seed 1" in a["held_out"] and a["ablation"] == "resample"
    assert a["random_kept_median"] < a["faithfulness"]
    # ablating the circuit hurts more than the median of 5 random sets of its size, on held-out prompts
    assert a["metric_without_circuit"] / a["metric_full"] < a["random_ablated_median"]
    assert agree["spearman"] > 0.5


def test_demo_ioi_and_colored_objects_circuits_overlap_next_to_chance(demo_circuits):
    a = demo_circuits["ioi"]["activation_patching"]
    b = demo_circuits["colored_objects"]["activation_patching"]
    res = wb.circuit_overlap(a, b)
    print(f"\noverlap ioi vs colored_objects (default circuits, activation patching): {res}")
    assert res["n_shared"] >= 1 and res["n_total"] == 32
    assert res["expected_shared"] == pytest.approx(res["n_a"] * res["n_b"] / 32)
    assert res["jaccard"] == res["n_shared"] / (res["n_a"] + res["n_b"] - res["n_shared"])
