"""Head edits: the one way the workbench changes what an attention head writes.

A head's output is ``z [batch, pos, head, d_head]``, its attention result before ``W_O``
(TransformerLens ``blocks.{L}.attn.hook_z``). Every edit is one rule,

    z' = base + ξ · (z − base),

with ξ a scale per head (optionally per batch row) and ``base`` what a removed head becomes:

- **zero** — base 0: ξ = 0 removes the head; a continuous ξ is Michel et al. 2019's head mask
  ("Are Sixteen Heads Really Better than One?"), differentiable, so ∂L/∂ξ is gradient importance
  and Captum can integrate over ξ;
- **mean** — base = the head's mean output over a reference distribution, ``[head, d_head]`` per
  layer, or per position ``[pos, head, d_head]`` for prompts that share a template (Wang et al.
  2022's mean ablation);
- **patch** — base = the head's output recorded on other inputs, ``[batch, pos, head, d_head]``
  (activation patching; resample ablation when the inputs are another draw of the task);
- **scale** — ξ alone (base 0), e.g. ξ = 2 doubles a head.

An edit attaches at the two places a `ModelHandle` runs heads: the bridge's ``hook_z`` (bridge
forwards) and a forward pre-hook on the plain HF model's attention output projection
(``ModelHandle.hf_model``: generation, patching, streaming). A forward passes through exactly one
of them, so ``site="both"`` (the default) edits whichever forward runs inside the block. Hooks
are attached by `probes.hooks.attach` and removed on exit, also when the forward raises.

    >>> with ablate_heads(model, [(1, 3), (2, 0)]):            # zero two heads
    ...     logits = model.hf_model(ids).logits
    >>> means = head_means(model, reference_prompts)
    >>> with ablate_heads(model, [(1, 3)], mode="mean", means=means):
    ...     logits = model.bridge(ids)
    >>> with head_mask(model, xi):                             # ξ [n_layers, n_heads], may require grad
    ...     loss = ...
"""

from __future__ import annotations

import operator
import re
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Mapping

import torch

from probes.hooks import attach
from workbench.checks import choice, positive_int
from workbench.errors import WorkbenchError

Head = tuple[int, int]
ABLATION_MODES = ("zero", "mean")
SITES = ("both", "bridge", "hf")

#: ``edit(layer, z) -> z' or None`` with ``z [batch, pos, head, d_head]``; None keeps z.
Edit = Callable[[int, torch.Tensor], "torch.Tensor | None"]


# -- shapes --------------------------------------------------------------------------------------
def _shape(model) -> tuple[int, int, int]:
    """``(n_layers, n_heads, d_head)`` of a `ModelHandle` or a plain HF model."""
    if hasattr(model, "n_layers"):
        return model.n_layers, model.n_heads, model.d_head
    cfg = model.config
    n_heads = cfg.num_attention_heads
    return cfg.num_hidden_layers, n_heads, getattr(cfg, "head_dim", None) or cfg.hidden_size // n_heads


def check_heads(model, heads) -> list[Head]:
    """Validate ``heads`` and return them as sorted unique ``(layer, head)`` int pairs.

    Args:
        model: a `ModelHandle` or a plain HF model.
        heads: ``(layer, head)`` pairs, or a frame with ``layer, head`` columns (only its rows with
            ``in_circuit`` / ``is_retrieval`` True when it has such a column).
    Raises:
        WorkbenchError: a pair that is not two ints, or a layer or head out of range.
    """
    import pandas as pd

    if isinstance(heads, pd.DataFrame):
        missing = {"layer", "head"} - set(heads.columns)
        if missing:
            raise WorkbenchError(f"a head frame needs columns 'layer' and 'head'; it has {list(heads.columns)}")
        for flag in ("in_circuit", "is_retrieval"):
            if flag in heads.columns:
                heads = heads[heads[flag].astype(bool)]
                break
        heads = list(zip(heads["layer"].astype(int), heads["head"].astype(int)))
    n_layers, n_heads, _ = _shape(model)
    pairs = []
    for item in heads:
        try:
            layer, head = (operator.index(v) for v in item)
        except (TypeError, ValueError):
            raise WorkbenchError(f"heads must be (layer, head) pairs of ints; got {item!r}") from None
        if not 0 <= layer < n_layers:
            raise WorkbenchError(f"layer {layer!r} is out of range: the model has layers 0..{n_layers - 1}")
        if not 0 <= head < n_heads:
            raise WorkbenchError(f"head {head!r} is out of range: the model has heads 0..{n_heads - 1}")
        pairs.append((int(layer), int(head)))
    return sorted(set(pairs))


def mask_without(model, heads: Iterable[Head]) -> torch.Tensor:
    """A head mask ξ ``[n_layers, n_heads]`` of ones with zeros at ``heads``."""
    n_layers, n_heads, _ = _shape(model)
    mask = torch.ones(n_layers, n_heads)
    for layer, head in check_heads(model, heads):
        mask[layer, head] = 0.0
    return mask


# -- the edit ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class HeadEdit:
    """``z' = base + scale · (z − base)`` for every layer's heads.

    Attributes:
        scale: ξ ``[n_layers, n_heads]`` (one for the batch) or ``[batch, n_layers, n_heads]``
            (one per batch row: several masks ride in one forward); may require grad.
        base: None (zero), or one tensor per layer broadcastable to ``z``: ``[n_layers, head,
            d_head]`` (mean), ``[n_layers, pos, head, d_head]`` (position-aware mean), or a
            mapping ``{layer: [batch | 1, pos, head, d_head]}`` (patch values; layers absent
            from it use base 0).
    """

    scale: torch.Tensor
    base: torch.Tensor | Mapping[int, torch.Tensor] | None = None

    def layer_base(self, layer: int, z: torch.Tensor) -> torch.Tensor | None:
        if self.base is None:
            return None
        if isinstance(self.base, Mapping):
            b = self.base.get(layer)
            if b is None:
                return None
        else:
            b = self.base[layer]
        b = b.to(z.device, z.dtype)
        while b.ndim < 4:  # (head, d) -> (1, 1, head, d); (pos, head, d) -> (1, pos, head, d)
            b = b[None]
        return b

    def __call__(self, layer: int, z: torch.Tensor) -> torch.Tensor | None:
        xi = self.scale[layer] if self.scale.ndim == 2 else self.scale[:, layer]  # (head,) | (batch, head)
        if not xi.requires_grad and bool((xi == 1).all()):
            return None  # z' = z: nothing to do in this layer
        base = self.layer_base(layer, z)
        xi = xi.to(z.device, z.dtype)
        xi = xi[None, None, :, None] if xi.ndim == 1 else xi[:, None, :, None]  # (batch | 1, 1, head, 1)
        if base is None:
            return z * xi
        return base + xi * (z - base)


def _check_scale(model, scale) -> torch.Tensor:
    n_layers, n_heads, _ = _shape(model)
    if not isinstance(scale, torch.Tensor):
        scale = torch.as_tensor(scale, dtype=torch.float32)
    if tuple(scale.shape[-2:]) != (n_layers, n_heads) or scale.ndim not in (2, 3):
        raise WorkbenchError(
            f"head mask must have shape [n_layers, n_heads] = {[n_layers, n_heads]} or "
            f"[batch, {n_layers}, {n_heads}]; got {list(scale.shape)}")
    return scale


def _check_means(model, means: torch.Tensor) -> torch.Tensor:
    n_layers, n_heads, d_head = _shape(model)
    shape = tuple(means.shape)
    if not (len(shape) in (3, 4) and shape[0] == n_layers and shape[-2:] == (n_heads, d_head)):
        raise WorkbenchError(
            f"means must have shape [n_layers, n_heads, d_head] = {[n_layers, n_heads, d_head]} or "
            f"[n_layers, pos, n_heads, d_head] (per position); got {list(shape)}")
    return means


# -- attaching -----------------------------------------------------------------------------------
# module-name suffixes of the per-layer attention output projection, after "<layer index>."
_OUT_PROJ = re.compile(r"(?:^|\.)(\d+)\.(?:self_attn\.o_proj|attn\.c_proj|attention\.output\.dense|"
                       r"self_attn\.out_proj|attn\.out_proj|attention\.dense)$")


def out_projections(model) -> dict[int, torch.nn.Module]:
    """``{layer: the module whose input is that layer's concatenated head outputs}`` of the plain
    HF model (``model.hf_model`` of a handle, or the HF model itself)."""
    hf = getattr(model, "hf_model", model)
    n_layers = _shape(model)[0]
    found: dict[int, torch.nn.Module] = {}
    for name, module in hf.named_modules():
        match = _OUT_PROJ.search(name)
        if match:
            found.setdefault(int(match.group(1)), module)
    if sorted(found) != list(range(n_layers)):
        raise WorkbenchError(
            f"cannot find one attention output projection per layer in {type(hf).__name__} "
            f"(found layers {sorted(found)} of {n_layers}); supported: Llama o_proj, GPT-2 "
            "attn.c_proj, BERT attention.output.dense")
    return found


@contextmanager
def edit_heads(model, edit: HeadEdit | Edit, *, site: str = "both") -> Iterator[None]:
    """Apply ``edit`` to every layer's head outputs in the forwards run inside the block.

    Args:
        model: a `ModelHandle`, or a plain HF model (``site="hf"`` only).
        edit: a `HeadEdit`, or ``fn(layer, z) -> z' | None`` (None keeps z) for edits that are
            not of that form (recording, gradients at z).
        site: ``"both"`` (default), ``"bridge"`` (``hook_z``) or ``"hf"`` (the HF model's output
            projection input).
    """
    choice("site", site, SITES)
    bridge = getattr(model, "bridge", None)
    if site in ("both", "bridge") and bridge is None:
        if site == "bridge":
            raise WorkbenchError("site='bridge' needs a ModelHandle (it has no bridge)")
        site = "hf"
    n_layers, n_heads, d_head = _shape(model)
    bridge_hooks, pre_hooks = {}, []
    if site in ("both", "bridge"):
        def on_z(layer: int):
            def hook(z, hook=None):  # noqa: ARG001 - TransformerLens passes the hook point
                new = edit(layer, z)
                return z if new is None else new
            return hook

        bridge_hooks = {f"blocks.{layer}.attn.hook_z": on_z(layer) for layer in range(n_layers)}
    if site in ("both", "hf"):
        def on_input(layer: int):
            def hook(module, args):  # noqa: ARG001
                flat = args[0]  # (batch, pos, head * d_head)
                new = edit(layer, flat.view(*flat.shape[:-1], n_heads, d_head))  # z: (batch, pos, head, d_head)
                return None if new is None else (new.reshape(flat.shape), *args[1:])
            return hook

        pre_hooks = [(module, on_input(layer)) for layer, module in out_projections(model).items()]
    with attach(bridge, bridge_hooks, pre_hooks=pre_hooks):
        yield


@contextmanager
def head_mask(model, mask: torch.Tensor, *, baseline: torch.Tensor | None = None,
              site: str = "both") -> Iterator[torch.Tensor]:
    """Multiply every head's output by ``mask[layer, head]`` inside the block (Michel et al. 2019).

    Args:
        mask: ξ, ``[n_layers, n_heads]`` or ``[batch, n_layers, n_heads]``; may require grad.
        baseline: optional ``[n_layers, n_heads, d_head]`` (or per position
            ``[n_layers, pos, n_heads, d_head]``) that a masked head moves to instead of zero:
            ``z' = b + ξ (z − b)`` (mean ablation with `head_means`).
        site: see `edit_heads`.
    Yields:
        The mask, as used.
    Raises:
        WorkbenchError: a mask or baseline of the wrong shape.
    """
    mask = _check_scale(model, mask)
    if baseline is not None:
        baseline = _check_means(model, baseline)
    with edit_heads(model, HeadEdit(mask, baseline), site=site):
        yield mask


@contextmanager
def ablate_heads(model, heads, mode: str = "zero", means: torch.Tensor | None = None, *,
                 site: str = "both") -> Iterator[None]:
    """Knock out ``heads`` during forwards inside the block (``wb.ablate``).

    Args:
        model: a `ModelHandle` (or a plain HF model with ``site="hf"``).
        heads: ``(layer, head)`` pairs, or a frame (see `check_heads`).
        mode: ``"zero"`` sets their output to zero (as Wu et al. mask retrieval heads);
            ``"mean"`` replaces it by ``means`` (less off-distribution: Wang et al. 2022).
        means: ``[n_layers, n_heads, d_head]`` or ``[n_layers, pos, n_heads, d_head]`` mean head
            outputs over a reference distribution (`head_means`), for ``mode="mean"``.
    Raises:
        WorkbenchError: unknown mode, ``mode="mean"`` without means, a head out of range.
    """
    choice("ablation mode", mode, ABLATION_MODES)
    if mode == "mean" and means is None:
        raise WorkbenchError('mode="mean" needs means= (per-head mean outputs from workbench.heads.head_means)')
    with head_mask(model, mask_without(model, heads), baseline=means if mode == "mean" else None, site=site):
        yield


@contextmanager
def patch_heads(model, heads, values: Mapping[int, torch.Tensor], *, site: str = "both") -> Iterator[None]:
    """Replace the output of ``heads`` by recorded ``values`` (activation patching).

    Args:
        heads: the heads to patch (pairs or a frame).
        values: ``{layer: [batch | 1, pos, n_heads, d_head]}`` outputs recorded on other inputs
            (`record_heads`), for at least the layers of ``heads``.
    """
    chosen = check_heads(model, heads)
    missing = sorted({layer for layer, _ in chosen} - set(values))
    if missing:
        raise WorkbenchError(f"patch values lack layer(s) {missing} of the heads to patch")
    with edit_heads(model, HeadEdit(mask_without(model, chosen), dict(values)), site=site):
        yield


# -- recording -----------------------------------------------------------------------------------
@torch.no_grad()
def record_heads(model, ids: torch.Tensor, *, attention_mask: torch.Tensor | None = None,
                 edit: HeadEdit | Edit | None = None) -> dict[int, torch.Tensor]:
    """Every layer's head outputs on one HF forward: ``{layer: [batch, pos, n_heads, d_head]}``.

    ``edit``, if given, is applied first (the recorded values are the edited ones).
    """
    store: dict[int, torch.Tensor] = {}

    def recorder(layer, z):
        if edit is not None:
            new = edit(layer, z)
            z = z if new is None else new
        store[layer] = z.detach().clone()
        return z if edit is not None else None

    with edit_heads(model, recorder, site="hf"):
        hf = getattr(model, "hf_model", model)
        hf(input_ids=ids, attention_mask=attention_mask)
    return store


@torch.no_grad()
def head_means(model, prompts, *, batch_size: int = 8, by_position: bool = False) -> torch.Tensor:
    """Mean output of every head over the real token positions of ``prompts`` (the reference
    distribution for mean ablation: never the prompts being scored).

    Args:
        prompts: strings or token ids.
        by_position: keep one mean per position (prompts sharing a template: Wang et al.'s
            position-aware means); positions past a shorter prompt's end average the prompts
            long enough to have them.
    Returns:
        ``[n_layers, n_heads, d_head]`` float32, or ``[n_layers, pos, n_heads, d_head]`` with
        ``by_position`` (pos = the longest prompt).
    """
    batch_size = positive_int("batch_size", batch_size)
    ids, mask = model.to_tokens(prompts)
    n_layers, n_heads, d_head = _shape(model)
    width = ids.shape[1]
    sums = torch.zeros(n_layers, width, n_heads, d_head, dtype=torch.float64)
    counts = torch.zeros(width, dtype=torch.float64)
    for start in range(0, ids.shape[0], batch_size):
        chunk, chunk_mask = ids[start:start + batch_size], mask[start:start + batch_size]
        n = int(chunk_mask.sum(-1).max())
        chunk, chunk_mask = chunk[:, :n], chunk_mask[:, :n]
        keep = chunk_mask.to(torch.float64).cpu()  # (batch, pos)
        zs = record_heads(model, chunk, attention_mask=None if bool(chunk_mask.all()) else chunk_mask)
        for layer, z in zs.items():
            sums[layer, :n] += (z.double().cpu() * keep[:, :, None, None]).sum(0)  # (pos, head, d_head)
        counts[:n] += keep.sum(0)
    if by_position:
        return (sums / counts.clamp(min=1)[None, :, None, None]).float()
    return (sums.sum(1) / counts.sum()).float()


@contextmanager
def hooks(model, fns: Mapping[str, Callable]) -> Iterator[None]:
    """Attach bridge hooks ``{hook name: fn}`` inside the block (`probes.hooks.attach` on
    ``model.bridge``)."""
    with attach(model.bridge, dict(fns)):
        yield
