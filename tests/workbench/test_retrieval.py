"""Retrieval heads (Wu et al. 2024): a hand-built copy head is found, both modes agree, the
streaming argmax matches eager attention, ablation is causal, and the demo's retrieval heads
break passkey retrieval while random heads do not."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import workbench as wb
from tests.workbench import copy_model
from workbench.analyzers import retrieval as R
from workbench.errors import WorkbenchError

ROOT = Path(__file__).resolve().parents[2]


def needle_trial(rng, context_length: int, depth: float, n: int = 3) -> dict:
    """filler… cue needle filler… cue → answer needle (needle and cue tokens occur once before)."""
    words = rng.permutation(np.arange(10, 90))
    cue, needle, pool = words[0], words[1:1 + n], words[1 + n:]
    filler = list(rng.choice(pool[:20], context_length - 3 - n))
    k = int(round(depth * len(filler)))
    tokens = filler[:k] + [cue, *needle] + filler[k:] + [cue]
    return {"prompt": " ".join(f"w{t}" for t in tokens), "answer": "".join(f" w{t}" for t in needle),
            "context_length": context_length, "depth": depth}


@pytest.fixture(scope="module")
def copier():
    torch.manual_seed(0)
    return copy_model.load()


@pytest.fixture(scope="module")
def trials():
    rng = np.random.default_rng(0)
    return [needle_trial(rng, c, d) for c in (16, 32) for d in (0.0, 0.5, 1.0)]


def test_the_copy_head_has_the_top_retrieval_score_in_both_modes(copier, trials):
    forced = R.retrieval_scores(copier, trials, mode="teacher_forced")
    generated = R.retrieval_scores(copier, trials, mode="generation")
    top = forced.sort_values("retrieval_score").iloc[-1]
    assert (int(top["layer"]), int(top["head"])) == copy_model.INDUCTION
    assert top["retrieval_score"] == 1.0 and top["activation_frequency"] == 1.0
    assert forced.loc[forced["is_retrieval"], ["layer", "head"]].values.tolist() == [list(copy_model.INDUCTION)]
    assert forced.attrs["n_correct"] == len(trials)
    pd.testing.assert_frame_equal(forced, generated)


def test_teacher_forced_copies_equal_an_eager_attention_oracle(copier, trials):
    per = R.trial_scores(copier, trials).set_index(["trial", "layer", "head"])["copies"]
    for i, row in enumerate(trials):
        p = copier.tokenizer(row["prompt"])["input_ids"]
        a = copier.tokenizer(row["answer"], add_special_tokens=False)["input_ids"]
        ids = torch.tensor([p + a])
        with torch.no_grad():
            att = copier.hf_model(input_ids=ids, output_attentions=True).attentions  # L x (1, H, N, N)
        needle = {p.index(a[0]) + j for j in range(len(a))}
        for layer, pattern in enumerate(att):
            for head in range(copier.n_heads):
                expected = sum(1 for k, tok in enumerate(a)
                               if (key := int(pattern[0, head, len(p) - 1 + k].argmax())) in needle and ids[0, key] == tok)
                assert per[(i, layer, head)] == expected, (i, layer, head)


def test_scores_average_over_correctly_answered_trials_only(copier, trials):
    wrong = dict(trials[0])
    words = wrong["prompt"].split()
    wrong["answer"] = " " + " ".join(words[:2])  # in the haystack, but the model answers the needle
    for mode in R.MODES:
        per = R.trial_scores(copier, [*trials, wrong], mode=mode)
        assert per.groupby("trial")["correct"].first().tolist() == [True] * len(trials) + [False]
        both = R.retrieval_scores(copier, [*trials, wrong], mode=mode)
        assert both.attrs["n_trials"] == len(trials) + 1 and both.attrs["n_correct"] == len(trials)
        pd.testing.assert_frame_equal(both, R.retrieval_scores(copier, trials, mode=mode), check_like=True)


def test_ablating_the_copy_head_breaks_retrieval_and_a_bystander_does_not(copier, trials):
    full = wb.niah_grid(copier, trials)
    assert full["accuracy"].tolist() == [1.0] * 6 and list(full.columns[:3]) == ["context_length", "depth", "accuracy"]
    assert wb.niah_grid(copier, trials, ablate=[copy_model.INDUCTION])["accuracy"].max() == 0.0
    assert wb.niah_grid(copier, trials, ablate=[(1, 1)])["accuracy"].min() == 1.0
    ids, mask = copier.to_tokens([trials[0]["prompt"]])
    with torch.no_grad(), wb.ablate(copier, [copy_model.INDUCTION]):
        hf = copier.hf_model(input_ids=ids).logits
        bridge = copier.bridge(ids)
    torch.testing.assert_close(bridge, hf, atol=1e-4, rtol=1e-4)  # both forwards see the ablation
    with torch.no_grad():
        assert not torch.allclose(copier.hf_model(input_ids=ids).logits, hf)  # and it is removed on exit


def test_retrieval_figures_show_the_scores(copier, trials):
    from workbench.figures import niah_heatmap, retrieval_grid

    scores = R.retrieval_scores(copier, trials)
    fig = retrieval_grid(scores)
    assert fig.data[0].z[1][0] == 1.0 and np.nansum(fig.data[0].z) == 1.0
    assert list(zip(fig.data[1].y, fig.data[1].x)) == [copy_model.INDUCTION]
    grid = pd.concat([wb.niah_grid(copier, trials).assign(condition="full"),
                      wb.niah_grid(copier, trials, ablate=[copy_model.INDUCTION]).assign(condition="ablated")])
    fig = niah_heatmap(grid)
    assert np.asarray(fig.data[0].z).min() == 1.0 and np.asarray(fig.data[1].z).max() == 0.0


def test_bad_inputs_give_clear_errors(copier, trials, tmp_path, minilm):
    with pytest.raises(WorkbenchError, match="does not appear in the prompt"):
        R.retrieval_scores(copier, [{"prompt": "w1 w2 w3", "answer": " w9"}])
    with pytest.raises(WorkbenchError, match="unknown mode 'beam'"):
        R.retrieval_scores(copier, trials, mode="beam")
    with pytest.raises(WorkbenchError, match=r"trial 0 lacks field\(s\) \['answer'\]"):
        R.retrieval_scores(copier, [{"prompt": "w1 w2"}])
    bad = tmp_path / "trials.jsonl"
    bad.write_text(json.dumps({"prompt": "w1 w2 w3", "answer": " w2"}) + "\n")
    with pytest.raises(WorkbenchError, match=r"lacks field\(s\) \['context_length', 'depth'\]"):
        wb.niah_grid(copier, bad)
    with pytest.raises(WorkbenchError, match=r"threshold must be a number in \[0, 1\); got 1.5"):
        R.retrieval_scores(copier, trials, threshold=1.5)
    with pytest.raises(WorkbenchError, match="answered none of the 1 trials"):
        R.retrieval_scores(copier, [{"prompt": "w1 w2 w3 w4", "answer": " w1 w2"}])
    with pytest.raises(WorkbenchError, match="is an encoder"):
        R.retrieval_scores(minilm, [{"prompt": "a b c", "answer": " b"}])
    with pytest.raises(WorkbenchError, match="head 7 is out of range"):
        with wb.ablate(copier, [(0, 7)]):
            pass
    assert R._applies(minilm) and R._applies(copier)  # registry: not applicable without suites


# -- the demo model -----------------------------------------------------------------------
DRAWS, SEED = 5, 0


@pytest.fixture(scope="module")
def demo():
    torch.set_num_threads(1)
    return wb.load_model("demo")


@pytest.fixture(scope="module")
def demo_found(demo):
    return R.demo_retrieval(demo)


@pytest.fixture(scope="module")
def named():
    """The retrieval heads the demo's training report names (its own eager-attention scores and
    the smallest top-k set whose ablation breaks passkey retrieval)."""
    report = json.loads((ROOT / "data" / "demo" / "training_report.json").read_text())
    return {tuple(h) for h in report["ablation"]["heads"]}


def _accuracy(model, heads) -> float:
    grid = wb.niah_grid(model, ablate=heads or None)
    return float((grid["accuracy"] * grid["n_trials"]).sum() / grid["n_trials"].sum())


def _top(frame, k):
    return [tuple(map(int, h)) for h in frame.nlargest(k, "retrieval_score")[["layer", "head"]].values]


def test_demo_scores_find_the_reports_retrieval_heads(demo_found, named):
    assert set(_top(demo_found, len(named))) == named
    strong = demo_found.set_index(["layer", "head"]).loc[sorted(named), "retrieval_score"]
    assert (strong > R.ABLATE_THRESHOLD).all()
    assert demo_found.attrs["n_correct"] >= 0.8 * demo_found.attrs["n_trials"]


def test_demo_retrieval_heads_are_causal_and_random_heads_are_not(demo, demo_found, named):
    heads = _top(demo_found, len(named))
    base, ablated = _accuracy(demo, []), _accuracy(demo, heads)
    rng = np.random.default_rng(SEED)
    others = [(l, h) for l in range(demo.n_layers) for h in range(demo.n_heads) if (l, h) not in heads]
    drops = [base - _accuracy(demo, [others[i] for i in rng.choice(len(others), len(heads), replace=False)])
             for _ in range(DRAWS)]
    print(f"\ndemo retrieval heads {heads}: passkey accuracy {base:.3f} -> {ablated:.3f}; "
          f"random drops {np.round(drops, 3).tolist()} (median {np.median(drops):.3f})")
    assert base - ablated >= 0.50
    assert np.median(drops) <= 0.15


def test_demo_teacher_forced_and_generation_agree(demo):
    rows = [r for r in R.read_trials(None) if r["context_length"] == 128][:4]
    forced = R.retrieval_scores(demo, rows, mode="teacher_forced")
    generated = R.retrieval_scores(demo, rows, mode="generation")
    assert forced.attrs["n_correct"] == generated.attrs["n_correct"] >= 3
    pd.testing.assert_frame_equal(forced, generated)
