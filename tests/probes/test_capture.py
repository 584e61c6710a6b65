"""Exact capture equals the model's own eager attention; hooks never outlive the capture."""

import pytest
import torch

import workbench as wb
from probes.hooks import active_hook_count, hook_names, record
from probes.plan import STREAM_FIELDS, plan
from tests.tiny_models import PROMPTS


def _eager_attentions(hf_model, ids, mask):
    with torch.no_grad():
        return hf_model(input_ids=ids, attention_mask=mask, output_attentions=True).attentions


def test_patterns_equal_eager_attention_per_prompt(tiny):
    model, oracle = tiny
    for prompt in PROMPTS:
        patterns = wb.capture_patterns(model, prompt)
        ids, mask = model.to_tokens(prompt)
        expected = _eager_attentions(oracle, ids, mask)
        assert sorted(patterns) == list(range(model.n_layers))
        for layer, pattern in patterns.items():
            assert pattern.shape == (1, model.n_heads, ids.shape[1], ids.shape[1])
            torch.testing.assert_close(pattern, expected[layer].float(), atol=1e-5, rtol=0)


def test_padded_batch_matches_unpadded_rows(tiny):
    """Right-padding changes nothing on the real rows and columns of each prompt."""
    model, _ = tiny
    batch = wb.capture_patterns(model, PROMPTS)
    for b, prompt in enumerate(PROMPTS):
        single = wb.capture_patterns(model, prompt)
        n = single[0].shape[-1]
        for layer in batch:
            torch.testing.assert_close(batch[layer][b, :, :n, :n], single[layer][0], atol=1e-5, rtol=0)


def test_minilm_patterns_equal_eager_attention(minilm):
    from transformers import BertForMaskedLM

    oracle = BertForMaskedLM.from_pretrained(minilm.meta["path"], attn_implementation="eager").eval()
    texts = ["The cat sat on the mat.", "Attention heads park their attention on separator tokens."]
    patterns = wb.capture_patterns(minilm, texts)
    ids, mask = minilm.to_tokens(texts)
    expected = _eager_attentions(oracle, ids, mask)
    assert len(patterns) == 6 and patterns[0].shape[1] == 12
    for layer in range(6):
        torch.testing.assert_close(patterns[layer], expected[layer], atol=1e-5, rtol=0)


def test_layers_subset_and_out_of_range(tiny):
    model, _ = tiny
    assert list(wb.capture_patterns(model, PROMPTS[0], layers=[1])) == [1]
    with pytest.raises(wb.WorkbenchError, match=r"layer 7 is out of range: .* has layers 0\.\.1"):
        wb.capture_patterns(model, PROMPTS[0], layers=[7])
    with pytest.raises(wb.WorkbenchError, match=r"head 4 is out of range"):
        model.check_head(4)


def test_hooks_removed_when_forward_raises(tiny):
    model, _ = tiny
    before = active_hook_count(model.bridge)
    bad = torch.tensor([[1, 2, 10_000]])  # out of the embedding's range: the forward raises
    with pytest.raises(IndexError):
        with record(model.bridge, "blocks.*.attn.hook_pattern") as store:
            assert active_hook_count(model.bridge) == before + model.n_layers
            model.bridge(bad)
    assert active_hook_count(model.bridge) == before
    assert store == {}


def test_hooks_removed_when_a_hook_raises(tiny):
    model, _ = tiny
    point = model.bridge.hook_dict["blocks.0.attn.hook_pattern"]
    before = active_hook_count(model.bridge)

    def boom(activation, hook):
        raise RuntimeError("boom")

    point.add_hook(boom)
    with pytest.raises(RuntimeError, match="boom"):
        with record(model.bridge, ["blocks.1.attn.hook_pattern", "blocks.0.attn.hook_z"]):
            model.bridge(model.to_tokens(PROMPTS[0])[0])
    # only the user's own hook is left
    assert active_hook_count(model.bridge) == before + 1
    point.remove_hooks()
    assert active_hook_count(model.bridge) == before


def test_record_any_hook_names(tiny):
    model, _ = tiny
    names = hook_names(model.bridge, ["blocks.*.hook_resid_post", "blocks.0.attn.hook_z"])
    assert set(names) == {"blocks.0.attn.hook_z", "blocks.0.hook_resid_post", "blocks.1.hook_resid_post"}
    ids, _ = model.to_tokens(PROMPTS[0])
    with record(model.bridge, names) as store:
        model.bridge(ids)
    assert set(store) == set(names)
    assert store["blocks.1.hook_resid_post"].shape[:2] == ids.shape
    with pytest.raises(wb.WorkbenchError, match="hook name 'blocks.9.nothing' matches no hook point"):
        hook_names(model.bridge, "blocks.9.nothing")


def test_plan_matches_what_capture_stores(tiny):
    model, _ = tiny
    report = plan(model, PROMPTS)
    patterns = wb.capture_patterns(model, PROMPTS)
    assert report.total_bytes == sum(p.numel() * p.element_size() for p in patterns.values())
    assert [row[1] for row in report.rows] == [tuple(p.shape) for p in patterns.values()]
    assert "total" in str(report) and len(report.to_frame()) == model.n_layers
    stream = plan(model, PROMPTS, mode="stream")
    ids, _ = model.to_tokens(PROMPTS)
    per_row = sum(STREAM_FIELDS.values())  # bytes a (prompt, head, query) row keeps
    assert stream.mode == "stream"
    assert stream.total_bytes == model.n_layers * ids.shape[0] * model.n_heads * ids.shape[1] * per_row
    with pytest.raises(wb.WorkbenchError, match="capture mode 'fast' is unknown"):
        plan(model, PROMPTS, mode="fast")


def test_oversized_capture_is_refused_with_advice(tiny):
    model, _ = tiny
    with pytest.raises(wb.WorkbenchError, match="use wb.capture_stats for long context"):
        wb.capture_patterns(model, PROMPTS, max_bytes=100)


def test_padded_batches_cover_every_prompt_once():
    from workbench.capture import padded_batches

    mask = torch.zeros(5, 9, dtype=torch.long)
    for row, n in enumerate([3, 9, 1, 7, 7]):
        mask[row, :n] = 1
    batches = list(padded_batches(mask, 2))
    assert batches == [([1, 3], 9), ([4, 0], 7), ([2], 1)]  # longest first, ties in order
    assert list(padded_batches(mask, 2, by_length=False)) == [([0, 1], 9), ([2, 3], 7), ([4], 7)]
    with pytest.raises(wb.WorkbenchError, match="batch_size must be a positive int; got 0"):
        list(padded_batches(mask, 0))
