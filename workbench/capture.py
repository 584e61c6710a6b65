"""Public capture entry points built on `probes`: exact patterns from the bridge's hooks, and
streaming per-head statistics (row means with `capture_stats`, column sums with `capture_columns`)
that never hold an N×N tensor."""

from __future__ import annotations

from typing import Iterator, Sequence

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


def padded_batches(mask: torch.Tensor, batch_size: int, *, by_length: bool = True) -> Iterator[tuple[list[int], int]]:
    """Cut a right-padded batch into forwards of at most ``batch_size`` rows.

    Args:
        mask: ``[batch, pos]`` attention mask from `ModelHandle.to_tokens` (1 = real token).
        batch_size: rows per forward.
        by_length: order rows by length first (longest first), so each forward pads little;
            False keeps the prompts' order.
    Yields:
        ``(row indices, width)``: run ``ids[rows, :width]`` with ``mask[rows, :width]``; width is
        the longest real length among the rows.
    """
    batch_size = positive_int("batch_size", batch_size)
    lengths = mask.sum(-1).cpu()
    order = (torch.argsort(lengths, descending=True, stable=True) if by_length else torch.arange(len(lengths))).tolist()
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        yield rows, int(lengths[rows].max())


def pattern_bytes(model, batch: int, n: int, n_layers: int | None = None) -> int:
    """Bytes of the float32 patterns ``[batch, head, n, n]`` of ``n_layers`` layers (default all)."""
    return batch * model.n_heads * n * n * 4 * (model.n_layers if n_layers is None else n_layers)


def check_pattern_bytes(model, batch: int, n: int, n_layers: int, max_bytes: int, *, advice: str) -> None:
    """Refuse an exact capture whose patterns would exceed ``max_bytes`` (the message names the sizes)."""
    need = pattern_bytes(model, batch, n, n_layers)
    if need > max_bytes:
        raise WorkbenchError(
            f"exact patterns for {batch} prompt(s) of {n} tokens over {n_layers} layer(s) need "
            f"{need / 2**30:.3g} GiB ({need} bytes; limit {max_bytes / 2**30:.3g} GiB = {max_bytes} bytes): {advice}"
        )


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
    check_pattern_bytes(model, *ids.shape, len(chosen), max_bytes, advice="use wb.capture_stats for long context")
    return patterns_for_batch(model, ids, mask, chosen)


def patterns_for_batch(model, ids: torch.Tensor, mask: torch.Tensor, layers: Sequence[int]) -> dict[int, Pattern]:
    """Patterns of an already tokenized batch (``ids``/``mask`` from `ModelHandle.to_tokens`)."""
    names = [f"blocks.{layer}.attn.hook_pattern" for layer in layers]
    with torch.no_grad(), record(model.bridge, names, to_cpu=True) as store:
        run_bridge(model, ids, mask, return_type=None)
    return {layer: store[name].float() for layer, name in zip(layers, names)}


def _stream_batches(model, prompts, *, batch_size: int, sink_tokens: int, window: int, backend: str,
                    column_mass: bool):
    """Streaming captures of ``prompts`` in batches of equal length (no padding anywhere)."""
    from probes.streaming import equal_length_batches, stream_capture

    ids, mask = model.to_tokens(prompts)
    batch_size = positive_int("batch_size", batch_size)
    sink_tokens = integer("sink_tokens", sink_tokens, low=0)
    window = integer("window", window, low=0)
    for chosen, n in equal_length_batches(mask, batch_size):
        yield stream_capture(model, ids[chosen, :n], prompt_ids=chosen, sink_tokens=sink_tokens, window=window,
                             column_mass=column_mass, backend=backend)


def capture_stats(model, prompts, *, batch_size: int = 4, sink_tokens: int = 1, window: int = 16,
                  backend: str = "auto"):
    """Streaming capture: per-head row statistics without any N×N tensor (long context).

    Args:
        model: a `ModelHandle`.
        prompts: strings or token ids, as for `capture_patterns`.
        batch_size: prompts per forward; prompts are batched with others of the same length.
        sink_tokens: sink_mass counts attention on keys ``[0, sink_tokens)`` (Gu et al.: 1).
        window: local_mass counts attention on the last ``window`` keys up to the query.
        backend: `kernels.head_stats` backend (``"auto"``: Triton on CUDA; on CPU the compiled
            ``"native"`` loop, or the chunked ``"reference"`` where no C compiler builds it).
    Returns:
        DataFrame ``prompt_id, layer, head, entropy, max_prob, sink_mass, local_mass, n_queries``
        (means over each prompt's real query rows). The attention each key receives is
        `capture_columns`.
    """
    import pandas as pd

    frames = [cap.to_frame() for cap in _stream_batches(model, prompts, batch_size=batch_size, sink_tokens=sink_tokens,
                                                         window=window, backend=backend, column_mass=False)]
    return pd.concat(frames, ignore_index=True).sort_values(["prompt_id", "layer", "head"], ignore_index=True)


def capture_columns(model, prompts, *, batch_size: int = 4, backend: str = "auto"):
    """Streaming capture of the attention every key receives, Σ_t A[t, k] over the prompt's
    queries, without any N×N tensor (long context).

    Args:
        model, prompts, batch_size, backend: as for `capture_stats`.
    Returns:
        DataFrame ``prompt_id, layer, head, position, col_mass``: one row per key position of
        each prompt (position is the key's 0-based index; the same columns as
        `Description.column_frame`).
    """
    import pandas as pd

    # sink_tokens = window = 0: only the column sums are read, so the sink and local bands are skipped
    frames = [cap.column_frame() for cap in _stream_batches(model, prompts, batch_size=batch_size, sink_tokens=0,
                                                             window=0, backend=backend, column_mass=True)]
    return pd.concat(frames, ignore_index=True).sort_values(["prompt_id", "layer", "head", "position"],
                                                            ignore_index=True)
