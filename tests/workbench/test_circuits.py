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
    res = wb.circuit_faithfulness(copier, task, circuit)
    assert res["faithfulness"] == pytest.approx(1.0, abs=1e-5) and res["n_heads"] == 2
    assert res["metric_full"] == pytest.approx(wb.task_metric(copier, task)["logit_diff"], rel=1e-5)
    assert abs(res["metric_without_circuit"]) < 0.2 * res["metric_full"]
    assert wb.task_metric(copier, task, ablate=circuit)["accuracy"] < 0.2
    assert wb.task_metric(copier, task, ablate=[(1, 1)])["accuracy"] == 1.0


def test_resample_faithfulness_swaps_in_the_corrupted_run(copier):
    task = copy_task()
    patched = wb.circuit(copier, task, "activation_patching")
    res = wb.circuit_faithfulness(copier, task, [copy_model.INDUCTION], ablation="corrupted")
    # Only the induction head's output differs in a way the logits read: the rest may take the
    # corrupted values freely, and the induction head alone carries the corrupted answer.
    assert res["faithfulness"] == pytest.approx(1.0, abs=1e-4)
    assert res["metric_without_circuit"] == pytest.approx(patched.attrs["ld_corrupted"], rel=1e-4)
    assert res["metric_empty"] == pytest.approx(patched.attrs["ld_corrupted"], rel=1e-4)


def test_circuit_overlap_on_hand_made_sets():
    a = [(0, 0), (0, 1), (1, 0), (1, 1)]
    b = [(1, 0), (1, 1), (2, 0)]
    res = wb.circuit_overlap(a, b)
    assert res == {"jaccard": 2 / 5, "overlap_coefficient": 2 / 3, "share_a_in_b": 2 / 4, "share_b_in_a": 2 / 3,
                   "n_a": 4, "n_b": 3, "n_shared": 2}
    grid = pd.DataFrame([(l, h) for l in range(3) for h in range(2)], columns=["layer", "head"])
    fa = grid.assign(in_circuit=[(l, h) in a for l, h in zip(grid["layer"], grid["head"])], effect=0.0)
    fb = grid.assign(in_circuit=[(l, h) in b for l, h in zip(grid["layer"], grid["head"])], effect=0.0)
    assert wb.circuit_overlap(fa, fb) == res
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
    with pytest.raises(WorkbenchError, match="unknown ablation 'zero'"):
        wb.circuit_faithfulness(copier, task, [(1, 0)], ablation="zero")
    with pytest.raises(WorkbenchError, match="circuit b is empty"):
        wb.circuit_overlap([(0, 0)], [])
    with pytest.raises(WorkbenchError, match="is an encoder"):
        wb.circuit(minilm, task)
    assert C._applies(minilm) and C._applies(copier)


# -- the demo model -----------------------------------------------------------------------
DRAWS, SEED = 5, 0


@pytest.fixture(scope="module")
def demo():
    torch.set_num_threads(1)
    return wb.load_model("demo")


@pytest.fixture(scope="module")
def demo_circuits(demo):
    return {task: {m: wb.circuit(demo, task, m) for m in C.METHODS} for task in C.TASKS}


@pytest.mark.parametrize("task", C.TASKS)
def test_demo_circuit_is_faithful_and_beats_random_heads(demo, demo_circuits, task):
    frame = demo_circuits[task]["activation_patching"]
    heads = [tuple(map(int, h)) for h in frame.loc[frame["in_circuit"], ["layer", "head"]].values]
    resample = wb.circuit_faithfulness(demo, task, frame, ablation="corrupted")
    mean = wb.circuit_faithfulness(demo, task, frame, ablation="mean")
    full = wb.task_metric(demo, task)
    cut = wb.task_metric(demo, task, ablate=heads)
    rng = np.random.default_rng(SEED)
    others = [(l, h) for l in range(demo.n_layers) for h in range(demo.n_heads) if (l, h) not in heads]
    random = [wb.task_metric(demo, task, ablate=[others[i] for i in rng.choice(len(others), len(heads), replace=False)])
              for _ in range(DRAWS)]
    rand_ld = float(np.median([r["logit_diff"] for r in random]))
    agree = wb.circuit_agreement(frame, demo_circuits[task]["attribution_patching"])
    print(f"\n{task}: circuit {heads} (LD clean {frame.attrs['ld_clean']:.2f}, corrupted "
          f"{frame.attrs['ld_corrupted']:.2f}); faithfulness resample {resample['faithfulness']:.3f} / mean "
          f"{mean['faithfulness']:.3f}; LD full {full['logit_diff']:.2f} (acc {full['accuracy']:.2f}), circuit "
          f"zeroed {cut['logit_diff']:.2f} (acc {cut['accuracy']:.2f}), random median {rand_ld:.2f} (acc "
          f"{np.median([r['accuracy'] for r in random]):.2f}); methods Spearman {agree['spearman']:.3f}")
    assert cut["logit_diff"] < rand_ld  # ablating the circuit hurts more than as many random heads
    assert agree["spearman"] > 0.5
    # faithfulness: the copy is spread over several heads below the 0.1 threshold (the threshold
    # circuit keeps 0.77 of ioi's logit difference, 0.48 of colored_objects'), so grow the
    # circuit along the activation-patching ranking; a quarter of the heads must be enough
    budget = demo.n_layers * demo.n_heads // 4
    size = next((n for n in range(len(heads), budget + 1)
                 if wb.circuit_faithfulness(demo, task, frame.assign(in_circuit=C.select(frame["effect"], top_n=n)),
                                            ablation="corrupted")["faithfulness"] > 0.8), None)
    print(f"{task}: the top {size} heads by effect keep > 0.8 of the logit difference (resample ablation)")
    assert size is not None and size <= budget


def test_demo_ioi_and_colored_objects_circuits_overlap(demo_circuits):
    a = demo_circuits["ioi"]["activation_patching"]
    b = demo_circuits["colored_objects"]["activation_patching"]
    res = wb.circuit_overlap(a, b)
    print(f"\noverlap ioi vs colored_objects (activation patching): {res}")
    assert res["n_shared"] >= 1
    assert res["jaccard"] == res["n_shared"] / (res["n_a"] + res["n_b"] - res["n_shared"])
