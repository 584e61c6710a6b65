"""head_patterns against heads whose attention is known by construction, and the detector
scores against TransformerLens's own detection patterns.

`handmade_gpt2` (also used by test_sinks and test_importance) is a two-layer GPT-2 whose q/k
weights are set by hand. Its residual stream holds three blocks, each mirrored by a negative
copy so that every position has mean 0 and the same norm (LayerNorm is then one fixed scale):
one-hot position (P), a random unit token vector × 8 (T), and the previous token's vector (S),
written by L0H0. MLPs and every other head's output are zero.

    layer 0: H0 previous token (q: position t → t−1, k: position)   H1 first-token sink
             H2 self                                                H3 t−2
    layer 1: H0 induction (q: token, k: previous token from S)      H1 self   H2 t−2   H3 t−3
"""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

import workbench as wb
from tests import tiny_models
from workbench.analyzers import patterns as pat

N_POS, D_TOK, D_MODEL, N_HEAD, D_HEAD = 64, 32, 256, 4, 64
P, PN, T, TN, S, SN = (slice(a, a + n) for a, n in ((0, 64), (64, 64), (128, 32), (160, 32), (192, 32), (224, 32)))
PREV, SINK, SELF, BACK2 = range(4)            # layer-0 heads
INDUCTION, SELF1, BACK2_1, BACK3 = range(4)   # layer-1 heads


def handmade_gpt2(*, sink_token: str | None = None, seed: int = 0):
    """The hand-set two-layer GPT-2 above. ``sink_token``: L0H1 attends to that word once it has
    appeared (a hidden sink), and to position 0 before."""
    cfg = GPT2Config(vocab_size=len(tiny_models.VOCAB), n_embd=D_MODEL, n_layer=2, n_head=N_HEAD, n_positions=N_POS,
                     bos_token_id=2, eos_token_id=3, pad_token_id=0, layer_norm_epsilon=1e-9)
    model = GPT2LMHeadModel(cfg)
    g = torch.Generator().manual_seed(seed)
    tok = torch.randn(len(tiny_models.VOCAB), D_TOK, generator=g)
    tok = 8 * tok / tok.norm(dim=-1, keepdim=True)  # (vocab, 32), norm 8
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.transformer.wte.weight[:, T] = tok
        model.transformer.wte.weight[:, TN] = -tok
        model.transformer.wpe.weight[:, P] = 8 * torch.eye(N_POS)
        model.transformer.wpe.weight[:, PN] = -8 * torch.eye(N_POS)
        for block in model.transformer.h:
            block.ln_1.weight.fill_(1.0)
            block.ln_2.weight.fill_(1.0)
        model.transformer.ln_f.weight.fill_(1.0)

        def qk(layer, head, q_rows, k_rows, shift=0, gain=3.0):
            w = model.transformer.h[layer].attn.c_attn.weight  # (d_model, 3 d_model): qkv = x @ W
            q0, k0 = head * D_HEAD, D_MODEL + head * D_HEAD
            for i in range(q_rows.stop - q_rows.start):
                if 0 <= i - shift < D_HEAD:
                    w[q_rows.start + i, q0 + i - shift] = gain  # query of position/token i -> slot i - shift
            for j in range(k_rows.stop - k_rows.start):
                w[k_rows.start + j, k0 + j] = 1.0

        attn0 = model.transformer.h[0].attn
        qk(0, PREV, P, P, shift=1)
        qk(0, SELF, P, P)
        qk(0, BACK2, P, P, shift=2)
        if sink_token is None:  # constant query matching the key of position 0 only
            attn0.c_attn.bias[SINK * D_HEAD] = 20.0
            attn0.c_attn.weight[P.start, D_MODEL + SINK * D_HEAD] = 1.0
        else:  # constant query along one word's vector (logit 24 on that word), first token as fallback (14)
            attn0.c_attn.bias[SINK * D_HEAD:SINK * D_HEAD + D_TOK] = 3.0 * tok[tiny_models.VOCAB[sink_token]]
            for i in range(D_TOK):
                attn0.c_attn.weight[T.start + i, D_MODEL + SINK * D_HEAD + i] = 1.0
            attn0.c_attn.bias[SINK * D_HEAD + D_TOK] = 14.0
            attn0.c_attn.weight[P.start, D_MODEL + SINK * D_HEAD + D_TOK] = 1.0
        for i in range(D_TOK):  # L0H0 copies the attended token's vector into S (and -S)
            attn0.c_attn.weight[T.start + i, 2 * D_MODEL + PREV * D_HEAD + i] = 1.0
            attn0.c_proj.weight[PREV * D_HEAD + i, S.start + i] = 1.0
            attn0.c_proj.weight[PREV * D_HEAD + i, SN.start + i] = -1.0
        qk(1, INDUCTION, T, S, gain=4.0)
        qk(1, SELF1, P, P)
        qk(1, BACK2_1, P, P, shift=2)
        qk(1, BACK3, P, P, shift=3)
    model.set_attn_implementation("eager")
    return model.eval()


def handmade_prompts(n: int = 6, seed: int = 0, words: range = range(90)) -> list[str]:
    """Word prompts of 18–29 words (at most 30 tokens with BOS)."""
    rng = random.Random(seed)
    return [" ".join(f"w{rng.choice(words)}" for _ in range(rng.randrange(18, 30))) for _ in range(n)]


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
