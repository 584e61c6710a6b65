"""Public capture entry points built on `probes` (exact mode)."""

from __future__ import annotations

from typing import Sequence

import torch

from probes.hooks import record
from workbench.errors import WorkbenchError
from workbench.types import Pattern

#: Refuse exact captures whose patterns alone exceed this; use the streaming statistics instead.
MAX_PATTERN_BYTES = 4 * 2**30


def run_bridge(model, ids: torch.Tensor, mask: torch.Tensor, **kwargs):
    """One forward through the bridge with padding mask (logits ``[batch, pos, vocab]``)."""
    if bool(mask.all()):
        return model.bridge(ids, **kwargs)
    return model.bridge(ids, attention_mask=mask, **kwargs)


def capture_patterns(
    model, prompts_or_token_ids, layers: Sequence[int] | None = None, *, max_bytes: int = MAX_PATTERN_BYTES
) -> dict[int, Pattern]:
    """Exact attention patterns from the bridge's ``blocks.{L}.attn.hook_pattern`` hooks.

    Args:
        model: a `ModelHandle` from `load_model`.
        prompts_or_token_ids: a string, a list of strings, or token ids ``[batch, pos]``.
            Prompts of unequal length are right-padded; rows and columns past a prompt's
            length are padding.
        layers: which layers (default: all).
        max_bytes: refuse captures whose patterns would exceed this (N² memory).
    Returns:
        ``{layer: Tensor[batch, head, query, key]}`` (float32 on the CPU), one query head per
        head (grouped-query models repeat their KV heads).
    Raises:
        WorkbenchError: empty prompts, a prompt longer than the context, a layer out of range,
            or a capture larger than ``max_bytes``.
    """
    ids, mask = model.to_tokens(prompts_or_token_ids)
    chosen = list(range(model.n_layers)) if layers is None else [model.check_layer(layer) for layer in layers]
    if not chosen:
        raise WorkbenchError("layers is empty: expected at least one layer index")
    batch, n = ids.shape
    need = batch * model.n_heads * n * n * 4 * len(chosen)
    if need > max_bytes:
        raise WorkbenchError(
            f"exact patterns for {batch} prompt(s) of {n} tokens over {len(chosen)} layer(s) need "
            f"{need / 2**30:.1f} GiB (limit {max_bytes / 2**30:.1f} GiB): use wb.capture_stats for long context"
        )
    return patterns_for_batch(model, ids, mask, chosen)


def patterns_for_batch(model, ids: torch.Tensor, mask: torch.Tensor, layers: Sequence[int]) -> dict[int, Pattern]:
    """Patterns of an already tokenized batch (``ids``/``mask`` from `ModelHandle.to_tokens`)."""
    names = [f"blocks.{layer}.attn.hook_pattern" for layer in layers]
    with torch.no_grad(), record(model.bridge, names, to_cpu=True) as store:
        run_bridge(model, ids, mask, return_type=None)
    return {layer: store[name].float() for layer, name in zip(layers, names)}
