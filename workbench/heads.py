"""Head masks: scale, zero or mean-replace the output of attention heads during a forward.

Every head's output passes through the bridge's ``blocks.{L}.attn.hook_z``
``[batch, pos, head, d_head]`` (the per-head attention result before ``W_O``). A mask
ξ ``[n_layers, n_heads]`` multiplies it there, as in Michel et al. 2019 ("Are Sixteen Heads
Really Better than One?"): ξ = 1 is the model, ξ_h = 0 removes head h, and because the product
is differentiable ∂L/∂ξ_h is the head's gradient importance and Captum can integrate over ξ.
With a ``baseline`` (per-head mean outputs, `head_means`) a masked head is replaced by its mean
instead of zero: z' = b + ξ (z − b). These act on bridge forwards.

`edit_heads` does the same job for forwards of the plain HF twin (``ModelHandle.hf_model``:
generation, greedy accuracy): a forward pre-hook on each layer's attention output projection
sees the concatenated head outputs ``z`` and may replace them.

    >>> with ablate_heads(model, [(1, 3), (2, 0)]):           # zero two heads
    ...     logits = model.bridge(ids)
    >>> means = head_means(model, prompts)
    >>> with ablate_heads(model, [(1, 3)], mode="mean", means=means):
    ...     logits = model.bridge(ids)
"""

from __future__ import annotations

import operator
import re
from contextlib import contextmanager
from typing import Callable, Iterable, Iterator, Mapping

import torch

from workbench.errors import WorkbenchError

Head = tuple[int, int]
ABLATION_MODES = ("zero", "mean")


@contextmanager
def hooks(model, fns: Mapping[str, Callable]) -> Iterator[None]:
    """Attach forward hooks ``{hook name: fn(activation, hook=None) -> activation | None}`` to the
    bridge inside the block; all are removed on exit, also when the forward raises."""
    added = []
    try:
        for name, fn in fns.items():
            if name not in model.bridge.hook_dict:
                raise WorkbenchError(f"hook name {name!r} is not a hook point of {model.name}")
            point = model.bridge.hook_dict[name]
            added.append((point, point.add_hook(fn)))
        yield
    finally:
        for point, handle in added:
            handle.hook.remove()
            point.fwd_hooks = [h for h in point.fwd_hooks if h is not handle]


def _check_mask(model, mask: torch.Tensor) -> torch.Tensor:
    shape = (model.n_layers, model.n_heads)
    if not isinstance(mask, torch.Tensor):
        mask = torch.as_tensor(mask, dtype=torch.float32)
    if tuple(mask.shape[-2:]) != shape or mask.ndim not in (2, 3):
        raise WorkbenchError(
            f"head mask must have shape [n_layers, n_heads] = {list(shape)} or [batch, {shape[0]}, {shape[1]}]; "
            f"got {list(mask.shape)}"
        )
    return mask


@contextmanager
def head_mask(model, mask: torch.Tensor, *, baseline: torch.Tensor | None = None) -> Iterator[torch.Tensor]:
    """Multiply every head's output by ``mask[layer, head]`` during forwards inside the block.

    Args:
        model: a `ModelHandle`.
        mask: ξ, ``[n_layers, n_heads]`` (one mask for the whole batch) or
            ``[batch, n_layers, n_heads]`` (one per batch row, e.g. per prompt or per
            integration step). It may require grad: the product is differentiable.
        baseline: optional per-head outputs ``[n_layers, n_heads, d_head]`` that a masked head
            moves to instead of zero (``z' = b + ξ (z − b)``; mean ablation with `head_means`).
    Yields:
        The mask, as used.
    Raises:
        WorkbenchError: a mask or baseline of the wrong shape.
    """
    mask = _check_mask(model, mask)
    if baseline is not None and tuple(baseline.shape) != (model.n_layers, model.n_heads, model.d_head):
        raise WorkbenchError(
            f"baseline must have shape [n_layers, n_heads, d_head] = "
            f"{[model.n_layers, model.n_heads, model.d_head]}; got {list(baseline.shape)}"
        )

    def make(layer: int):
        def hook(z, hook=None):  # noqa: ARG001 - TransformerLens passes the hook point
            xi = mask[layer] if mask.ndim == 2 else mask[:, layer]  # (head,) or (batch, head)
            xi = xi.to(z.dtype).to(z.device)
            xi = xi[None, None, :, None] if xi.ndim == 1 else xi[:, None, :, None]  # (batch|1, 1, head, 1)
            if baseline is None:
                return z * xi
            b = baseline[layer].to(z.dtype).to(z.device)[None, None]  # (1, 1, head, d_head)
            return b + xi * (z - b)

        return hook

    with hooks(model, {f"blocks.{layer}.attn.hook_z": make(layer) for layer in range(model.n_layers)}):
        yield mask


def check_heads(model, heads) -> list[Head]:
    """Validate ``heads`` (pairs ``(layer, head)``, or a frame with ``layer, head`` and optionally
    a boolean selection column) and return them as sorted unique int pairs."""
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
    pairs = []
    for item in heads:
        try:
            layer, head = (operator.index(v) for v in item)
        except (TypeError, ValueError):
            raise WorkbenchError(f"heads must be (layer, head) pairs of ints; got {item!r}") from None
        model.check_layer(layer)
        model.check_head(head)
        pairs.append((layer, head))
    return sorted(set(pairs))


def mask_without(model, heads: Iterable[Head]) -> torch.Tensor:
    """A head mask ``[n_layers, n_heads]`` of ones with zeros at ``heads``."""
    mask = torch.ones(model.n_layers, model.n_heads)
    for layer, head in check_heads(model, heads):
        mask[layer, head] = 0.0
    return mask


@contextmanager
def ablate_heads(model, heads: Iterable[Head], mode: str = "zero",
                 means: torch.Tensor | None = None) -> Iterator[None]:
    """Knock out ``heads`` (``(layer, head)`` pairs) during forwards inside the block.

    Args:
        model: a `ModelHandle`.
        heads: the heads to remove.
        mode: ``"zero"`` sets their output to zero; ``"mean"`` replaces it by ``means``
            (mean ablation, less off-distribution than zeroing: Wang et al. 2022).
        means: ``[n_layers, n_heads, d_head]`` mean head outputs, from `head_means`
            (required for ``mode="mean"``).
    Raises:
        WorkbenchError: unknown mode, ``mode="mean"`` without means, a head out of range.
    """
    if mode not in ABLATION_MODES:
        raise WorkbenchError(f"unknown ablation mode {mode!r}: expected one of {list(ABLATION_MODES)}")
    if mode == "mean" and means is None:
        raise WorkbenchError('mode="mean" needs means= (per-head mean outputs from workbench.heads.head_means)')
    mask = mask_without(model, heads)
    with head_mask(model, mask, baseline=means if mode == "mean" else None):
        yield


@torch.no_grad()
def head_means(model, prompts, *, batch_size: int = 8) -> torch.Tensor:
    """Mean output of every head over all real token positions of ``prompts``.

    Returns:
        ``[n_layers, n_heads, d_head]`` float32 (the baseline for mean ablation).
    """
    from workbench.capture import run_bridge

    ids, mask = model.to_tokens(prompts)
    sums = torch.zeros(model.n_layers, model.n_heads, model.d_head, dtype=torch.float64)
    count = 0

    def make(layer: int, keep: torch.Tensor):
        def hook(z, hook=None):  # noqa: ARG001
            sums[layer] += (z.double() * keep[:, :, None, None]).sum((0, 1)).cpu()  # (head, d_head)
        return hook

    for start in range(0, ids.shape[0], batch_size):
        chunk, chunk_mask = ids[start:start + batch_size], mask[start:start + batch_size]
        width = int(chunk_mask.sum(-1).max())
        chunk, chunk_mask = chunk[:, :width], chunk_mask[:, :width]
        keep = chunk_mask.to(torch.float64)  # (batch, pos)
        count += int(chunk_mask.sum())
        fns = {f"blocks.{layer}.attn.hook_z": make(layer, keep) for layer in range(model.n_layers)}
        with hooks(model, fns):
            run_bridge(model, chunk, chunk_mask, return_type=None)
    return (sums / count).float()


# -- the plain HF model (ModelHandle.hf_model): generation, accuracy, gradients --------------
# module-name suffixes of the per-layer attention output projection, after "<layer index>."
_OUT_PROJ = re.compile(r"(?:^|\.)(\d+)\.(?:self_attn\.o_proj|attn\.c_proj|attention\.output\.dense|"
                       r"self_attn\.out_proj|attn\.out_proj|attention\.dense)$")

#: ``edit(layer, z) -> z or None`` with ``z [batch, pos, head, d_head]``; None keeps z.
Edit = Callable[[int, torch.Tensor], "torch.Tensor | None"]


def out_projections(model) -> dict[int, torch.nn.Module]:
    """``{layer: the module whose input is that layer's concatenated head outputs}``."""
    found: dict[int, torch.nn.Module] = {}
    for name, module in model.hf_model.named_modules():
        match = _OUT_PROJ.search(name)
        if match:
            found.setdefault(int(match.group(1)), module)
    if sorted(found) != list(range(model.n_layers)):
        raise WorkbenchError(
            f"cannot find one attention output projection per layer in {model.name} "
            f"(found layers {sorted(found)} of {model.n_layers}); supported: Llama o_proj, GPT-2 "
            "attn.c_proj, BERT attention.output.dense"
        )
    return found


@contextmanager
def edit_heads(model, edit: Edit) -> Iterator[None]:
    """Run ``hf_model`` forwards inside the block with ``edit`` applied to every layer's ``z``.

    Hooks are removed on exit, also when the forward raises.
    """
    heads, d_head = model.n_heads, model.d_head

    def make_hook(layer: int):
        def hook(module, args):
            flat = args[0]  # (batch, pos, head * d_head)
            z = flat.view(*flat.shape[:-1], heads, d_head)  # (batch, pos, head, d_head)
            new = edit(layer, z)
            if new is None:
                return None
            return (new.reshape(flat.shape), *args[1:])
        return hook

    handles = []
    try:
        for layer, module in out_projections(model).items():
            handles.append(module.register_forward_pre_hook(make_hook(layer)))
        yield
    finally:
        for handle in handles:
            handle.remove()
