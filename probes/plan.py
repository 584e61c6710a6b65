"""Dry run: what a capture would store, and how many bytes, before it runs (nnsight's ``scan``)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd
import torch

from probes.hooks import NameFilter, hook_names, record

#: Per-head statistics the streaming capture keeps per query row (kernels.head_stats).
STREAM_FIELDS = {"lse": 4, "entropy": 4, "max_prob": 4, "argmax": 8, "sink_mass": 4, "local_mass": 4, "col_mass": 4}


@dataclass(frozen=True)
class CapturePlan:
    """What a capture stores: one row per recorded tensor, and the total.

    ``rows`` are ``(name, shape, dtype, bytes)`` for the whole batch.
    """

    mode: str
    batch: int
    max_len: int
    rows: tuple[tuple[str, tuple[int, ...], str, int], ...]

    @property
    def total_bytes(self) -> int:
        return sum(r[3] for r in self.rows)

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows, columns=["name", "shape", "dtype", "bytes"])

    def __str__(self) -> str:
        lines = [f"{self.mode} capture of {self.batch} prompt(s), up to {self.max_len} tokens:"]
        lines += [f"  {n:<40} {str(list(s)):<24} {d:<9} {_human(b)}" for n, s, d, b in self.rows]
        lines.append(f"  total {_human(self.total_bytes)}")
        return "\n".join(lines)


def plan(model, prompts, names: NameFilter = "blocks.*.attn.hook_pattern", *, mode: str = "exact") -> CapturePlan:
    """Report what a capture would store, without running it on the prompts.

    Args:
        model: a `workbench.ModelHandle`.
        prompts: the prompts (strings or token ids) the capture would run on.
        names: hook names or glob patterns (exact mode).
        mode: ``"exact"`` (hook activations) or ``"stream"`` (per-head statistics only).
    Returns:
        A `CapturePlan`. Exact shapes come from two 2- and 3-token probe forwards: dimensions
        that follow the sequence length are scaled to the real prompt length.
    """
    from kernels.errors import WorkbenchError  # the lower layers' error type (wb.WorkbenchError)

    ids, mask = model.to_tokens(prompts)
    batch, max_len = ids.shape
    if mode == "stream":
        rows = []
        for layer in range(model.n_layers):
            for field, size in STREAM_FIELDS.items():
                shape = (batch, model.n_heads, max_len)
                rows.append((f"blocks.{layer}.attn.{field}", shape, "int64" if size == 8 else "float32", size * math.prod(shape)))
        return CapturePlan("stream", batch, max_len, tuple(rows))
    if mode != "exact":
        raise WorkbenchError(f"capture mode {mode!r} is unknown: expected 'exact' or 'stream'")
    probe_shapes = []
    for n in (2, 3):
        probe = ids[:1, :n] if ids.shape[1] >= n else torch.ones(1, n, dtype=torch.long, device=ids.device)
        with torch.no_grad(), record(model.bridge, names) as store:
            model.bridge(probe, return_type=None)
        probe_shapes.append({k: (tuple(v.shape), v.dtype) for k, v in store.items()})
    rows = []
    for name in hook_names(model.bridge, names):
        (s2, dtype), (s3, _) = probe_shapes[0][name], probe_shapes[1][name]
        shape = tuple(max_len if a != b else a for a, b in zip(s2, s3))
        shape = (batch,) + shape[1:]
        rows.append((name, shape, str(dtype).replace("torch.", ""), math.prod(shape) * dtype.itemsize))
    return CapturePlan("exact", batch, max_len, tuple(rows))


def _human(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")
