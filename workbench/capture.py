"""Public capture entry points built on `probes` (exact mode)."""

from __future__ import annotations

from typing import Sequence

import torch

from probes.hooks import record
from workbench.checks import integer, positive_int
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


def capture_stats(model, prompts, *, batch_size: int = 4, sink_tokens: int = 1, window: int = 16,
                  backend: str = "auto", columns: bool = False):
    """Streaming capture: per-head statistics without any N×N tensor (long context).

    Args:
        model: a `ModelHandle`.
        prompts: strings or token ids, as for `capture_patterns`.
        batch_size: prompts per forward; prompts are batched with others of the same length.
        sink_tokens: sink_mass counts attention on keys ``[0, sink_tokens)`` (Gu et al.: 1).
        window: local_mass counts attention on the last ``window`` keys up to the query.
        backend: `kernels.head_stats` backend (``"auto"``: Triton on CUDA, else reference).
        columns: also return the attention each key receives.
    Returns:
        DataFrame ``prompt_id, layer, head, entropy, max_prob, sink_mass, local_mass, n_queries``
        (means over each prompt's real query rows); with ``columns=True`` a pair
        ``(that frame, column frame prompt_id, layer, head, position, col_mass)``.
    """
    import pandas as pd

    from probes.streaming import equal_length_batches, stream_capture

    ids, mask = model.to_tokens(prompts)
    batch_size = positive_int("batch_size", batch_size)
    sink_tokens, window = integer("sink_tokens", sink_tokens, low=0), integer("window", window, low=0)
    frames, cols = [], []
    for chosen, n in equal_length_batches(mask, batch_size):  # no padding anywhere
        cap = stream_capture(model, ids[chosen, :n], prompt_ids=chosen, sink_tokens=sink_tokens,
                             window=window, column_mass=columns, backend=backend)
        frames.append(cap.to_frame())
        if columns:
            cols.append(cap.column_frame())
    frame = pd.concat(frames, ignore_index=True).sort_values(["prompt_id", "layer", "head"], ignore_index=True)
    return (frame, pd.concat(cols, ignore_index=True)) if columns else frame
