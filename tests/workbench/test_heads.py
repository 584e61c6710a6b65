"""The one head-editing mechanism (`workbench.heads`) against independent weight surgery on a
copy of the model: zeroing, scaling and mean-replacing a head's output equal editing the
columns (and bias) of its output projection; patching, per-row masks, both hook sites, and
hooks that never leak."""

from __future__ import annotations

import copy

import pytest
import torch

import workbench as wb
from probes.hooks import active_hook_count
from tests import tiny_models
from workbench.heads import (HeadEdit, ablate_heads, edit_heads, head_mask, head_means, out_projections,
                             patch_heads, record_heads)

PROMPT = "w10 w11 w12 w13 w10 w11 w12 w13 w14"
OTHER = "w20 w21 w22 w23 w24 w25 w26 w27 w28"
HEAD = (1, 2)


@pytest.fixture(params=("gpt2", "llama"))
def causal(request):
    """(ModelHandle, an independent deep copy of the HF model, the architecture)."""
    hf = tiny_models.hf_model(request.param)
    oracle = copy.deepcopy(hf)
    model = wb.load_model(f"tiny-{request.param}", hf_model=hf, tokenizer=tiny_models.tokenizer(request.param))
    return model, oracle, request.param


def _surgery(oracle, kind: str, layer: int, head: int, d_head: int, *, factor: float = 0.0,
             add: torch.Tensor | None = None):
    """Scale head ``head``'s columns of layer ``layer``'s output projection by ``factor`` and add
    ``W_O[:, head] @ add`` to its bias: the weight-level twin of ``z' = add + factor (z - add)``."""
    oracle = copy.deepcopy(oracle)
    cols = slice(head * d_head, (head + 1) * d_head)
    with torch.no_grad():
        if kind == "gpt2":  # Conv1D: weight (in, out), y = x W + b
            proj = oracle.transformer.h[layer].attn.c_proj
            w_head = proj.weight[cols].clone()  # (d_head, out)
            proj.weight[cols] *= factor
            if add is not None:
                proj.bias += (1 - factor) * add @ w_head
        else:  # Linear without bias: weight (out, in)
            proj = oracle.model.layers[layer].self_attn.o_proj
            w_head = proj.weight[:, cols].clone()  # (out, d_head)
            proj.weight[:, cols] *= factor
            if add is not None:
                new = torch.nn.Linear(proj.in_features, proj.out_features, bias=True)
                new.weight.copy_(proj.weight)
                new.bias.copy_((1 - factor) * w_head @ add)
                oracle.model.layers[layer].self_attn.o_proj = new
    return oracle


def _logits(model_or_hf, ids):
    with torch.no_grad():
        return model_or_hf(input_ids=ids).logits


def test_zero_and_scale_equal_output_projection_surgery_on_both_sites(causal):
    model, oracle, kind = causal
    ids, _ = model.to_tokens(PROMPT)
    for factor in (0.0, 2.0):
        expected = _logits(_surgery(oracle, kind, *HEAD, model.d_head, factor=factor), ids)
        scale = torch.ones(model.n_layers, model.n_heads)
        scale[HEAD] = factor
        with head_mask(model, scale):
            hf = _logits(model.hf_model, ids)
            with torch.no_grad():
                bridge = model.bridge(ids)
        torch.testing.assert_close(hf, expected, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(bridge, expected, atol=1e-4, rtol=1e-4)
        assert not torch.allclose(expected, _logits(oracle, ids), atol=1e-3)  # the edit does something
    assert active_hook_count(model.bridge) == 0


def test_mean_ablation_equals_replacing_the_head_by_a_bias(causal):
    model, oracle, kind = causal
    ids, _ = model.to_tokens(PROMPT)
    means = head_means(model, [OTHER, "w30 w31 w32"])  # a reference distribution, not the scored prompt
    expected = _logits(_surgery(oracle, kind, *HEAD, model.d_head, add=means[HEAD].clone()), ids)
    with ablate_heads(model, [HEAD], mode="mean", means=means):
        got = _logits(model.hf_model, ids)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_head_means_equal_the_recorded_outputs_averaged_by_hand(causal):
    model = causal[0]
    prompts = [OTHER, "w30 w31 w32"]
    zs = [record_heads(model, model.to_tokens(p)[0]) for p in prompts]  # each {layer: (1, pos, head, d)}
    for layer in range(model.n_layers):
        flat = torch.cat([z[layer][0] for z in zs])  # (all positions, head, d)
        torch.testing.assert_close(head_means(model, prompts)[layer], flat.mean(0), atol=1e-5, rtol=1e-5)
        by_pos = head_means(model, prompts, by_position=True)[layer]  # (longest, head, d)
        n = zs[1][layer].shape[1]  # the short prompt's length
        torch.testing.assert_close(by_pos[:n], (zs[0][layer][0, :n] + zs[1][layer][0]) / 2, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(by_pos[n:], zs[0][layer][0, n:], atol=1e-5, rtol=1e-5)  # only the long prompt


def test_patching_own_values_is_identity_and_other_values_equal_mean_of_one_prompt(causal):
    model = causal[0]
    ids, _ = model.to_tokens(PROMPT)
    other, _ = model.to_tokens(OTHER)
    clean = _logits(model.hf_model, ids)
    with patch_heads(model, [HEAD, (0, 1)], record_heads(model, ids)):
        torch.testing.assert_close(_logits(model.hf_model, ids), clean, atol=1e-6, rtol=1e-6)
    values = record_heads(model, other)
    # a position-aware mean over one prompt is that prompt's values: both modes must agree
    means = torch.stack([values[layer][0] for layer in range(model.n_layers)])  # (layer, pos, head, d)
    with patch_heads(model, [HEAD], values):
        patched = _logits(model.hf_model, ids)
    with ablate_heads(model, [HEAD], mode="mean", means=means):
        meaned = _logits(model.hf_model, ids)
    torch.testing.assert_close(patched, meaned, atol=1e-6, rtol=1e-6)
    assert not torch.allclose(patched, clean, atol=1e-4)


def test_one_mask_per_batch_row_equals_one_forward_per_mask(causal):
    model = causal[0]
    ids, _ = model.to_tokens(PROMPT)
    masks = torch.ones(3, model.n_layers, model.n_heads)
    masks[1, 0, 0] = 0.0
    masks[2, 1, 3] = 0.5
    with head_mask(model, masks):
        stacked = _logits(model.hf_model, ids.repeat(3, 1))
    for row in range(3):
        with head_mask(model, masks[row]):
            torch.testing.assert_close(stacked[row], _logits(model.hf_model, ids)[0], atol=1e-5, rtol=1e-5)


def test_a_callable_edit_sees_every_layer_and_gradients_reach_the_mask(causal):
    model = causal[0]
    ids, _ = model.to_tokens(PROMPT)
    seen = []
    with edit_heads(model, lambda layer, z: seen.append((layer, tuple(z.shape))), site="hf"):
        _logits(model.hf_model, ids)
    assert [layer for layer, _ in seen] == list(range(model.n_layers))
    assert all(shape[2:] == (model.n_heads, model.d_head) for _, shape in seen)
    xi = torch.ones(model.n_layers, model.n_heads, requires_grad=True)
    with head_mask(model, xi, site="hf"):
        model.hf_model(input_ids=ids).logits.sum().backward()
    assert xi.grad is not None and xi.grad.abs().sum() > 0


def test_hooks_are_removed_when_a_forward_raises(causal):
    model = causal[0]
    ids, _ = model.to_tokens(PROMPT)

    def broken(layer, z):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        with edit_heads(model, broken):
            _logits(model.hf_model, ids)
    assert active_hook_count(model.bridge) == 0
    assert all(not m._forward_pre_hooks for m in out_projections(model).values())


def test_a_plain_hf_model_is_edited_without_a_handle(causal):
    model, oracle, kind = causal
    ids, _ = model.to_tokens(PROMPT)
    expected = _logits(_surgery(oracle, kind, *HEAD, model.d_head), ids)
    hf = copy.deepcopy(oracle)
    with ablate_heads(hf, [HEAD], site="hf"):
        torch.testing.assert_close(_logits(hf, ids), expected, atol=1e-5, rtol=1e-5)


def test_bad_edits_name_the_value(causal):
    model = causal[0]
    with pytest.raises(wb.WorkbenchError, match="head mask must have shape"):
        with head_mask(model, torch.ones(3, 4, 5, 6)):
            pass
    with pytest.raises(wb.WorkbenchError, match="means must have shape"):
        with ablate_heads(model, [HEAD], mode="mean", means=torch.zeros(2, 2)):
            pass
    with pytest.raises(wb.WorkbenchError, match="patch values lack layer"):
        with patch_heads(model, [HEAD], {0: torch.zeros(1)}):
            pass
    with pytest.raises(wb.WorkbenchError, match="unknown site"):
        with edit_heads(model, HeadEdit(torch.ones(model.n_layers, model.n_heads)), site="o_proj"):
            pass
    with pytest.raises(wb.WorkbenchError, match="layer 7 is out of range"):
        with ablate_heads(model, [(7, 0)]):
            pass
