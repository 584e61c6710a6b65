"""head_patterns against heads whose attention is known by construction, and the detector
scores against TransformerLens's own detection patterns.

The heads are those of `tests.handmade.handmade_gpt2` (its docstring says which head does what).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import workbench as wb
from tests import tiny_models
from tests.handmade import BACK2, BACK3, INDUCTION, PREV, SELF, SELF1, SINK, handmade_gpt2, handmade_prompts
from workbench.analyzers import patterns as pat


@pytest.fixture(scope="module")
def handmade():
    return wb.load_model("handmade", hf_model=handmade_gpt2(), tokenizer=tiny_models.tokenizer("gpt2"))


@pytest.fixture(scope="module")
def handmade_frame(handmade):
    # four kinds of head by construction: previous-token, sink, induction, fixed offset (self, t-2, t-3)
    return wb.head_patterns(handmade, handmade_prompts(), n_clusters=4)


def _score(frame, layer, head, col):
    return float(frame.loc[(frame["layer"] == layer) & (frame["head"] == head), col].iloc[0])


def test_previous_token_head_has_the_highest_previous_token_score(handmade_frame):
    top = handmade_frame.sort_values("prev_token", ascending=False).iloc[0]
    assert (top["layer"], top["head"]) == (0, PREV)
    assert top.prev_token > 0.95  # every query but the first (1/49 of the mass) is on t-1
    others = handmade_frame[(handmade_frame.layer != 0) | (handmade_frame["head"] != PREV)]
    assert others.prev_token.max() < 0.1


def test_induction_head_has_the_highest_induction_score(handmade_frame):
    top = handmade_frame.sort_values("induction", ascending=False).iloc[0]
    assert (top["layer"], top["head"]) == (1, INDUCTION)
    # the 24 queries of the second copy (of 49) sit on their induction target; the first copy
    # has a target only where the random tokens repeat by chance
    assert top.induction > 0.45
    others = handmade_frame[(handmade_frame.layer != 1) | (handmade_frame["head"] != INDUCTION)]
    assert others.induction.max() < 0.05


def test_stream_descriptors_match_the_construction(handmade_frame):
    f = handmade_frame
    assert _score(f, 0, SINK, "sink_mass") > 0.999
    for layer, head, distance in ((0, SELF, 0.0), (1, SELF1, 0.0)):
        assert abs(_score(f, layer, head, "mean_distance") - distance) < 1e-3
        assert _score(f, layer, head, "max_prob") > 0.999 and _score(f, layer, head, "entropy") < 1e-3
    assert 0.9 < _score(f, 0, PREV, "mean_distance") < 1.0  # (T-1)/T: query 0 can only look at itself
    assert _score(f, 0, SELF, "local_mass") > 0.999


@pytest.mark.parametrize("mode", ["exact", "stream"])
def test_mean_distance_equals_exact_patterns(tiny, mode):
    model, _ = tiny
    prompts = tiny_models.PROMPTS
    if mode == "stream" and not model.is_causal:  # an encoder's |t - k| needs the pattern
        with pytest.raises(wb.WorkbenchError, match="mode='stream' needs a causal model; tiny-bert is an encoder"):
            wb.describe(model, prompts, mode=mode)
        return
    stats = wb.describe(model, prompts, batch_size=2, mode=mode).to_frame()
    patterns = wb.capture_patterns(model, prompts)
    ids, mask = model.to_tokens(prompts)
    for row in stats.itertuples():
        n = int(mask[row.prompt_id].sum())
        a = patterns[row.layer][row.prompt_id, row.head, :n, :n].double()  # (query, key)
        offset = torch.arange(n)[:, None] - torch.arange(n)[None, :]
        offset = offset if model.is_causal else offset.abs()
        assert abs(row.mean_distance - float((a * offset).sum(-1).mean())) < 1e-5


def test_detection_patterns_equal_transformer_lens():
    from transformer_lens import head_detector as tl

    tokens = torch.tensor([2, 7, 9, 7, 11, 9, 7, 7, 12])
    ours = pat.detection_patterns(tokens)
    torch.testing.assert_close(ours["prev_token"], tl.get_previous_token_head_detection_pattern(tokens))
    torch.testing.assert_close(ours["duplicate"], tl.get_duplicate_token_head_detection_pattern(tokens))
    torch.testing.assert_close(ours["induction"], tl.get_induction_head_detection_pattern(tokens))


def test_detector_scores_on_patterns_built_by_hand():
    n = 9
    tokens = torch.tensor([[2, 5, 6, 7, 8, 5, 6, 7, 8]])  # a 4-token sequence repeated after BOS
    prev = torch.zeros(n, n)
    prev[0, 0] = 1.0
    prev[torch.arange(1, n), torch.arange(n - 1)] = 1.0
    induction = prev.clone()  # first copy: previous token; second copy: the token after the earlier copy
    induction[torch.arange(5, n), torch.arange(2, 6)] = 1.0
    induction[torch.arange(5, n), torch.arange(4, 8)] = 0.0
    patterns = {0: torch.stack([prev, induction])[None]}  # (batch 1, head 2, query, key)
    frame = pat.detector_scores(patterns, tokens).set_index("head")
    assert frame.loc[0, "prev_token"] == pytest.approx(8 / 9)
    assert frame.loc[1, "induction"] == pytest.approx(4 / 9)
    assert frame.loc[1, "duplicate"] == pytest.approx(0.0)
    assert frame.loc[0, "induction"] == pytest.approx(0.0)
    from transformer_lens import head_detector as tl

    for head, a in enumerate((prev, induction)):  # TransformerLens's own "mul" score agrees
        for name, get in (("prev_token", tl.get_previous_token_head_detection_pattern),
                          ("duplicate", tl.get_duplicate_token_head_detection_pattern),
                          ("induction", tl.get_induction_head_detection_pattern)):
            expected = tl.compute_head_attention_similarity_score(
                a, get(tokens[0]), exclude_bos=False, exclude_current_token=False, error_measure="mul")
            assert frame.loc[head, name] == pytest.approx(expected)


def test_repeated_token_probes_are_seeded_and_repeat(handmade):
    a = pat.repeated_token_probes(handmade, n_probes=3, probe_len=10, seed=1)
    b = pat.repeated_token_probes(handmade, n_probes=3, probe_len=10, seed=1)
    assert torch.equal(a, b) and a.shape == (3, 21)
    assert (a[:, 0] == handmade.tokenizer.bos_token_id).all()
    assert torch.equal(a[:, 1:11], a[:, 11:21])
    assert not set(a[:, 1:].flatten().tolist()) & set(handmade.tokenizer.all_special_ids)


def test_head_patterns_on_every_tiny_architecture(tiny):
    model, _ = tiny  # 2 layers x 4 heads = 8 heads: UMAP must cope
    frame = wb.head_patterns(model, tiny_models.PROMPTS)
    assert list(frame.columns) == ["layer", "head", "entropy", "max_prob", "sink_mass", "local_mass", "mean_distance",
                                   "prev_token", "duplicate", "induction", "umap_x", "umap_y", "cluster", "pattern"]
    assert len(frame) == 8 and np.isfinite(frame[["umap_x", "umap_y"]].to_numpy()).all()
    again = wb.head_patterns(model, tiny_models.PROMPTS)
    np.testing.assert_allclose(frame[["umap_x", "umap_y"]], again[["umap_x", "umap_y"]])  # seeded
    assert (frame.cluster == again.cluster).all()
    names = frame.groupby("cluster")["pattern"].unique()
    assert all(len(v) == 1 for v in names)  # one name per cluster


def test_name_clusters_reads_what_stands_out_in_each_cluster():
    import pandas as pd

    rows = []
    for cluster, values in enumerate([dict(induction=0.6), dict(prev_token=0.9), dict(sink_mass=0.9),
                                      dict(sink_mass=0.8), dict(local_mass=0.9), dict(entropy=3.0),
                                      dict(induction=0.05, entropy=0.1)]):  # too weak for any name
        for _ in range(2):
            rows.append({f: 0.0 for f in pat.FEATURES} | dict(entropy=1.0) | values | {"cluster": cluster})
    names = pat.name_clusters(pd.DataFrame(rows))
    assert names == {0: "induction", 1: "previous-token", 2: "sink", 3: "sink 2", 4: "local", 5: "broad", 6: "mixed"}


def test_handmade_clusters_are_named_after_their_heads(handmade_frame):
    named = dict(zip(zip(handmade_frame["layer"], handmade_frame["head"]), handmade_frame["pattern"]))
    assert named[0, SINK] == "sink"
    assert named[0, PREV] == "previous-token"
    assert named[1, INDUCTION] == "induction"
    assert {named[0, SELF], named[0, BACK2], named[1, SELF1], named[1, BACK3]} == {"local"}


def test_umap_embedding_of_few_heads():
    x = np.random.default_rng(0).normal(size=(8, 5))
    assert pat.umap_embedding(x).shape == (8, 2)
    assert pat.umap_embedding(x[:3]).shape == (3, 2)  # fewer than 4 heads: principal components
    with pytest.raises(wb.WorkbenchError, match="n_neighbors must be an int >= 2; got 1"):
        pat.umap_embedding(x, n_neighbors=1)
    with pytest.raises(wb.WorkbenchError, match=r"n_neighbors must be an int >= 2; got 2.5 \(float\)"):
        pat.umap_embedding(x, n_neighbors=2.5)


def test_head_patterns_bad_inputs(handmade):
    with pytest.raises(wb.WorkbenchError, match="prompts is empty"):
        wb.head_patterns(handmade, [])
    with pytest.raises(wb.WorkbenchError, match="probe_len must be an int >= 2; got 1"):
        wb.head_patterns(handmade, ["w1 w2"], probe_len=1)
    with pytest.raises(wb.WorkbenchError, match="local_window must be a positive int; got 0"):
        wb.head_patterns(handmade, ["w1 w2"], local_window=0)
    capture = wb.describe(handmade, ["w1 w2 w3"])
    with pytest.raises(wb.WorkbenchError, match=r"capture was made with local_window=4; head_patterns asks for "
                                                r"local_window=6: make it with wb.describe\(\.\.\., local_window=6\)"):
        wb.head_patterns(handmade, ["w1 w2 w3"], local_window=6, capture=capture)
    with pytest.raises(wb.WorkbenchError, match=r"n_clusters must be an int in \[1, 8\]"):
        wb.head_patterns(handmade, ["w1 w2 w3"], n_clusters=0)
