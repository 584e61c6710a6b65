"""Streaming statistics equal the exact capture's; the model is restored afterwards."""

import pytest
import torch

import workbench as wb
from probes import streaming as streaming_mod
from probes.streaming import stream_capture, streaming
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
    real = streaming_mod.head_stats

    def spy(q, k, **kw):
        shapes.append((q.shape[1], k.shape[1]))
        return real(q, k, **kw)

    monkeypatch.setattr(streaming_mod, "head_stats", spy)
    wb.capture_stats(model, PROMPTS[:1])
    assert shapes == [(model.n_heads, model.n_kv_heads)] * model.n_layers


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
    with pytest.raises(wb.WorkbenchError, match="batch_size must be an int >= 1; got 0"):
        wb.capture_stats(model, PROMPTS, batch_size=0)
