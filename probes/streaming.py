"""Streaming capture: per-head statistics from the query and key the model really uses.

A custom attention function is registered with ``transformers.AttentionInterface``. While a
capture is active the HF model runs with it: each call receives the layer's query
``[B, Hq, N, d]`` and key ``[B, Hkv, M, d]`` after RoPE and before GQA expansion. When the call
is a plain one (no mask tensor, no cache prefix, no dropout) it runs `kernels.attention_stats`,
which returns the layer's output and the statistics together, from the forward's own flash
attention and its log-sum-exp; otherwise `kernels.head_stats` computes the statistics and SDPA
the output. No N×N tensor exists at any point: prompts run in batches of equal length, so there
is no padding mask, and causality comes from ``is_causal``.

Each capture has its own recorder, held in a context variable: two captures on two threads (the
Dash server is threaded) never mix their statistics, even on one model.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator

import numpy as np
import torch

from kernels import HeadStats, WorkbenchError, attention_stats, head_stats
from kernels.head_stats import ATTENTION_BACKENDS, BACKENDS

if TYPE_CHECKING:  # pandas is imported only when a frame is asked for
    import pandas as pd

IMPLEMENTATION = "workbench_stream"
#: `head_stats` backends that `attention_stats` also takes, under the same name ("eager" it does not).
_COMBINED = frozenset(BACKENDS) & frozenset(ATTENTION_BACKENDS)
_RECORDER: ContextVar["_Recorder | None"] = ContextVar("workbench_stream_recorder", default=None)
_SWITCH = threading.Lock()
_USERS: dict[int, list] = {}  # id(hf model) -> [captures running on it, implementation to restore]


@dataclass
class _Recorder:
    causal: bool
    key_padding_mask: torch.Tensor | None
    options: dict
    stats: list[HeadStats]


def _plain_call(module, query, key, attention_mask, dropout, rec: _Recorder, kwargs) -> bool:
    """Whether this attention call is one `attention_stats` computes exactly as SDPA would."""
    if attention_mask is not None or rec.key_padding_mask is not None or rec.options["backend"] not in _COMBINED:
        return False
    if query.device.type not in ("cpu", "cuda"):
        return False
    unsupported = ("softcap", "sliding_window", "position_bias")
    if (dropout and module.training) or any(kwargs.get(name) is not None for name in unsupported):
        return False
    causal = kwargs.get("is_causal")
    causal = getattr(module, "is_causal", True) if causal is None else causal
    n, m = query.shape[2], key.shape[2]
    return bool(causal) == rec.causal and (not rec.causal or n in (1, m))


def _stream_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """The registered attention function: output and statistics from one flash attention when
    it can, else statistics first, then SDPA for the output."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    rec = _RECORDER.get()
    if rec is None:  # a forward outside any capture (another thread sharing the model)
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    with torch.no_grad():
        if _plain_call(module, query, key, attention_mask, dropout, rec, kwargs):
            out, stats = attention_stats(query.detach(), key.detach(), value.detach(), causal=rec.causal, scale=scaling,
                                         **rec.options)
            rec.stats.append(stats.to("cpu"))
            if torch.is_grad_enabled() and (query.requires_grad or value.requires_grad):
                out = None  # keep autograd intact: recompute the output below
            else:
                return out.transpose(1, 2).contiguous(), None  # (B, N, Hq, dv), as sdpa_attention_forward
        else:
            stats = head_stats(query.detach(), key.detach(), causal=rec.causal, scale=scaling,
                               key_padding_mask=rec.key_padding_mask, **rec.options)
            rec.stats.append(stats.to("cpu"))
    return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(IMPLEMENTATION, _stream_attention)
    AttentionMaskInterface.register(IMPLEMENTATION, sdpa_mask)


@contextmanager
def _implementation(hf_model) -> Iterator[None]:
    """Switch the model to the streaming attention function while any capture on it runs; the
    last capture to leave restores the implementation it had before the first came."""
    with _SWITCH:
        users = _USERS.setdefault(id(hf_model), [0, hf_model.config._attn_implementation])
        if users[0] == 0:
            hf_model.set_attn_implementation(IMPLEMENTATION)
        users[0] += 1
    try:
        yield
    finally:
        with _SWITCH:
            users[0] -= 1
            if users[0] == 0:
                del _USERS[id(hf_model)]
                hf_model.set_attn_implementation(users[1])


@contextmanager
def streaming(model, *, key_padding_mask: torch.Tensor | None = None, sink_tokens: int = 1, window: int = 16,
              column_mass: bool = True, argmax: bool = True, backend: str = "auto") -> Iterator[list[HeadStats]]:
    """Run the model's forwards inside this block with the streaming attention function.

    Args:
        model: a `workbench.ModelHandle` (its ``hf_model`` runs the forwards).
        key_padding_mask: ``[batch, keys]`` bool, True = real token, for padded batches.
        sink_tokens, window: as for `kernels.head_stats`.
        column_mass: record col_mass (sink scores, mean attended distance need it).
        argmax: record argmax (retrieval scores need it); False saves a pass over the logits.
        backend: `kernels.head_stats` backend.

    Yields a list that receives one `HeadStats` per attention call of this thread, in layer
    order. The model's attention implementation is restored on exit, also when the forward
    raises; captures on other threads keep their own lists.
    """
    _register()
    rec = _Recorder(model.is_causal, key_padding_mask,
                    dict(sink_tokens=sink_tokens, window=window, column_mass=column_mass, argmax=argmax,
                         backend=backend), [])
    token = _RECORDER.set(rec)
    try:
        with _implementation(model.hf_model):
            yield rec.stats
    finally:
        _RECORDER.reset(token)


@dataclass(frozen=True)
class StreamCapture:
    """Per-layer statistics of a batch of equal-length prompts from one streaming forward.

    Attributes:
        stats: ``{layer: HeadStats}`` with row tensors ``[batch, head, query]`` and
            ``col_mass [batch, head, key]`` (None unless asked for; argmax likewise).
        prompt_ids: the id of each batch row in the caller's prompt list.
    """

    stats: dict[int, HeadStats]
    prompt_ids: tuple[int, ...]

    def to_frame(self) -> pd.DataFrame:
        """Means over each prompt's query rows: columns ``prompt_id, layer, head, entropy,
        max_prob, sink_mass, local_mass, n_queries``, one row per (layer, prompt, head)."""
        import pandas as pd

        fields = ("entropy", "max_prob", "sink_mass", "local_mass")
        layers = list(self.stats)
        st0 = self.stats[layers[0]]
        batch, heads, n = st0.lse.shape
        means = torch.stack([torch.stack([getattr(self.stats[layer], f).double().mean(-1) for f in fields], -1)
                             for layer in layers])  # (layer, batch, head, field)
        rows = len(layers) * batch * heads
        frame = {
            "prompt_id": np.tile(np.repeat(np.asarray(self.prompt_ids, dtype=np.int64), heads), len(layers)),
            "layer": np.repeat(np.asarray(layers, dtype=np.int64), batch * heads),
            "head": np.tile(np.arange(heads, dtype=np.int64), len(layers) * batch),
        }
        flat = means.reshape(rows, len(fields)).numpy()
        frame.update({f: flat[:, i] for i, f in enumerate(fields)})
        frame["n_queries"] = np.full(rows, n, dtype=np.int64)
        return pd.DataFrame(frame)

    def column_frame(self) -> pd.DataFrame:
        """Attention received by each key: ``prompt_id, layer, head, position, col_mass``, ordered by
        layer, prompt, head and position (one frame built at once, however short the prompts)."""
        import pandas as pd

        layers = [layer for layer, st in self.stats.items() if st.col_mass is not None]
        if not layers:
            raise WorkbenchError("this capture has no column mass: run it with column_mass=True")
        cols = torch.stack([self.stats[layer].col_mass for layer in layers])  # (layer, batch, head, key)
        L, batch, heads, positions = cols.shape
        per_prompt = heads * positions
        return pd.DataFrame({
            "prompt_id": np.tile(np.repeat(np.asarray(self.prompt_ids, dtype=np.int64), per_prompt), L),
            "layer": np.repeat(np.asarray(layers, dtype=np.int64), batch * per_prompt),
            "head": np.tile(np.repeat(np.arange(heads, dtype=np.int64), positions), L * batch),
            "position": np.tile(np.arange(positions, dtype=np.int64), L * batch * heads),
            "col_mass": cols.reshape(-1).numpy(),
        })


def equal_length_batches(mask: torch.Tensor, batch_size: int) -> Iterator[tuple[list[int], int]]:
    """Group the rows of a padded batch by real length: yields ``(row indices, length)`` with at
    most ``batch_size`` rows each, shortest first, so each group runs with no padding at all."""
    lengths = mask.sum(-1).tolist()
    for n in sorted(set(lengths)):
        same = [i for i, length in enumerate(lengths) if length == n]
        for start in range(0, len(same), batch_size):
            yield same[start:start + batch_size], int(n)


def stream_capture(model, ids: torch.Tensor, *, prompt_ids=None, argmax: bool = False, **options) -> StreamCapture:
    """One streaming forward over a batch of equal-length prompts ``ids [batch, pos]``.

    Equal lengths keep padding out entirely: padded query rows would otherwise add to the
    column mass of real keys. ``options`` go to `streaming` (sink_tokens, window,
    column_mass, backend); argmax is off unless asked for, since the frames never read it.
    """
    with torch.no_grad(), streaming(model, argmax=argmax, **options) as stats:
        model.hf_model(input_ids=ids)
    if len(stats) != model.n_layers:
        raise RuntimeError(f"streaming capture saw {len(stats)} attention calls for {model.n_layers} layers")
    prompt_ids = tuple(range(ids.shape[0])) if prompt_ids is None else tuple(prompt_ids)
    return StreamCapture(dict(enumerate(stats)), prompt_ids)
