"""The shared descriptive capture (`wb.describe`): equal to the model's own eager attention and
hidden states, the same in its exact and streaming modes, bounded in memory, and giving the same
tables as the analyses run one by one."""

from __future__ import annotations

import sys
import tempfile

import numpy as np
import pandas as pd
import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

import workbench as wb
from probes.hooks import active_hook_count
from tests import tiny_models
from workbench import description as description
from workbench.capture import pattern_bytes
from workbench.description import ROW_FIELDS

# unequal lengths, so batches of 2 are padded
PROMPTS = tiny_models.PROMPTS + ["w20 w21 w22", "w30 w31 w32 w33 w34 w35 w36 w37 w38 w39 w40"]


def _oracle_layers(oracle):
    """The decoder/encoder layer list of a plain HF model, found by its known attribute path."""
    for path in ("transformer.h", "model.layers", "bert.encoder.layer"):
        try:
            return oracle.get_submodule(path)
        except AttributeError:
            continue
    raise AssertionError(type(oracle).__name__)


def _eager(oracle, ids):
    """One unpadded prompt through the plain HF model: attentions and each layer's output."""
    outputs = []
    handles = [layer.register_forward_hook(lambda m, a, o: outputs.append(o[0] if isinstance(o, tuple) else o))
               for layer in _oracle_layers(oracle)]
    try:
        with torch.no_grad():
            attentions = oracle(input_ids=ids, output_attentions=True).attentions
    finally:
        for h in handles:
            h.remove()
    return [a[0].double() for a in attentions], [h[0].double() for h in outputs]  # (head, q, k), (pos, d)


@pytest.mark.parametrize("mode", ["exact", "stream"])
def test_describe_equals_eager_attention_and_hidden_states(tiny, mode):
    model, oracle = tiny
    if mode == "stream" and not model.is_causal:
        with pytest.raises(wb.WorkbenchError, match="mode='stream' needs a causal model"):
            wb.describe(model, PROMPTS, mode=mode)
        return
    window, floor, ratio = 3, 1e-4, 3.0  # low massive bars, so the random model has hits to compare
    desc = wb.describe(model, PROMPTS, batch_size=2, mode=mode, local_window=window, massive_abs=floor,
                       massive_ratio=ratio)
    assert desc.mode == mode and desc.n_prompts == len(PROMPTS)
    expected_hits = set()
    for pid, prompt in enumerate(PROMPTS):
        ids, _ = model.to_tokens(prompt)
        assert desc.token_ids[pid] == tuple(ids[0].tolist())
        attentions, hidden = _eager(oracle, ids)
        n = ids.shape[1]
        t = torch.arange(n, dtype=torch.float64)
        band = ((t[None, :] <= t[:, None]) & (t[None, :] > t[:, None] - window)).double()  # (query, key)
        for layer, a in enumerate(attentions):  # (head, query, key)
            fields = {
                "entropy": -torch.special.xlogy(a, a).sum(-1), "max_prob": a.max(-1).values,
                "sink_mass": a[..., 0], "local_mass": (a * band).sum(-1),
                "distance": (a * (t[:, None] - t[None, :]).abs()).sum(-1),
            }
            for i, name in enumerate(ROW_FIELDS):
                torch.testing.assert_close(desc.row_sums[pid, layer, :, i], fields[name].sum(-1), atol=1e-5, rtol=0)
            torch.testing.assert_close(desc.col_mass[pid][layer], a.sum(-2), atol=1e-5, rtol=0)
        for layer, h in enumerate(hidden):  # (pos, d_model)
            cos = torch.nn.functional.cosine_similarity(h, h[:1], dim=-1)
            torch.testing.assert_close(desc.first_cos[pid][layer], cos, atol=1e-5, rtol=0)
            mag = h.abs()
            hits = ((mag > floor) & (mag / mag.median() > ratio)).nonzero().tolist()
            expected_hits |= {(pid, layer, pos, dim) for pos, dim in hits}
    found = set(map(tuple, desc.massive[["prompt_id", "layer", "position", "dim"]].to_numpy().tolist()))
    assert expected_hits and found == expected_hits
    assert list(desc.to_frame().columns) == ["prompt_id", "layer", "head", "entropy", "max_prob", "sink_mass",
                                             "local_mass", "mean_distance", "n_queries"]


def test_auto_mode_streams_only_the_batches_past_the_limit(tiny):
    model, _ = tiny
    if not model.is_causal:  # encoders never stream: a batch past the limit is refused
        with pytest.raises(wb.WorkbenchError, match="use a smaller batch_size, or mode='stream'"):
            wb.describe(model, PROMPTS, batch_size=2, max_bytes=pattern_bytes(model, 2, 13) - 1)
        return
    exact = wb.describe(model, PROMPTS, batch_size=2, mode="exact")
    # batches (longest first): [12, 10] tokens, [8, 4], [4]: only the first passes this limit
    limit = pattern_bytes(model, 2, 12) - 1
    assert pattern_bytes(model, 2, 8) <= limit
    mixed = wb.describe(model, PROMPTS, batch_size=2, max_bytes=limit)
    assert mixed.mode == "exact+stream"
    streamed = wb.describe(model, PROMPTS, batch_size=2, mode="stream")
    for other in (mixed, streamed):
        torch.testing.assert_close(other.row_sums, exact.row_sums, atol=1e-5, rtol=0)
        for a, b in zip(other.col_mass, exact.col_mass):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
        for a, b in zip(other.first_cos, exact.first_cos):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_exact_batch_past_the_byte_limit_is_refused_naming_the_sizes(tiny):
    model, _ = tiny
    before = active_hook_count(model.bridge)
    longest = int(model.to_tokens(PROMPTS)[1].sum(-1).max())  # 12 tokens (13 with [CLS] ... [SEP])
    need = pattern_bytes(model, 2, longest)  # the first batch: the 2 longest prompts
    assert need == 2 * model.n_heads * longest * longest * 4 * model.n_layers
    message = (rf"exact patterns for 2 prompt\(s\) of {longest} tokens over {model.n_layers} layer\(s\) need .* GiB "
               rf"\({need} bytes; limit .* GiB = {need - 1} bytes\): use a smaller batch_size, or mode='stream'")
    with pytest.raises(wb.WorkbenchError, match=message):
        wb.describe(model, PROMPTS, batch_size=2, mode="exact", max_bytes=need - 1)
    assert active_hook_count(model.bridge) == before
    # the limit is per batch: one prompt a batch fits where two did not
    single = wb.describe(model, PROMPTS, batch_size=1, mode="exact", max_bytes=need - 1)
    assert single.mode == "exact"


def test_hooks_are_removed_when_a_reduction_raises(tiny, monkeypatch):
    model, _ = tiny
    before = active_hook_count(model.bridge)

    def boom(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(description, "_pattern_rows", boom)
    with pytest.raises(RuntimeError, match="boom"):
        wb.describe(model, PROMPTS, mode="exact")
    assert active_hook_count(model.bridge) == before


def _tables(model, prompts, capture=None):
    """Every descriptive table, from one capture (or each making its own when None)."""
    kw = {} if capture is None else {"capture": capture}
    return {
        "head_summary": wb.head_summary(model, prompts, **kw),
        "sink_scores": wb.sink_scores(model, prompts, **kw),
        "token_sinks": wb.token_sinks(model, prompts, **kw),
        "hidden_sinks": wb.hidden_sinks(model, prompts, min_queries=2, threshold=0.05, **kw),
        "secondary_sinks": wb.secondary_sinks(model, prompts, cos_threshold=0.3, **kw),
        "massive_activations": wb.massive_activations(model, prompts, abs_threshold=1e-4, ratio_threshold=3.0, **kw),
        "head_patterns": wb.head_patterns(model, prompts, **kw),
    }


def _assert_same_tables(shared, alone):
    """Equal to 1e-6, all but the UMAP coordinates: UMAP's optimisation is chaotic, so descriptors
    that differ by 1e-8 (another batching) give another map; the inputs it maps are compared."""
    for name, frame in alone.items():
        other = shared[name]
        if name == "head_patterns":
            frame, other = frame.drop(columns=["umap_x", "umap_y"]), other.drop(columns=["umap_x", "umap_y"])
        assert len(frame) > 0, name  # every table has rows to compare
        pd.testing.assert_frame_equal(other, frame, check_exact=False, atol=1e-6, rtol=0, obj=name)
        assert other.attrs == frame.attrs, name


def test_shared_capture_gives_the_same_tables_as_each_analysis_alone(tiny):
    model, _ = tiny
    desc = wb.describe(model, PROMPTS, batch_size=3, massive_abs=1e-4, massive_ratio=3.0)
    shared = _tables(model, PROMPTS, desc)
    alone = _tables(model, PROMPTS)  # each its own capture, in its own batches
    _assert_same_tables(shared, alone)
    assert _tables(model, None, desc)["sink_scores"].equals(shared["sink_scores"])  # prompts=None: the capture's


@pytest.mark.slow
def test_shared_capture_on_the_demo_gives_the_same_tables():
    model = wb.load_model("demo")
    prompts = wb.load_prompts(model=model)  # 20 prompts, 16 to 128 tokens
    desc = wb.describe(model, prompts, massive_abs=1e-4, massive_ratio=3.0)
    _assert_same_tables(_tables(model, prompts, desc), _tables(model, prompts))
    sinks = wb.sink_scores(model, prompts, capture=desc)
    assert sinks.attrs["bos"] is True and sinks.attrs["first_token"] == model.tokenizer.bos_token
    assert sinks.sink_score.max() > 0.3  # the organism's designed first-token sink


def test_analyze_makes_one_capture_for_every_descriptive_analysis(tiny, monkeypatch):
    model, _ = tiny
    calls = []
    real = description.describe

    def counting(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(sys.modules["workbench.analyze"], "describe", counting)
    names = [n for n, a in wb.ANALYZERS.items() if a.capture]
    assert set(names) >= {"head_summary", "sink_scores", "token_sinks", "secondary_sinks", "massive_activations",
                          "head_patterns"}
    with tempfile.TemporaryDirectory() as out:
        run = wb.analyze(model, PROMPTS, out=out, analyses=names, progress=False)
        assert len(calls) == 1
        alone = {"head_summary": wb.head_summary(model, PROMPTS), "sink_scores": wb.sink_scores(model, PROMPTS),
                 "token_sinks": wb.token_sinks(model, PROMPTS)}
        for name, frame in alone.items():
            stored = run.table(name)
            pd.testing.assert_frame_equal(stored, frame, check_exact=False, atol=1e-6, rtol=0, check_dtype=False)
            assert stored.attrs["capture"]["shared"] is True and stored.attrs["capture"]["mode"] == "exact"
            assert run.manifest["tables"][name]["capture_mode"] == "exact"


def test_a_capture_must_fit_the_model_and_prompts(tiny):
    model, _ = tiny
    desc = wb.describe(model, PROMPTS[:2])
    with pytest.raises(wb.WorkbenchError, match="capture must be a Description from wb.describe; got dict"):
        wb.sink_scores(model, PROMPTS[:2], capture={})
    with pytest.raises(wb.WorkbenchError, match=r"capture was made from 2 prompt\(s\); token_sinks got 3"):
        wb.token_sinks(model, PROMPTS[:3], capture=desc)
    with pytest.raises(wb.WorkbenchError, match="prompt 1 differs from the capture's prompt 1"):
        wb.head_summary(model, [PROMPTS[0], PROMPTS[2]], capture=desc)
    with pytest.raises(wb.WorkbenchError, match=r"capture kept massive activations with \|h\| > 100 and ratio > 1000; "
                                                r"massive_activations asks for \|h\| > 50"):
        wb.massive_activations(model, PROMPTS[:2], abs_threshold=50, capture=desc)
    assert wb.massive_activations(model, PROMPTS[:2], abs_threshold=500, capture=desc).empty  # stricter is fine
    other = wb.load_model("other", hf_model=tiny_models.hf_model("gpt2", seed=1), tokenizer=tiny_models.tokenizer("gpt2"))
    with pytest.raises(wb.WorkbenchError, match=rf"capture was made on '{model.name}' .*; sink_scores got 'other'"):
        wb.sink_scores(other, PROMPTS[:2], capture=desc)
    with pytest.raises(wb.WorkbenchError, match="sink_scores needs prompts or capture="):
        wb.sink_scores(model, None)
    for bad, message in ((dict(mode="fast"), r"unknown mode 'fast': expected one of \['auto', 'exact', 'stream'\]"),
                         (dict(batch_size=0), "batch_size must be a positive int; got 0"),
                         (dict(local_window=True), "local_window must be a positive int; got the bool True"),
                         (dict(massive_abs=float("nan")), "massive_abs must be a positive number; got nan"),
                         (dict(max_bytes=0), "max_bytes must be a positive int; got 0")):
        with pytest.raises(wb.WorkbenchError, match=message):
            wb.describe(model, PROMPTS, **bad)


def test_capture_columns_equal_exact_column_sums(tiny):
    model, _ = tiny
    cols = wb.capture_columns(model, PROMPTS, batch_size=2)
    desc = wb.describe(model, PROMPTS, mode="exact")
    expected = desc.column_frame()
    assert list(cols.columns) == list(expected.columns) == ["prompt_id", "layer", "head", "position", "col_mass"]
    pd.testing.assert_frame_equal(cols, expected, check_exact=False, atol=1e-5, rtol=0, check_dtype=False)


def _no_bos_tokenizer():
    """The tiny word-level tokenizer without its BOS template: position 0 is the first word."""
    tok = Tokenizer(models.WordLevel(tiny_models.VOCAB, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>",
                                   bos_token="<s>", eos_token="</s>")
    with tempfile.TemporaryDirectory() as tmp:
        fast.save_pretrained(tmp)
        return AutoTokenizer.from_pretrained(tmp)


def test_without_bos_the_first_token_is_position_zero():
    hf = tiny_models.hf_model("llama")
    oracle = tiny_models.hf_model("llama")  # the same seed: an independent copy
    model = wb.load_model("no-bos", hf_model=hf, tokenizer=_no_bos_tokenizer())
    prompts = ["w1 w2 w3 w4 w5", "w1 w9 w8"]
    assert model.to_str_tokens(prompts[0])[0] == "w1"
    frame = wb.sink_scores(model, prompts)
    assert frame.attrs["bos"] is False and frame.attrs["first_token"] == "w1"
    assert "adds no BOS" in frame.attrs["first_token_note"]
    expected = np.zeros((model.n_layers, model.n_heads))
    for prompt in prompts:
        ids, _ = model.to_tokens(prompt)
        with torch.no_grad():
            attentions = oracle(input_ids=ids, output_attentions=True).attentions
        expected += np.stack([a[0, :, :, 0].double().mean(-1).numpy() for a in attentions]) / len(prompts)
    np.testing.assert_allclose(frame.pivot(index="layer", columns="head", values="sink_score").to_numpy(),
                               expected, atol=1e-6)
    mixed = wb.token_sinks(model, ["w1 w2", "w3 w4"])
    assert mixed.attrs["first_token"] is None and mixed.attrs["first_tokens"] == ["w1", "w3"]
