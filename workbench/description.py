"""One shared capture for the descriptive analyses: ``describe(model, prompts) -> Description``.

One forward per batch of prompts. Inside it, every layer's attention pattern and hidden state is
reduced to what the descriptive analyses read (head summary, sink scores, token / hidden /
secondary sinks, massive activations, pattern descriptors), and then dropped; no pattern is kept:

- per (prompt, layer, head): sums over the prompt's query rows of the row entropy, the row
  maximum, the attention on key 0 (the first token), the attention on the last ``local_window``
  keys up to the query, and the attended distance Σ_k A[t, k] |t − k|;
- per (prompt, layer, head, key): the attention the key receives, Σ_t A[t, k];
- per (prompt, layer, position): the cosine between the hidden state (``hook_resid_post``) and
  position 0's, and the hidden-state entries that pass the massive-activation bars.

Position 0 is "the first token" whether or not it is a BOS token: SmolLM2's tokenizer adds none,
so there position 0 is an ordinary word (`Description.first_token_attrs` says which).

Two capture modes give the same numbers (DESIGN.md "Capture"):

- ``"exact"``: the bridge's ``blocks.{L}.attn.hook_pattern`` (equal to eager attention) and
  ``blocks.{L}.hook_resid_post``, reduced inside the hooks. Prompts run right-padded, longest
  first; padded query rows are left out and padded keys get no attention from real rows. Each
  batch's patterns (all layers) must fit ``max_bytes`` (`workbench.capture.MAX_PATTERN_BYTES`).
- ``"stream"``: row statistics and column sums from `kernels.head_stats` through
  `probes.streaming` (no N×N tensor; prompts batched by equal length), hidden states from forward
  hooks on the HF model's layers. Causal models only (an encoder's attended distance |t − k|
  needs the pattern; encoders are short enough for the exact mode).
- ``"auto"`` (default): exact for every batch that fits ``max_bytes``, streaming for the others.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import pandas as pd
import torch

from probes.hooks import attach
from workbench.capture import MAX_PATTERN_BYTES, check_pattern_bytes, padded_batches, pattern_bytes, run_bridge
from workbench.checks import choice, integer, positive, positive_int
from workbench.errors import WorkbenchError
from workbench.heads import hooks

#: Row statistics kept per (prompt, layer, head), summed over the prompt's query rows.
ROW_FIELDS = ("entropy", "max_prob", "sink_mass", "local_mass", "distance")
MODES = ("auto", "exact", "stream")
#: Sun et al. 2024, "Massive Activations in Large Language Models": |h| > 100 and > 1000× the median.
MASSIVE_ABS, MASSIVE_RATIO = 100.0, 1000.0
#: head_patterns' local window (a "positional" head in Voita et al. 2019's sense looks at t and t−1..t−3).
LOCAL_WINDOW = 4
MASSIVE_COLUMNS = ["prompt_id", "layer", "position", "dim", "value", "ratio"]


@dataclass(frozen=True, eq=False)  # eq=False: tensors and frames have no single truth value
class Description:
    """What one capture pass over the prompts kept for the descriptive analyses.

    Attributes:
        model_name, n_layers, n_heads, is_causal: the model it was made on.
        token_ids, tokens: per prompt, its token ids and token strings (no padding).
        row_sums: ``[prompt, layer, head, field]`` float64, the sums over the prompt's query rows
            of `ROW_FIELDS` (entropy in nats, max_prob, sink_mass = attention on position 0,
            local_mass, distance = Σ_k A[t, k] |t − k|).
        col_mass: per prompt ``[layer, head, key]`` float64, Σ_t A[t, k] over its queries.
        first_cos: per prompt ``[layer, position]`` float64, cos(h_t, h_0) of ``hook_resid_post``.
        massive: DataFrame ``prompt_id, layer, position, dim, value, ratio`` of the hidden-state
            entries with |h| > massive_abs and |h| / median(|h|) > massive_ratio (the median over
            the prompt's entries in that layer).
        local_window, massive_abs, massive_ratio: the settings it was made with.
        bos: position 0 holds the tokenizer's BOS ([CLS] for encoders) in every prompt.
        mode: ``"exact"``, ``"stream"`` or ``"exact+stream"`` (which capture produced the batches).
        seconds: wall time of the capture.
    """

    model_name: str
    n_layers: int
    n_heads: int
    is_causal: bool
    token_ids: tuple[tuple[int, ...], ...]
    tokens: tuple[tuple[str, ...], ...]
    row_sums: torch.Tensor
    col_mass: tuple[torch.Tensor, ...]
    first_cos: tuple[torch.Tensor, ...]
    massive: pd.DataFrame
    local_window: int
    massive_abs: float
    massive_ratio: float
    bos: bool
    mode: str
    seconds: float

    @property
    def n_prompts(self) -> int:
        return len(self.token_ids)

    @property
    def lengths(self) -> torch.Tensor:
        """``[prompt]`` int64: tokens (= query rows) per prompt."""
        return torch.tensor([len(t) for t in self.token_ids])

    def row_means(self) -> torch.Tensor:
        """``[prompt, layer, head, field]`` float64: each prompt's means over its query rows."""
        return self.row_sums / self.lengths.double()[:, None, None, None]

    def to_frame(self) -> pd.DataFrame:
        """Per-prompt row means: ``prompt_id, layer, head, entropy, max_prob, sink_mass,
        local_mass, mean_distance, n_queries``."""
        means = self.row_means()  # (prompt, layer, head, field)
        p, layer, head = torch.meshgrid(*(torch.arange(s) for s in means.shape[:3]), indexing="ij")
        frame = pd.DataFrame({"prompt_id": p.flatten().numpy(), "layer": layer.flatten().numpy(),
                              "head": head.flatten().numpy()})
        for i, name in enumerate(ROW_FIELDS):
            frame["mean_distance" if name == "distance" else name] = means[..., i].flatten().numpy()
        frame["n_queries"] = self.lengths[p.flatten()].numpy()
        return frame

    def column_frame(self) -> pd.DataFrame:
        """Attention received by each key: ``prompt_id, layer, head, position, col_mass`` (the
        columns of `wb.capture_columns`)."""
        parts = []
        for pid, col in enumerate(self.col_mass):  # (layer, head, key)
            layer, head, position = torch.meshgrid(*(torch.arange(s) for s in col.shape), indexing="ij")
            parts.append(pd.DataFrame({"prompt_id": pid, "layer": layer.flatten().numpy(),
                                       "head": head.flatten().numpy(), "position": position.flatten().numpy(),
                                       "col_mass": col.flatten().numpy()}))
        return pd.concat(parts, ignore_index=True)

    def first_token_attrs(self) -> dict:
        """What "the first token" is in these prompts, for a frame's ``attrs``: ``first_token``
        (the token at position 0 if every prompt shares it, else None), ``first_tokens`` (the
        distinct ones, at most 10), ``bos`` and a one-line ``first_token_note``."""
        firsts = sorted({t[0] for t in self.tokens})
        shared = firsts[0] if len(firsts) == 1 else None
        what = "the tokenizer's BOS token" if self.bos else "an ordinary token (the tokenizer adds no BOS here)"
        shown = repr(shared) if shared is not None else f"{len(firsts)} different tokens"
        note = f"the first token is position 0 of each prompt, {what}: {shown}"
        return {"first_token": shared, "first_tokens": firsts[:10], "bos": self.bos, "first_token_note": note}


# -- the capture ----------------------------------------------------------------------------------------
def describe(model, prompts, *, batch_size: int = 8, local_window: int = LOCAL_WINDOW,
             massive_abs: float = MASSIVE_ABS, massive_ratio: float = MASSIVE_RATIO, mode: str = "auto",
             backend: str = "auto", max_bytes: int = MAX_PATTERN_BYTES) -> Description:
    """One capture pass over ``prompts`` for every descriptive analysis (see the module notes).

    Args:
        model: a `ModelHandle`.
        prompts: strings or token ids.
        batch_size: prompts per forward.
        local_window: local_mass counts the attention on the query and the ``local_window − 1``
            keys before it (default 4, head_patterns').
        massive_abs, massive_ratio: the massive-activation bars kept (Sun et al. 2024: 100 and
            1000); `massive_activations` may ask for stricter ones.
        mode: ``"auto"``, ``"exact"`` or ``"stream"`` (module notes).
        backend: the `kernels.head_stats` backend of streamed batches.
        max_bytes: the most bytes one exact batch's patterns (all layers, float32) may take.
    Returns:
        A `Description`.
    Raises:
        WorkbenchError: empty prompts, a prompt longer than the context, bad settings, an exact
            batch past ``max_bytes`` (``mode="exact"``, or an encoder), ``mode="stream"`` on an
            encoder.
    """
    start = time.perf_counter()
    batch_size = positive_int("batch_size", batch_size)
    local_window = positive_int("local_window", local_window)
    massive_abs, massive_ratio = positive("massive_abs", massive_abs), positive("massive_ratio", massive_ratio)
    mode = choice("mode", mode, MODES)
    max_bytes = integer("max_bytes", max_bytes, low=1)
    if mode == "stream" and not model.is_causal:
        raise WorkbenchError(f"mode='stream' needs a causal model; {model.name} is an encoder, whose attended "
                             "distance |t − k| needs the pattern: use mode='exact'")
    ids, mask = model.to_tokens(prompts)
    lengths = mask.sum(-1).tolist()
    token_ids = tuple(tuple(ids[i, :n].tolist()) for i, n in enumerate(lengths))
    acc = _Accumulator(model, lengths, local_window, massive_abs, massive_ratio)
    modes = set()
    for rows, width in padded_batches(mask, batch_size):
        fits = pattern_bytes(model, len(rows), width) <= max_bytes
        if mode == "exact" or (mode == "auto" and (fits or not model.is_causal)):
            check_pattern_bytes(model, len(rows), width, model.n_layers, max_bytes,
                                advice="use a smaller batch_size, or mode='stream' (no N×N tensor)")
            _exact_batch(model, ids[rows, :width], mask[rows, :width], rows, acc)
            modes.add("exact")
        else:
            _stream_batch(model, ids[rows], mask[rows], rows, acc, batch_size, backend)
            modes.add("stream")
    first = model.tokenizer.bos_token_id if model.is_causal else model.tokenizer.cls_token_id
    return Description(
        model_name=model.name, n_layers=model.n_layers, n_heads=model.n_heads, is_causal=model.is_causal,
        token_ids=token_ids, tokens=tuple(tuple(model.tokenizer.convert_ids_to_tokens(list(t))) for t in token_ids),
        row_sums=acc.row_sums, col_mass=tuple(acc.col_mass), first_cos=tuple(acc.first_cos),
        massive=pd.DataFrame(acc.massive, columns=MASSIVE_COLUMNS), local_window=local_window,
        massive_abs=massive_abs, massive_ratio=massive_ratio,
        bos=first is not None and all(t[0] == first for t in token_ids),
        mode="+".join(m for m in ("exact", "stream") if m in modes), seconds=time.perf_counter() - start)


class _Accumulator:
    """Per-prompt sums filled batch by batch (float64 on the CPU)."""

    def __init__(self, model, lengths: list[int], local_window: int, massive_abs: float, massive_ratio: float):
        self.causal, self.window = model.is_causal, local_window
        self.massive_abs, self.massive_ratio = massive_abs, massive_ratio
        L, H = model.n_layers, model.n_heads
        self.row_sums = torch.zeros(len(lengths), L, H, len(ROW_FIELDS), dtype=torch.float64)
        self.col_mass = [torch.zeros(L, H, n, dtype=torch.float64) for n in lengths]
        self.first_cos = [torch.zeros(L, n, dtype=torch.float64) for n in lengths]
        self.massive: list[tuple] = []
        self.lengths = lengths

    def add_rows(self, layer: int, rows: list[int], fields: torch.Tensor, col: torch.Tensor) -> None:
        """``fields [batch, head, field]`` row sums (distance NaN for causal models: it comes
        from ``col [batch, head, key]``, Σ_t Σ_k A[t, k](t − k) = n(n−1)/2 − Σ_k k·col_k;
        padded keys receive nothing from real rows)."""
        fields, col = fields.double().cpu(), col.double().cpu()
        if self.causal:
            n = torch.tensor([self.lengths[pid] for pid in rows], dtype=torch.float64)[:, None]  # (batch, 1)
            keys = torch.arange(col.shape[-1], dtype=torch.float64)
            fields[..., -1] = n * (n - 1) / 2 - col @ keys  # (batch, head)
        self.row_sums[rows, layer] = fields
        for b, pid in enumerate(rows):
            self.col_mass[pid][layer] = col[b, :, :self.lengths[pid]]

    def add_hidden(self, layer: int, rows: list[int], resid: torch.Tensor, real: torch.Tensor) -> None:
        """``resid [batch, pos, d_model]`` of ``blocks.{layer}.hook_resid_post``; ``real
        [batch, pos]`` bool marks the prompts' own tokens (False on padding)."""
        h = resid.detach().float()
        norm = h.norm(dim=-1)  # (batch, pos)
        dots = torch.matmul(h, h[:, 0, :, None]).squeeze(-1)  # (batch, pos, 1) -> (batch, pos)
        cos = (dots / (norm * norm[:, :1]).clamp_min(1e-8)).cpu()  # cos(h_t, h_0)
        for b, pid in enumerate(rows):
            self.first_cos[pid][layer] = cos[b, :self.lengths[pid]]
        mag = h.abs()  # (batch, pos, d_model)
        keep = real.to(h.device)[..., None]
        if bool(keep.all()):
            median = mag.flatten(1).median(dim=1).values  # (batch,): the lower median, as torch.median
        else:  # over the real entries only
            median = mag.masked_fill(~keep, float("nan")).flatten(1).nanmedian(dim=1).values
        b, pos, dim = ((mag > self.massive_abs) & keep).nonzero(as_tuple=True)  # candidates: few
        ratio = mag[b, pos, dim] / median[b].clamp_min(1e-12)
        hit = ratio > self.massive_ratio
        b, pos, dim, ratio = b[hit].tolist(), pos[hit].tolist(), dim[hit].tolist(), ratio[hit].tolist()
        values = h[b, pos, dim].tolist()
        self.massive += [(rows[i], layer, t, d, v, r) for i, t, d, v, r in zip(b, pos, dim, values, ratio)]


def _band(p: torch.Tensor, window: int) -> torch.Tensor:
    """Σ_{k ∈ (t − window, t]} p[..., t, k] from the ``window`` sub-diagonals: ``[..., query]``."""
    n = p.shape[-1]
    out = torch.zeros(p.shape[:-1], dtype=p.dtype, device=p.device)
    for j in range(min(window, n)):
        out[..., j:] += torch.diagonal(p, offset=-j, dim1=-2, dim2=-1)
    return out


def _pattern_rows(pattern: torch.Tensor, real: torch.Tensor, window: int, causal: bool):
    """Row sums ``[batch, head, field]`` and column sums ``[batch, head, key]`` of one layer's
    pattern ``[batch, head, query, key]`` over the real query rows ``real [batch, query]``."""
    p = pattern.detach().float()
    keep = real[:, None, :]  # (batch, 1, query)
    per_row = [
        -torch.special.xlogy(p, p).sum(-1),  # entropy (batch, head, query)
        p.amax(-1),                           # max_prob
        p[..., 0],                            # sink_mass: attention on position 0
        _band(p, window),                     # local_mass
    ]
    if causal:  # filled from the column sums
        per_row.append(torch.full_like(per_row[0], float("nan")))
    else:
        pos = torch.arange(p.shape[-1], device=p.device, dtype=p.dtype)
        per_row.append((p * (pos[:, None] - pos[None, :]).abs()).sum(-1))  # Σ_k A[t, k] |t − k|
    fields = torch.stack([(f * keep).sum(-1) for f in per_row], dim=-1)  # (batch, head, field)
    col = torch.matmul(real[:, None, None, :], p).squeeze(-2)  # (batch, head, 1, key) -> (batch, head, key)
    return fields, col


def _exact_batch(model, ids: torch.Tensor, mask: torch.Tensor, rows: list[int], acc: _Accumulator) -> None:
    real = mask.to(torch.float32)  # (batch, query)
    tokens = mask.bool()

    def on_pattern(layer: int):
        def hook(pattern, hook=None):  # noqa: ARG001 - (batch, head, query, key)
            acc.add_rows(layer, rows, *_pattern_rows(pattern, real, acc.window, acc.causal))
        return hook

    def on_resid(layer: int):
        def hook(resid, hook=None):  # noqa: ARG001 - (batch, pos, d_model)
            acc.add_hidden(layer, rows, resid, tokens)
        return hook

    fns = {f"blocks.{layer}.attn.hook_pattern": on_pattern(layer) for layer in range(model.n_layers)}
    fns |= {f"blocks.{layer}.hook_resid_post": on_resid(layer) for layer in range(model.n_layers)}
    with torch.no_grad(), hooks(model, fns):
        run_bridge(model, ids, mask, return_type=None)


def _stream_batch(model, ids: torch.Tensor, mask: torch.Tensor, rows: list[int], acc: _Accumulator,
                  batch_size: int, backend: str) -> None:
    """Stream the rows of one padded batch, grouped by equal length (no padding at all)."""
    from probes.streaming import equal_length_batches, stream_capture

    for chosen, n in equal_length_batches(mask, batch_size):
        pids = [rows[i] for i in chosen]

        def on_layer(layer: int, resid: torch.Tensor, pids: list[int] = pids) -> None:
            acc.add_hidden(layer, pids, resid, torch.ones(resid.shape[:2], dtype=torch.bool))

        with torch.no_grad(), _layer_outputs(model, on_layer):
            cap = stream_capture(model, ids[chosen, :n], prompt_ids=pids, sink_tokens=1, window=acc.window,
                                 column_mass=True, backend=backend)
        for layer, st in cap.stats.items():  # row tensors (batch, head, query)
            sums = [f.double().sum(-1) for f in (st.entropy, st.max_prob, st.sink_mass, st.local_mass)]
            nan = torch.full_like(sums[0], float("nan"))  # distance: add_rows fills it from col_mass
            acc.add_rows(layer, pids, torch.stack(sums + [nan], dim=-1), st.col_mass)  # (batch, head, field)


def _layer_outputs(model, fn: Callable[[int, torch.Tensor], None]):
    """Call ``fn(layer, hidden [batch, pos, d_model])`` on the output of each of the HF model's
    layers (the bridge's ``hook_resid_post``) during forwards inside the returned block
    (`probes.hooks.attach`, which removes the hooks on exit)."""
    layers = [m for m in model.hf_model.modules()
              if isinstance(m, torch.nn.ModuleList) and len(m) == model.n_layers]
    if not layers:
        raise WorkbenchError(f"cannot find the {model.n_layers} layers of {model.name} for the hidden states")

    def make(layer: int):
        def hook(module, args, output):  # noqa: ARG001
            fn(layer, output[0] if isinstance(output, tuple) else output)
        return hook

    return attach(post_hooks=[(module, make(layer)) for layer, module in enumerate(layers[0])])


def resolve(model, prompts, capture: Description | None, *, analysis: str, **settings) -> Description:
    """The capture an analysis reads: ``capture`` checked against ``model`` and ``prompts``, or a
    new `describe` (with ``settings``) when None. ``prompts`` may be None with a capture.

    ``local_window`` and ``massive_floor=(abs, ratio)`` among ``settings`` must agree with a given
    capture (local_window exactly; the massive bars at least as strict as the capture's).
    """
    if capture is None:
        if prompts is None:
            raise WorkbenchError(f"{analysis} needs prompts or capture= (a Description from wb.describe)")
        floor = settings.pop("massive_floor", None)
        if floor is not None:
            settings.update(massive_abs=floor[0], massive_ratio=floor[1])
        return describe(model, prompts, **settings)
    if not isinstance(capture, Description):
        raise WorkbenchError(f"capture must be a Description from wb.describe; got {type(capture).__name__}")
    if (capture.model_name, capture.n_layers, capture.n_heads) != (model.name, model.n_layers, model.n_heads):
        raise WorkbenchError(
            f"capture was made on {capture.model_name!r} ({capture.n_layers} layers x {capture.n_heads} heads); "
            f"{analysis} got {model.name!r} ({model.n_layers} x {model.n_heads}): describe this model first")
    if prompts is not None:
        ids, mask = model.to_tokens(prompts)
        given = [tuple(ids[i, :n].tolist()) for i, n in enumerate(mask.sum(-1).tolist())]
        if len(given) != capture.n_prompts:
            raise WorkbenchError(f"capture was made from {capture.n_prompts} prompt(s); {analysis} got {len(given)}")
        for i, (a, b) in enumerate(zip(given, capture.token_ids)):
            if a != b:
                raise WorkbenchError(f"prompt {i} differs from the capture's prompt {i}: pass the prompts the "
                                     f"capture was made from, or prompts=None")
    window = settings.get("local_window")
    if window is not None and window != capture.local_window:
        raise WorkbenchError(f"capture was made with local_window={capture.local_window}; {analysis} asks for "
                             f"local_window={window}: make it with wb.describe(..., local_window={window})")
    floor = settings.get("massive_floor")
    if floor is not None and (floor[0] < capture.massive_abs or floor[1] < capture.massive_ratio):
        raise WorkbenchError(
            f"capture kept massive activations with |h| > {capture.massive_abs:g} and ratio > "
            f"{capture.massive_ratio:g}; {analysis} asks for |h| > {floor[0]:g}, ratio > {floor[1]:g}: make it "
            f"with wb.describe(..., massive_abs={floor[0]:g}, massive_ratio={floor[1]:g})")
    return capture
