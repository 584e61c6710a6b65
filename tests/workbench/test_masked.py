"""Many head masks per forward (`workbench.masked`): prefix reuse gives the same ablation effects as
full forwards (to 1e-5), runs fewer layers, falls back to full forwards where it cannot apply, and
leaves the model as it was, also when a forward raises."""

from __future__ import annotations

import pytest
import torch

import workbench as wb
from probes.hooks import active_hook_count
from tests import tiny_models
from workbench.analyzers import importance as imp
from workbench.heads import head_means
from workbench.masked import first_edited_layer, masked_forward, supports_prefix
from workbench.models import data_dir

PROMPTS = tiny_models.PROMPTS


def _handle(kind: str):
    return wb.load_model(f"tiny-{kind}", hf_model=tiny_models.hf_model(kind), tokenizer=tiny_models.tokenizer(kind))


def _layers(model):
    hf = model.hf_model
    return hf.model.layers if hasattr(hf, "model") else hf.transformer.h


def _mixed_masks(model, seed: int = 0) -> torch.Tensor:
    """Single-head masks, masks starting in every layer, a random continuous mask, and all ones."""
    g = torch.Generator().manual_seed(seed)
    masks = [imp.single_head_masks(model)]
    for layer in range(model.n_layers):
        m = torch.ones(model.n_layers, model.n_heads)
        m[layer:] = torch.rand(model.n_layers - layer, model.n_heads, generator=g).round()
        m[layer, 0] = 0.0
        masks.append(m[None])
    masks.append(torch.rand(1, model.n_layers, model.n_heads, generator=g))
    return torch.cat(masks)


@pytest.mark.parametrize("kind", ("llama", "gpt2"))
@pytest.mark.parametrize("mean", (False, True))
def test_prefix_reuse_equals_full_forwards(kind, mean):
    model = _handle(kind)
    assert supports_prefix(model)
    ids, mask = model.to_tokens(PROMPTS)  # right-padded: the padding mask goes along
    masks = _mixed_masks(model)
    baseline = head_means(model, ["w40 w41 w42 w43 w44", "w50 w51 w52"]) if mean else None

    def reduce(logits):  # (rows, pos, vocab) -> (rows, pos)
        return logits.double().log_softmax(-1).max(-1).values

    with torch.no_grad():
        reused = masked_forward(model, ids, mask, masks, reduce, baseline=baseline)
        full = masked_forward(model, ids, mask, masks, reduce, baseline=baseline, reuse_prefix=False)
    assert reused.shape == (len(masks), len(PROMPTS), ids.shape[1])
    torch.testing.assert_close(reused, full, atol=1e-5, rtol=0)
    assert (reused[0] - reused[-2]).abs().max() > 1e-3  # the masks do change the outputs


@pytest.mark.parametrize("kind", ("llama", "gpt2"))
def test_ablation_importance_with_prefix_reuse_equals_full_forwards(kind):
    model = _handle(kind)
    reused = wb.head_importance(model, PROMPTS, method="ablation")
    full = wb.head_importance(model, PROMPTS, method="ablation", reuse_prefix=False)
    assert (full.raw.abs() > 1e-4).sum() >= 4  # the effects are not all zero
    assert (reused.raw - full.raw).abs().max() < 1e-5


def test_prefix_reuse_equals_full_forwards_on_the_demo():
    if not (data_dir() / "demo" / "config.json").exists():
        pytest.skip("data/demo is not there yet")
    model = wb.load_model("demo")
    prompts = wb.load_prompts(model=model)[:6]
    answers = imp.suite_answers(prompts)
    batches = imp._batches(model, prompts, 8, 0, answers)
    masks = imp.single_head_masks(model)
    with torch.no_grad():
        reused = imp._masked_totals(model, batches, masks)
        full = imp._masked_totals(model, batches, masks, reuse_prefix=False)
    effects = [(r[:-1] - r[-1]) / len(prompts) for r in (reused[0], full[0])]
    assert effects[1].abs().max() > 0.1  # nats: some demo heads matter
    torch.testing.assert_close(effects[0], effects[1], atol=1e-5, rtol=0)
    torch.testing.assert_close(reused[1], full[1])  # the same top-1 hits


def test_prefix_reuse_runs_only_the_layers_from_the_first_edited_one():
    model = _handle("llama")
    ids, mask = model.to_tokens(PROMPTS)
    rows = {0: 0, 1: 0}
    handles = [layer.register_forward_hook(
        lambda module, args, out, i=i: rows.__setitem__(i, rows[i] + (out[0] if isinstance(out, tuple) else out).shape[0]))
        for i, layer in enumerate(_layers(model))]
    masks = torch.ones(3, 2, 4)
    masks[0, 1, 0] = 0.0  # layer 1 only
    masks[1, 1, 2] = 0.0  # layer 1 only
    try:
        with torch.no_grad():
            masked_forward(model, ids, mask, masks, lambda logits: logits[:, -1])
    finally:
        for h in handles:
            h.remove()
    batch = len(PROMPTS)
    # one clean pass (every layer, also giving the all-ones mask), then layer 1 alone for the two masks
    assert rows == {0: batch, 1: 3 * batch}
    assert first_edited_layer(masks).tolist() == [1, 1, 2]


def test_encoders_fall_back_to_full_forwards():
    model = _handle("bert")
    assert not supports_prefix(model)
    ids, mask = model.to_tokens(PROMPTS)
    masks = imp.single_head_masks(model)
    with torch.no_grad():
        out = masked_forward(model, ids, mask, masks, lambda logits: logits.double().sum(-1))
        for j in (0, 5, len(masks) - 1):
            with wb.head_mask(model, masks[j], site="hf"):
                expected = model.hf_model(input_ids=ids, attention_mask=mask).logits.double().sum(-1)
            torch.testing.assert_close(out[j], expected, atol=1e-5, rtol=1e-6)  # SDPA vs eager: float rounding


def test_a_failing_forward_leaves_the_model_whole():
    model = _handle("llama")
    ids, mask = model.to_tokens(PROMPTS)
    layers = _layers(model)
    before = [id(m) for m in layers]
    hooks_before = active_hook_count(model.bridge)
    with torch.no_grad():
        clean = model.hf_model(input_ids=ids, attention_mask=mask).logits

    def boom(logits):
        raise RuntimeError("boom")

    masks = torch.ones(2, 2, 4)
    masks[0, 1, 1] = 0.0
    with pytest.raises(RuntimeError, match="boom"):
        masked_forward(model, ids, mask, masks, boom)
    assert [id(m) for m in _layers(model)] == before and len(_layers(model)) == 2
    assert all(not layer._forward_pre_hooks for layer in _layers(model))
    assert all(not p._forward_pre_hooks for p in wb.heads.out_projections(model).values())
    assert active_hook_count(model.bridge) == hooks_before
    with torch.no_grad():  # and it computes what it did before
        torch.testing.assert_close(model.hf_model(input_ids=ids, attention_mask=mask).logits, clean)
