"""The computational graph of a causal LM at the level of edges, and a forward that can change
what one edge carries (Elhage et al. 2021's residual-stream view; Hanna et al. 2024's graph).

Nodes, named as in Hanna et al.'s ``eap`` code:

- upstream (what writes into the residual stream): ``input`` (the residual entering layer 0:
  token plus, for GPT-2, position embeddings), ``a{L}.h{H}`` (head H's output through its
  slice of the output projection, ``W_O[h] z_h``), ``m{L}`` (the MLP's output);
- downstream (what reads it): ``a{L}.h{H}<q>``, ``<k>``, ``<v>`` (the residual that head H's
  query, key and value are computed from), ``m{L}`` (the MLP's input), ``logits`` (the final
  residual).

An edge u → v is valid when u is computed before v reads (``input`` and every node of an
earlier layer feed a layer's heads; its own heads also feed its MLP). The residual a node reads
is the sum of all valid upstream outputs (plus constant biases, such as GPT-2's attention output
bias, which belong to no node and never differ between runs), so changing one edge means
adding ``δ_v = a_u' − a_u`` to node v's input only: the head's query (key, value) is then
``W_Q[h] · LN(x + δ)``, computed with the model's own LayerNorm and weights, while every other
reader of x sees it unchanged. `run` does this with hooks on the plain HF model
(`probes.hooks.attach`); ``δ`` = 0 leaves the logits exactly as they were.

Grouped-query attention (GQA/MQA): the key and value projections of a KV group are shared by
its ``n_heads / n_kv_heads`` query heads. The graph gives each query head its own key and
value inputs, as the model's own ``repeat_kv`` expansion does (the equivalent multi-head model,
TransformerLens' ``ungroup_grouped_query_attention``): ``a{L}.h{H}<k>`` is head H's copy of its
group's key input, computed with the group's weights. An edge into it changes only head H's
keys; the other heads of the group keep theirs. Gradient scores into the group's shared key
input are the sum of its query heads' scores (chain rule over the copies); the edge frame keeps
them per query head so that they can be ranked and cut one head at a time. While a split
forward runs, the attention modules of the (private) HF twin read ``num_key_value_groups = 1``;
it is restored on exit, also when the forward raises.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from probes.hooks import attach
from workbench.errors import WorkbenchError

#: Model types whose blocks are ``x + attn(LN1 x)`` then ``x + mlp(LN2 x)`` (pre-norm, sequential).
SUPPORTED = ("llama", "mistral", "qwen2", "qwen3", "gpt2")
KINDS = ("q", "k", "v")

#: ``delta(site, layer, ups)`` -> what to add to the inputs of that site's downstream nodes.
#: site ``"attn"``: ``(dq, dk, dv)``, each ``[batch, pos, n_heads, d_model]`` or None (or None
#: for all three), or one ``[batch, pos, d_model]`` shift for every head's q, k and v alike;
#: ``"mlp"`` and ``"logits"`` (layer None): ``[batch, pos, d_model]`` or None.
#: ``ups`` holds the upstream outputs computed so far in this forward (see `Ups`).
Delta = Callable[[str, "int | None", "Ups"], object]


# -- the graph ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Graph:
    """Node names and indices of a model's edge graph.

    Upstream order: ``input``, then per layer its heads ``a{L}.h0 … a{L}.h{H-1}`` and ``m{L}``.
    Downstream order: per layer the heads' ``<q>``, then ``<k>``, then ``<v>`` inputs and
    ``m{L}``; last ``logits``. Every downstream node reads a prefix of the upstream order.
    """

    n_layers: int
    n_heads: int
    n_kv_heads: int

    @property
    def n_upstream(self) -> int:
        return 1 + self.n_layers * (self.n_heads + 1)

    @property
    def n_downstream(self) -> int:
        return self.n_layers * (3 * self.n_heads + 1) + 1

    def up_head(self, layer: int, head: int) -> int:
        return 1 + layer * (self.n_heads + 1) + head

    def up_mlp(self, layer: int) -> int:
        return 1 + layer * (self.n_heads + 1) + self.n_heads

    def down_head(self, kind: str, layer: int, head: int) -> int:
        return layer * (3 * self.n_heads + 1) + KINDS.index(kind) * self.n_heads + head

    def down_mlp(self, layer: int) -> int:
        return layer * (3 * self.n_heads + 1) + 3 * self.n_heads

    @property
    def down_logits(self) -> int:
        return self.n_downstream - 1

    def prefix(self, site: str, layer: int | None = None) -> int:
        """How many upstream nodes feed the site (``"attn"``, ``"mlp"`` of ``layer``, ``"logits"``)."""
        if site == "attn":
            return self.up_head(layer, 0)  # input and every node of the layers below
        if site == "mlp":
            return self.up_mlp(layer)  # ... and the layer's own heads
        return self.n_upstream

    def upstream(self) -> list[str]:
        names = ["input"]
        for layer in range(self.n_layers):
            names += [f"a{layer}.h{h}" for h in range(self.n_heads)] + [f"m{layer}"]
        return names

    def downstream(self) -> list[str]:
        names = []
        for layer in range(self.n_layers):
            names += [f"a{layer}.h{h}<{k}>" for k in KINDS for h in range(self.n_heads)] + [f"m{layer}"]
        return names + ["logits"]

    def down_prefix(self) -> np.ndarray:
        """``[n_downstream]``: the number of upstream nodes each downstream node reads."""
        out = []
        for layer in range(self.n_layers):
            out += [self.prefix("attn", layer)] * (3 * self.n_heads) + [self.prefix("mlp", layer)]
        return np.asarray(out + [self.n_upstream])

    def valid(self) -> np.ndarray:
        """``[n_upstream, n_downstream]`` bool: which edges exist."""
        return np.arange(self.n_upstream)[:, None] < self.down_prefix()[None, :]

    def kv_group(self, head: int) -> int:
        """The KV group whose key and value weights query head ``head`` uses (``repeat_kv`` order)."""
        return head // (self.n_heads // self.n_kv_heads)


def graph(model) -> Graph:
    """The edge graph of a `ModelHandle`."""
    return Graph(model.n_layers, model.n_heads, model.n_kv_heads)


class Ups:
    """Upstream outputs in graph order as a forward computes them, written into one buffer
    ``[batch, pos, n_upstream, d_model]`` (detached: for reading, not for gradients)."""

    def __init__(self, n_total: int):
        self.n_total, self.count, self.buffer = n_total, 0, None

    def append(self, value: torch.Tensor) -> None:
        """Add the next node(s): ``[batch, pos, d]`` (input, an MLP) or ``[batch, pos, heads, d]``."""
        value = value.detach()
        if value.ndim == 3:
            value = value[:, :, None]  # (batch, pos, 1, d)
        if self.buffer is None:
            b, p, _, d = value.shape
            self.buffer = value.new_zeros(b, p, self.n_total, d)
        n = value.shape[2]
        self.buffer[:, :, self.count:self.count + n] = value
        self.count += n

    def flat(self, n: int | None = None) -> torch.Tensor:
        """The first ``n`` upstream nodes (default: all computed so far): ``[batch, pos, n, d_model]``."""
        return self.buffer[:, :, :self.count if n is None else n]


# -- the model's parts ----------------------------------------------------------------------------
@dataclass
class _Proj:
    """Per-head weights of one of q, k, v, as views of the model's own weights (no copies):
    ``weight [groups, d_head, d_model]`` with ``y_h = weight[h // rep] @ x_h + bias[h // rep]``
    (rep = query heads per group: 1 for q, ``n_heads / n_kv_heads`` for a GQA model's k and v), or
    for GPT-2's Conv1D ``weight [d_model, heads, d_head]`` with ``y_h = x_h @ weight[:, h]``."""

    weight: torch.Tensor
    bias: torch.Tensor | None   # (groups | heads, d_head)
    rep: int = 1
    conv: bool = False

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """``x [batch, pos, heads, d_model]`` (one input per query head) -> ``[batch, pos, heads, d_head]``."""
        b, p, h, d = x.shape
        w = self.weight.to(x.dtype)
        if self.conv:
            y = torch.einsum("bphd,dhe->bphe", x, w)
            return y if self.bias is None else y + self.bias
        g = h // self.rep
        y = torch.einsum("bpgrd,ged->bpgre", x.view(b, p, g, self.rep, d), w)  # (batch, pos, group, rep, d_head)
        if self.bias is not None:
            y = y + self.bias[:, None]
        return y.reshape(b, p, h, -1)


@dataclass
class _Block:
    module: torch.nn.Module     # the decoder block (block 0's input is the ``input`` node)
    ln1: torch.nn.Module
    attn: torch.nn.Module
    qkv: dict                   # {"q" | "k" | "v": module whose output is that projection} or {"qkv": c_attn}
    out: torch.nn.Module        # output projection; its input is z (batch, pos, heads * d_head)
    w_out: torch.Tensor         # (heads, d_model, d_head): head h writes w_out[h] @ z_h
    ln2: torch.nn.Module
    mlp: torch.nn.Module
    proj: dict                  # {"q" | "k" | "v": _Proj} (k, v of a GQA model: rep > 1)


def _linear(module, groups: int, d_head: int, rep: int = 1) -> _Proj:
    w = module.weight.view(groups, d_head, -1)  # (groups, d_head, d_model)
    return _Proj(w, None if module.bias is None else module.bias.view(groups, d_head), rep)


def _blocks(model) -> tuple[list[_Block], torch.nn.Module]:
    """The blocks and final norm of the handle's HF model, for the supported architectures."""
    hf = model.hf_model
    kind = getattr(hf.config, "model_type", None)
    if kind not in SUPPORTED:
        raise WorkbenchError(f"edge graphs support model types {list(SUPPORTED)} (pre-norm blocks); "
                             f"{model.name} is {kind!r}")
    H, Hkv, dh = model.n_heads, model.n_kv_heads, model.d_head
    blocks = []
    if kind == "gpt2":
        for b in hf.transformer.h:
            w, bias = b.attn.c_attn.weight, b.attn.c_attn.bias  # (d, 3d): x @ w, order [q | k | v]
            d = w.shape[0]
            proj = {k: _Proj(w[:, i * d:(i + 1) * d].view(d, H, dh), bias[i * d:(i + 1) * d].view(H, dh), conv=True)
                    for i, k in enumerate(KINDS)}
            w_out = b.attn.c_proj.weight.view(H, dh, d).transpose(1, 2)  # (heads, d, d_head)
            blocks.append(_Block(b, b.ln_1, b.attn, {"qkv": b.attn.c_attn}, b.attn.c_proj, w_out, b.ln_2, b.mlp, proj))
        return blocks, hf.transformer.ln_f
    for b in hf.model.layers:
        a = b.self_attn
        proj = {"q": _linear(a.q_proj, H, dh), "k": _linear(a.k_proj, Hkv, dh, H // Hkv),
                "v": _linear(a.v_proj, Hkv, dh, H // Hkv)}
        d = a.o_proj.weight.shape[0]
        w_out = a.o_proj.weight.view(d, H, dh).permute(1, 0, 2)  # (heads, d, d_head)
        blocks.append(_Block(b, b.input_layernorm, a, {"q": a.q_proj, "k": a.k_proj, "v": a.v_proj}, a.o_proj,
                             w_out, b.post_attention_layernorm, b.mlp, proj))
    return blocks, hf.model.norm


# -- the forward ----------------------------------------------------------------------------------
def run(model, ids: torch.Tensor, *, delta: Delta | None = None, input_value: torch.Tensor | None = None,
        record: bool = True) -> tuple[torch.Tensor, Ups]:
    """One forward of the handle's HF model with edge-level changes.

    Args:
        model: a causal `ModelHandle` of a supported architecture.
        ids: ``[batch, pos]`` token ids (no padding).
        delta: see `Delta`; None changes nothing.
        input_value: ``[batch, pos, d_model]`` to use as the ``input`` node instead of the
            embeddings (EAP-IG's interpolated inputs).
        record: keep the upstream outputs as they are computed (``delta`` reads them from its
            ``ups`` argument); False saves the copies (``ups`` is then None).
    Returns:
        ``(logits [batch, vocab] at the last position, ups)``.
    """
    blocks, final = _blocks(model)
    H, dh = model.n_heads, model.d_head
    gqa = model.n_kv_heads != model.n_heads
    ups = Ups(graph(model).n_upstream) if record else None
    x, split, groups = {}, {}, {}

    def block0(module, args):
        value = args[0] if input_value is None else input_value.to(args[0].dtype)
        if ups is not None:
            ups.append(value)
        return None if input_value is None else (value, *args[1:])

    def ln1(layer):
        def hook(module, args):
            x[layer] = args[0]  # (batch, pos, d): the residual the heads read
            deltas = delta("attn", layer, ups) if delta is not None else None
            if isinstance(deltas, torch.Tensor):  # one shift for every head's q, k and v: no split needed
                return (args[0] + deltas.to(args[0].dtype), *args[1:])
            if deltas is not None and any(d is not None for d in deltas):
                split[layer] = deltas
            return None
        return hook

    def attn_pre(layer):
        def hook(module, args):
            if layer in split and gqa:  # k, v arrive per query head: no repeat_kv
                groups[layer] = module.num_key_value_groups
                module.num_key_value_groups = 1
        return hook

    def attn_post(layer):
        def hook(module, args, output):
            if layer in groups:
                module.num_key_value_groups = groups.pop(layer)
        return hook

    def projected(layer, kind):
        b, xl, d = blocks[layer], x[layer], split[layer][KINDS.index(kind)]
        inp = xl[:, :, None, :].expand(*xl.shape[:2], H, xl.shape[-1])  # (batch, pos, heads, d)
        if d is not None:
            inp = inp + d.to(xl.dtype)
        y = b.proj[kind](b.ln1.forward(inp))  # the block's own norm, per head (forward: no hooks)
        return y.reshape(*y.shape[:2], H * dh)  # (batch, pos, heads * d_head)

    def proj_post(layer, kind):
        def hook(module, args, output):
            if layer not in split:
                return None
            if kind == "qkv":
                return torch.cat([projected(layer, k) for k in KINDS], dim=-1)
            return projected(layer, kind)
        return hook

    def out_pre(layer):
        def hook(module, args):
            split.pop(layer, None)
            if ups is not None:
                z = args[0].view(*args[0].shape[:2], H, dh)  # (batch, pos, heads, d_head)
                ups.append(torch.einsum("bphe,hde->bphd", z, blocks[layer].w_out.to(z.dtype)))  # (b, p, heads, d)
        return hook

    def ln2(layer):
        def hook(module, args):
            d = delta("mlp", layer, ups) if delta is not None else None
            return None if d is None else (args[0] + d.to(args[0].dtype), *args[1:])
        return hook

    def mlp_post(module, args, output):
        if ups is not None:
            ups.append(output)

    def final_pre(module, args):
        d = delta("logits", None, ups) if delta is not None else None
        return None if d is None else (args[0] + d.to(args[0].dtype), *args[1:])

    pre = [(blocks[0].module, block0), (final, final_pre)]
    post = []
    for layer, b in enumerate(blocks):
        pre += [(b.ln1, ln1(layer)), (b.attn, attn_pre(layer)), (b.out, out_pre(layer)), (b.ln2, ln2(layer))]
        post += [(m, proj_post(layer, k)) for k, m in b.qkv.items()] + [(b.attn, attn_post(layer)), (b.mlp, mlp_post)]
    saved = [b.attn.num_key_value_groups for b in blocks] if gqa else []
    try:
        with attach(None, pre_hooks=pre, post_hooks=post):
            logits = model.hf_model(input_ids=ids, use_cache=False, logits_to_keep=1).logits[:, -1]  # (batch, vocab)
    finally:
        for b, n in zip(blocks, saved):
            b.attn.num_key_value_groups = n
    return logits, ups


def check_model(model) -> Graph:
    """The graph of a causal handle of a supported architecture, else a clear error."""
    if not model.is_causal:
        raise WorkbenchError(f"edge circuits use the next-token logit difference; {model.name} is an encoder")
    _blocks(model)
    return graph(model)
