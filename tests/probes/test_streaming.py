"""Streaming statistics equal the exact capture's; the model is restored afterwards."""

import threading

import pandas as pd
import pytest
import torch

import workbench as wb
from probes import streaming as streaming_mod
from kernels import WorkbenchError
from probes.streaming import stream_capture, streaming
from tests.kernels.helpers import assert_stats_close
from tests.tiny_models import PROMPTS


def _row_stats(p, window=16):
    """Independent statistics of one exact pattern [query, key] (real rows and keys only)."""
    p = p.double()
    n = p.shape[0]
    logs = torch.where(p > 0, p.log(), torch.zeros_like(p))
    q = torch.arange(n)[:, None]
    k = torch.arange(n)[None, :]
    local = ((k <= q) & (k > q - window)).double()
    return {
        "entropy": -(p * logs).sum(-1).mean(),
        "max_prob": p.max(-1).values.mean(),
        "sink_mass": p[:, 0].mean(),
        "local_mass": (p * local).sum(-1).mean(),
    }


@pytest.mark.parametrize("batch_size", [1, 3])
def test_stream_stats_equal_exact_capture(tiny, batch_size):
    model, _ = tiny
    prompts = PROMPTS + ["w20 w21 w22", "w30 w31 w32 w33 w34 w35 w36"]  # two pairs of equal length
    frame = wb.capture_stats(model, prompts, batch_size=batch_size)
    cols = wb.capture_columns(model, prompts, batch_size=batch_size)
    assert sorted(frame.prompt_id.unique()) == list(range(len(prompts)))
    patterns = wb.capture_patterns(model, prompts)
    assert len(frame) == len(prompts) * model.n_layers * model.n_heads
    for row in frame.itertuples():
        n = row.n_queries
        expected = _row_stats(patterns[row.layer][row.prompt_id, row.head, :n, :n])
        for field, value in expected.items():
            assert abs(getattr(row, field) - float(value)) < 1e-4, (field, row)
    for (pid, layer, head), group in cols.groupby(["prompt_id", "layer", "head"]):
        n = len(group)
        exact = patterns[layer][pid, head, :n, :n].sum(0)
        torch.testing.assert_close(torch.tensor(group.col_mass.values), exact, atol=1e-4, rtol=0)


def test_attention_function_sees_unexpanded_gqa_keys(tiny, monkeypatch):
    model, _ = tiny
    shapes = []
    real_attention, real_stats = streaming_mod.attention_stats, streaming_mod.head_stats

    def spy_attention(q, k, v, **kw):
        shapes.append(("attention_stats", q.shape[1], k.shape[1], v.shape[1]))
        return real_attention(q, k, v, **kw)

    def spy_stats(q, k, **kw):
        shapes.append(("head_stats", q.shape[1], k.shape[1], k.shape[1]))
        return real_stats(q, k, **kw)

    monkeypatch.setattr(streaming_mod, "attention_stats", spy_attention)
    monkeypatch.setattr(streaming_mod, "head_stats", spy_stats)
    wb.capture_stats(model, PROMPTS[:1])  # one prompt, no padding: the combined route
    assert shapes == [("attention_stats", model.n_heads, model.n_kv_heads, model.n_kv_heads)] * model.n_layers
    shapes.clear()
    wb.capture_stats(model, PROMPTS[:1], backend="eager")  # no combined route: statistics, then SDPA
    assert shapes == [("head_stats", model.n_heads, model.n_kv_heads, model.n_kv_heads)] * model.n_layers


def test_combined_route_equals_statistics_then_sdpa(tiny):
    """The flash route (output and statistics from one attention) against head_stats + SDPA."""
    model, _ = tiny
    ids, _ = model.to_tokens(PROMPTS[2])
    with torch.no_grad():
        with streaming(model, window=4) as fast:
            logits_fast = model.hf_model(input_ids=ids).logits
        with streaming(model, window=4, backend="eager") as slow:
            logits_slow = model.hf_model(input_ids=ids).logits
    torch.testing.assert_close(logits_fast, logits_slow, atol=1e-5, rtol=0)
    assert len(fast) == len(slow) == model.n_layers
    for a, b in zip(fast, slow):
        assert_stats_close(a, b, atol=1e-5, rtol=1e-5)


def test_argmax_only_when_asked(tiny):
    model, _ = tiny
    ids, _ = model.to_tokens(PROMPTS[0])
    assert stream_capture(model, ids).stats[0].argmax is None  # the frames never read it
    with torch.no_grad(), streaming(model, column_mass=False) as stats:  # retrieval's call: argmax kept
        model.hf_model(input_ids=ids)
    assert stats[0].argmax is not None and stats[0].col_mass is None
    exact = wb.capture_patterns(model, ids)[0]  # (batch, head, query, key)
    assert torch.equal(stats[0].argmax, exact.argmax(-1))


def test_two_captures_on_two_threads_keep_their_own_statistics(tiny, monkeypatch):
    """Two threads capture the same model at once, in lockstep layer by layer; each gets its own."""
    model, _ = tiny
    ids = {"a": model.to_tokens(PROMPTS[0])[0], "b": model.to_tokens(PROMPTS[2])[0]}
    want = {name: stream_capture(model, x).to_frame() for name, x in ids.items()}
    barrier = threading.Barrier(2, timeout=60)
    real = streaming_mod.attention_stats

    def lockstep(*args, **kw):
        barrier.wait()  # both threads are inside the same layer's attention before either goes on
        return real(*args, **kw)

    monkeypatch.setattr(streaming_mod, "attention_stats", lockstep)
    got, errors = {}, []

    def work(name):
        try:
            got[name] = stream_capture(model, ids[name]).to_frame()
        except Exception as exc:  # reported below, with the thread's name
            errors.append((name, exc))
            barrier.abort()

    threads = [threading.Thread(target=work, args=(name,)) for name in ids]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    for name in ids:
        pd.testing.assert_frame_equal(got[name], want[name], check_exact=False, rtol=1e-6, atol=1e-7)
    assert model.hf_model.config._attn_implementation == "eager"


def test_nan_in_the_model_is_one_clear_error_and_leaves_it_restored(tiny):
    model, _ = tiny
    ids, _ = model.to_tokens(PROMPTS[0])
    embed = model.hf_model.get_input_embeddings().weight
    saved = embed.detach().clone()
    try:
        with torch.no_grad():
            embed[ids[0, 1]] = float("nan")  # a NaN token embedding: that row's q is NaN in layer 0
        with pytest.raises(wb.WorkbenchError, match=r"q has \d+ non-finite value\(s\)"):
            stream_capture(model, ids)
    finally:
        with torch.no_grad():
            embed.copy_(saved)
    assert model.hf_model.config._attn_implementation == "eager"
    assert len(stream_capture(model, ids).to_frame()) == model.n_layers * model.n_heads


def test_implementation_restored_after_an_error(tiny):
    model, _ = tiny
    before = model.hf_model.config._attn_implementation
    with pytest.raises(IndexError):
        with streaming(model):
            model.hf_model(input_ids=torch.tensor([[1, 10_000]]))
    assert model.hf_model.config._attn_implementation == before == "eager"
    ids, _ = model.to_tokens(PROMPTS[0])
    cap = stream_capture(model, ids, column_mass=False)
    assert cap.stats[0].col_mass is None and len(cap.to_frame()) == model.n_layers * model.n_heads
    with pytest.raises(WorkbenchError, match="this capture has no column mass: run it with column_mass=True"):
        cap.column_frame()


def test_stream_outputs_match_the_model(tiny):
    """The SDPA output path leaves the model's logits unchanged."""
    model, _ = tiny
    ids, mask = model.to_tokens(PROMPTS)
    with torch.no_grad():
        plain = model.hf_model(input_ids=ids, attention_mask=mask).logits
        with streaming(model, key_padding_mask=mask.bool()):
            streamed = model.hf_model(input_ids=ids, attention_mask=mask).logits
    real = mask.bool()
    torch.testing.assert_close(streamed[real], plain[real], atol=1e-5, rtol=0)


def test_bad_batch_size(tiny):
    model, _ = tiny
    with pytest.raises(wb.WorkbenchError, match="batch_size must be a positive int; got 0"):
        wb.capture_stats(model, PROMPTS, batch_size=0)
