"""Streaming capture: per-head statistics from the query and key the model really uses.

A custom attention function is registered with ``transformers.AttentionInterface``. While a
capture is active the HF model runs with it: each call receives the layer's query
``[B, Hq, N, d]`` and key ``[B, Hkv, M, d]`` after RoPE and before GQA expansion, hands them to
`kernels.head_stats`, keeps the statistics, and then computes the layer's output with SDPA.
No N×N tensor exists at any point: prompts run in batches of equal length, so there is no
padding mask, and SDPA applies causality through ``is_causal``.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import pandas as pd
import torch

from kernels import HeadStats, head_stats

IMPLEMENTATION = "workbench_stream"
_ACTIVE: list["_Recorder"] = []  # the recorder of the capture in progress (one at a time)


@dataclass
class _Recorder:
    causal: bool
    key_padding_mask: torch.Tensor | None
    options: dict
    stats: list[HeadStats]


def _stream_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """The registered attention function: statistics first, then SDPA for the output."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if _ACTIVE:
        rec = _ACTIVE[-1]
        with torch.no_grad():
            stats = head_stats(
                query.detach(), key.detach(), causal=rec.causal, scale=scaling,
                key_padding_mask=rec.key_padding_mask, **rec.options,
            )
        rec.stats.append(stats.to("cpu"))
    return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(IMPLEMENTATION, _stream_attention)
    AttentionMaskInterface.register(IMPLEMENTATION, sdpa_mask)


@contextmanager
def streaming(model, *, key_padding_mask: torch.Tensor | None = None, sink_tokens: int = 1, window: int = 16,
              column_mass: bool = True, backend: str = "auto") -> Iterator[list[HeadStats]]:
    """Run the model's forwards inside this block with the streaming attention function.

    Yields a list that receives one `HeadStats` per attention call, in layer order. The
    model's attention implementation is restored on exit, also when the forward raises.
    """
    _register()
    config = model.hf_model.config
    previous = config._attn_implementation
    rec = _Recorder(model.is_causal, key_padding_mask,
                    dict(sink_tokens=sink_tokens, window=window, column_mass=column_mass, backend=backend), [])
    _ACTIVE.append(rec)
    try:
        model.hf_model.set_attn_implementation(IMPLEMENTATION)
        yield rec.stats
    finally:
        _ACTIVE.remove(rec)
        model.hf_model.set_attn_implementation(previous)


@dataclass(frozen=True)
class StreamCapture:
    """Per-layer statistics of a batch of equal-length prompts from one streaming forward.

    Attributes:
        stats: ``{layer: HeadStats}`` with row tensors ``[batch, head, query]`` and
            ``col_mass [batch, head, key]``.
        prompt_ids: the id of each batch row in the caller's prompt list.
    """

    stats: dict[int, HeadStats]
    prompt_ids: tuple[int, ...]

    def to_frame(self) -> pd.DataFrame:
        """Means over each prompt's query rows: columns ``prompt_id, layer, head, entropy,
        max_prob, sink_mass, local_mass, n_queries``."""
        fields = ("entropy", "max_prob", "sink_mass", "local_mass")
        rows = []
        for layer, st in self.stats.items():
            n = st.lse.shape[-1]
            means = {f: getattr(st, f).double().mean(-1) for f in fields}  # (batch, head)
            for b, pid in enumerate(self.prompt_ids):
                for head in range(st.lse.shape[1]):
                    rows.append({"prompt_id": pid, "layer": layer, "head": head,
                                 **{f: float(v[b, head]) for f, v in means.items()}, "n_queries": n})
        return pd.DataFrame(rows)

    def column_frame(self) -> pd.DataFrame:
        """Attention received by each key: ``prompt_id, layer, head, position, col_mass``."""
        parts = []
        for layer, st in self.stats.items():
            if st.col_mass is None:
                continue
            heads, positions = st.col_mass.shape[1:]
            for b, pid in enumerate(self.prompt_ids):
                parts.append(pd.DataFrame({
                    "prompt_id": pid, "layer": layer,
                    "head": torch.arange(heads).repeat_interleave(positions).numpy(),
                    "position": torch.arange(positions).repeat(heads).numpy(),
                    "col_mass": st.col_mass[b].reshape(-1).numpy(),  # (head, key) flattened
                }))
        return pd.concat(parts, ignore_index=True)


def equal_length_batches(mask: torch.Tensor, batch_size: int) -> Iterator[tuple[list[int], int]]:
    """Group the rows of a padded batch by real length: yields ``(row indices, length)`` with at
    most ``batch_size`` rows each, shortest first, so each group runs with no padding at all."""
    lengths = mask.sum(-1).tolist()
    for n in sorted(set(lengths)):
        same = [i for i, length in enumerate(lengths) if length == n]
        for start in range(0, len(same), batch_size):
            yield same[start:start + batch_size], int(n)


def stream_capture(model, ids: torch.Tensor, *, prompt_ids=None, **options) -> StreamCapture:
    """One streaming forward over a batch of equal-length prompts ``ids [batch, pos]``.

    Equal lengths keep padding out entirely: padded query rows would otherwise add to the
    column mass of real keys. ``options`` go to `streaming` (sink_tokens, window,
    column_mass, backend).
    """
    with torch.no_grad(), streaming(model, **options) as stats:
        model.hf_model(input_ids=ids)
    if len(stats) != model.n_layers:
        raise RuntimeError(f"streaming capture saw {len(stats)} attention calls for {model.n_layers} layers")
    prompt_ids = tuple(range(ids.shape[0])) if prompt_ids is None else tuple(prompt_ids)
    return StreamCapture(dict(enumerate(stats)), prompt_ids)
