"""The edge graph and its split forward: zero deltas leave the model as it is, the upstream nodes
add up to the residual stream, and a grouped-query model's key inputs are per query head
(checked against the model's own grouped projection, and gradients against finite differences)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import workbench as wb
from probes.hooks import attach
from tests import tiny_models
from workbench import edges
from workbench.errors import WorkbenchError


@pytest.fixture(scope="module")
def llama():
    """The tiny Llama (2 layers, 4 query heads, 2 KV heads) in float64, for tight comparisons."""
    model = tiny_models.hf_model("llama").double()
    return wb.load_model("tiny-llama64", hf_model=model, tokenizer=tiny_models.tokenizer("llama"))


@pytest.fixture(scope="module")
def gpt2():
    return wb.load_model("tiny-gpt2", hf_model=tiny_models.hf_model("gpt2"), tokenizer=tiny_models.tokenizer("gpt2"))


def zeros(ids, d_model, n_heads):
    def delta(site, layer, ups):
        b, p = ids.shape
        if site == "attn":
            return tuple(torch.zeros(b, p, n_heads, d_model, dtype=torch.float64) for _ in range(3))
        return torch.zeros(b, p, d_model, dtype=torch.float64)
    return delta


def test_graph_names_and_valid_edges_follow_the_computation_order():
    g = edges.Graph(n_layers=2, n_heads=2, n_kv_heads=1)
    assert g.upstream() == ["input", "a0.h0", "a0.h1", "m0", "a1.h0", "a1.h1", "m1"]
    assert g.downstream() == ["a0.h0<q>", "a0.h1<q>", "a0.h0<k>", "a0.h1<k>", "a0.h0<v>", "a0.h1<v>", "m0",
                              "a1.h0<q>", "a1.h1<q>", "a1.h0<k>", "a1.h1<k>", "a1.h0<v>", "a1.h1<v>", "m1", "logits"]
    valid = g.valid()
    up, down = g.upstream(), g.downstream()
    edge = {(up[i], down[j]) for i, j in zip(*np.nonzero(valid))}
    assert ("input", "a0.h1<k>") in edge and ("a0.h1", "m0") in edge and ("m0", "a1.h0<v>") in edge
    assert ("a1.h0", "m1") in edge and ("m1", "logits") in edge
    assert ("a0.h0", "a0.h1<q>") not in edge and ("m0", "m0") not in edge and ("a1.h0", "a1.h1<k>") not in edge
    # input feeds all 15 readers; each layer-0 head 9 (m0, 6 layer-1 inputs, m1, logits); m0 8;
    # each layer-1 head 2 (m1, logits); m1 1
    assert valid.sum() == 15 + 9 + 9 + 8 + 2 + 2 + 1 and valid.sum(0)[g.down_logits] == g.n_upstream
    assert [g.kv_group(h) for h in range(2)] == [0, 0]
    assert edges.Graph(1, 8, 2).kv_group(3) == 0 and edges.Graph(1, 8, 2).kv_group(4) == 1


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_zero_deltas_leave_the_logits_unchanged(kind, gpt2, llama):
    model = gpt2 if kind == "gpt2" else llama
    ids, _ = model.to_tokens(["w1 w2 w3 w4 w5 w6 w7", "w9 w8 w7 w6 w5 w4 w3"])
    with torch.no_grad():
        reference = model.hf_model(input_ids=ids).logits[:, -1]
        plain, ups = edges.run(model, ids)
        split, _ = edges.run(model, ids, delta=zeros(ids, ups.flat().shape[-1], model.n_heads))
    tol = 1e-5 if kind == "gpt2" else 1e-10
    assert (plain - reference).abs().max() < tol and (split - reference).abs().max() < tol
    assert ups.flat().shape == (2, ids.shape[1], edges.graph(model).n_upstream, ups.flat().shape[-1])
    # the split forward changed nothing on the model: GQA bookkeeping restored
    assert all(layer.self_attn.num_key_value_groups == 2 for layer in llama.hf_model.model.layers)


def test_upstream_nodes_add_up_to_the_final_residual(llama):
    """Llama has no biases: the residual entering the final norm is exactly the sum of the input,
    every head's W_O-projected output, and every MLP output."""
    ids, _ = llama.to_tokens(["w1 w2 w3 w4 w5 w6 w7"])
    seen = {}

    def grab(module, args):
        seen["resid"] = args[0].detach()

    with torch.no_grad(), attach(None, pre_hooks=[(llama.hf_model.model.norm, grab)]):
        _, ups = edges.run(llama, ids)
    assert torch.allclose(ups.flat().sum(2), seen["resid"], atol=1e-10)


def _k_proj_patch(model, layer, group, delta):
    """An independent edit of the grouped model: group ``group``'s key projection reads
    LN(x + delta) (the model's own k_proj, repeat_kv and attention)."""
    block = model.hf_model.model.layers[layer]
    state, dh = {}, model.d_head

    def grab(module, args):
        state["x"] = args[0]

    def replace(module, args, output):
        shifted = block.input_layernorm.forward(state["x"] + delta)
        new = output.clone()
        new[..., group * dh:(group + 1) * dh] = (shifted @ module.weight.T)[..., group * dh:(group + 1) * dh]
        return new

    return attach(None, pre_hooks=[(block.input_layernorm, grab)], post_hooks=[(block.self_attn.k_proj, replace)])


def test_a_kv_groups_key_input_is_its_query_heads_copies(llama):
    ids, _ = llama.to_tokens(["w1 w2 w3 w4 w5 w6 w7", "w3 w1 w4 w1 w5 w9 w2"])
    torch.manual_seed(0)
    b, p = ids.shape
    d = llama.hf_model.config.hidden_size
    shift = torch.randn(b, p, d, dtype=torch.float64)

    def on_heads(heads):
        def delta(site, layer, ups):
            if site != "attn" or layer != 1:
                return None
            dk = torch.zeros(b, p, llama.n_heads, d, dtype=torch.float64)
            dk[:, :, heads] = shift[:, :, None]
            return None, dk, None
        return delta

    with torch.no_grad():
        clean, ups = edges.run(llama, ids)
        both, _ = edges.run(llama, ids, delta=on_heads([0, 1]))  # heads 0 and 1 form KV group 0
        with _k_proj_patch(llama, 1, 0, shift):
            grouped = llama.hf_model(input_ids=ids).logits[:, -1]
        one, ups_one = edges.run(llama, ids, delta=on_heads([0]))
    assert (both - clean).abs().max() > 1e-3  # the shift matters ...
    assert (both - grouped).abs().max() < 1e-10  # ... and shifting both copies is the shared key input
    g = edges.graph(llama)
    heads = ups.flat()[:, :, g.up_head(1, 0):g.up_head(1, 1) + 1]
    heads_one = ups_one.flat()[:, :, g.up_head(1, 0):g.up_head(1, 1) + 1]
    assert (heads_one[:, :, 0] - heads[:, :, 0]).abs().max() > 1e-5  # head 0 reads its shifted key copy
    assert (heads_one[:, :, 1] - heads[:, :, 1]).abs().max() < 1e-12  # head 1 of the same group does not


def _leaf_grads(model, ids, answer: int = 10) -> dict:
    """∂ logit[answer] / ∂(every downstream node's input) from one split forward:
    ``{(site, layer): [batch, pos, nodes, d_model]}`` (attn: q heads, k heads, v heads)."""
    b, p = ids.shape
    d = model.hf_model.config.hidden_size
    leaves = {}

    def delta(site, layer, ups):
        n = 3 * model.n_heads if site == "attn" else 1
        leaves[(site, layer)] = leaf = torch.zeros(b, p, n, d, dtype=torch.float64, requires_grad=True)
        return tuple(leaf[:, :, i * model.n_heads:(i + 1) * model.n_heads] for i in range(3)) \
            if site == "attn" else leaf[:, :, 0]

    logits, _ = edges.run(model, ids, delta=delta, record=False)
    keys = list(leaves)
    return dict(zip(keys, torch.autograd.grad(logits[0, answer], [leaves[k] for k in keys])))


def test_input_gradients_match_finite_differences():
    """Every node's input gradient, along a random direction, is the central difference of the
    logit (GPT-2 in float64: its LayerNorm keeps the dtype, so the difference is exact enough)."""
    model = wb.load_model("tiny-gpt2-64", hf_model=tiny_models.hf_model("gpt2").double(),
                          tokenizer=tiny_models.tokenizer("gpt2"))
    ids, _ = model.to_tokens(["w1 w2 w3 w4 w5 w6 w7"])
    grads = _leaf_grads(model, ids)
    torch.manual_seed(1)
    eps = 1e-5
    for (site, layer), grad in grads.items():
        node = int(torch.randint(grad.shape[2], ()))
        direction = torch.randn(grad.shape[:2] + grad.shape[3:], dtype=torch.float64)  # (b, p, d)

        def logit(scale, site=site, layer=layer, node=node, direction=direction, shape=grad.shape):
            def delta(s, l, ups):
                if (s, l) != (site, layer):
                    return None
                out = torch.zeros(shape, dtype=torch.float64)
                out[:, :, node] = scale * direction
                return tuple(out[:, :, i * model.n_heads:(i + 1) * model.n_heads] for i in range(3)) \
                    if s == "attn" else out[:, :, 0]
            with torch.no_grad():
                return float(edges.run(model, ids, delta=delta)[0][0, 10])

        fd = (logit(eps) - logit(-eps)) / (2 * eps)
        assert float((grad[:, :, node] * direction).sum()) == pytest.approx(fd, rel=1e-6, abs=1e-10), (site, layer, node)


def _multi_head_twin(llama):
    """The equivalent multi-head Llama: each query head gets its own copy of its group's key and
    value weights (``repeat_kv`` order)."""
    from transformers import LlamaForCausalLM

    cfg = llama.hf_model.config.to_dict()
    cfg.update(num_key_value_heads=llama.n_heads)
    twin = LlamaForCausalLM(type(llama.hf_model.config)(**cfg)).double().eval()
    twin.set_attn_implementation("eager")
    state = llama.hf_model.state_dict()
    rep, dh = llama.n_heads // llama.n_kv_heads, llama.d_head
    for name, value in list(state.items()):
        if name.endswith(("k_proj.weight", "v_proj.weight")):
            state[name] = value.view(llama.n_kv_heads, dh, -1).repeat_interleave(rep, 0).reshape(-1, value.shape[-1])
    twin.load_state_dict(state)
    return wb.load_model("tiny-llama-mha", hf_model=twin, tokenizer=tiny_models.tokenizer("llama"))


def test_gqa_edges_are_those_of_the_equivalent_multi_head_model(llama):
    twin = _multi_head_twin(llama)
    assert twin.n_kv_heads == twin.n_heads == llama.n_heads
    ids, _ = llama.to_tokens(["w1 w2 w3 w4 w5 w6 w7", "w3 w1 w4 w1 w5 w9 w2"])
    with torch.no_grad():
        assert (twin.hf_model(input_ids=ids).logits - llama.hf_model(input_ids=ids).logits).abs().max() < 1e-10
        a, ups_a = edges.run(llama, ids)
        b, ups_b = edges.run(twin, ids)
    assert (ups_a.flat() - ups_b.flat()).abs().max() < 1e-10
    mine, theirs = _leaf_grads(llama, ids), _leaf_grads(twin, ids)
    assert mine.keys() == theirs.keys()
    for key in mine:  # q, k, v inputs of every head, every MLP input and the logits' input
        assert (mine[key] - theirs[key]).abs().max() <= 1e-6 * theirs[key].abs().max(), key
    # a key copy's gradient differs between heads of one group: they are separate nodes
    k = mine[("attn", 1)][:, :, llama.n_heads:2 * llama.n_heads]
    assert (k[:, :, 0] - k[:, :, 1]).abs().max() > 1e-6


def test_a_groups_shared_key_gradient_is_the_sum_over_its_query_heads(llama):
    ids, _ = llama.to_tokens(["w1 w2 w3 w4 w5 w6 w7"])
    b, p = ids.shape
    d = llama.hf_model.config.hidden_size
    k = _leaf_grads(llama, ids)[("attn", 1)][:, :, llama.n_heads:2 * llama.n_heads]  # (b, p, H, d)
    shared = torch.zeros(b, p, d, dtype=torch.float64, requires_grad=True)
    with _k_proj_patch(llama, 1, 1, shared):  # the grouped model's own k_proj, repeat_kv, attention
        logit = llama.hf_model(input_ids=ids).logits[0, -1, 10]
    grad, = torch.autograd.grad(logit, [shared])
    group_1 = [h for h in range(llama.n_heads) if edges.graph(llama).kv_group(h) == 1]
    assert group_1 == [2, 3]
    # Llama's RMSNorm computes in float32 whatever the model's dtype: agreement to ~1e-7 of the scale
    assert (k[:, :, group_1].sum(2) - grad).abs().max() < 1e-6 * grad.abs().max()


def test_unsupported_models_give_clear_errors(minilm):
    with pytest.raises(WorkbenchError, match="is an encoder"):
        edges.check_model(minilm)
