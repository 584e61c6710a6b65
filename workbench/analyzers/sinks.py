"""Attention sinks: first-token sink heads, per-token sink scores, hidden and secondary sinks,
and massive activations.

All of them read one shared capture (`wb.describe`): pass ``capture=`` to reuse it, or let each
function make its own. The capture reduces every pattern and hidden state inside the forward to
row statistics, column sums, cosines with the first token and massive entries, so nothing N×N is
kept; batches too large for exact patterns are streamed (`kernels.head_stats`).

"The first token" is position 0 of each prompt, whether or not it is a BOS token: SmolLM2's
tokenizer adds none, so there it is an ordinary word. Every frame here says which in its attrs
(``first_token``, ``first_tokens``, ``bos``, ``first_token_note``).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from workbench.analyzers import Analyzer, register
from workbench import findings
from workbench.figures import head_grid, massive_activations_figure, ring_heads, secondary_sinks_figure, token_sink_view
from workbench.findings import summaries
from workbench.checks import fraction, positive, positive_int
from workbench.description import MASSIVE_ABS, MASSIVE_RATIO, ROW_FIELDS, Description, resolve
from workbench.errors import WorkbenchError
from workbench.frames import head_frame

#: Gu et al. 2024 ("When Attention Sink Emerges in Language Models", sail-sg/Attention-Sink): ε = 0.3.
SINK_EPS = 0.3
BATCH = 8


# -- first-token sink heads ---------------------------------------------------------------------
def sink_scores(model, prompts, *, eps: float = SINK_EPS, batch_size: int = BATCH, backend: str = "auto",
                capture: Description | None = None) -> pd.DataFrame:
    """First-token sink score of every head (Gu et al. 2024's α₁ and Sink^ε).

    α_k = (1/(T−k)) Σ_{t≥k} A[t, k] with 0-based k is the attention key k receives, averaged
    over the T−k queries that can see it (all T queries in a non-causal encoder). For the first
    token (position 0, a BOS token or not) every query sees it, so α₀ is the row-mean of the
    attention on key 0. No pattern is kept.

    Args:
        model: a `ModelHandle`.
        prompts: strings or token ids (None with ``capture``: the capture's prompts).
        eps: a head is a sink head if its α₀ (averaged over prompts) exceeds ε. Default 0.3,
            Gu et al. 2024, "When Attention Sink Emerges in Language Models" (Sink^ε metric).
        batch_size, backend: passed to `wb.describe` when no capture is given.
        capture: a `Description` of these prompts from `wb.describe` (shared with the other
            descriptive analyses).
    Returns:
        DataFrame ``layer, head, sink_score, is_sink``, one row per head. The model-level
        Sink^ε (fraction of sink heads; × 100 for Gu et al.'s percentage) is ``sink_share(frame)``
        and is also stored in ``frame.attrs["sink_share"]`` (with ``frame.attrs["eps"]`` and
        the first-token attrs of the module notes).
    Raises:
        WorkbenchError: eps outside (0, 1], empty prompts, a prompt longer than the context.
    """
    eps = fraction("eps", eps)
    desc = resolve(model, prompts, capture, analysis="sink_scores", batch_size=batch_size, backend=backend)
    alpha0 = desc.row_means()[..., ROW_FIELDS.index("sink_mass")].mean(0)  # (layer, head), mean over prompts
    frame = head_frame({"sink_score": alpha0})
    frame["is_sink"] = frame["sink_score"] > eps
    frame.attrs.update(eps=eps, sink_share=float(frame["is_sink"].mean()), **desc.first_token_attrs())
    return frame


def sink_share(frame: pd.DataFrame, eps: float | None = None) -> float:
    """Model-level Sink^ε of a `sink_scores` frame: the fraction of heads whose α₀ exceeds ε.

    Args:
        frame: ``layer, head, sink_score`` (one row per head).
        eps: threshold; default the one the frame was made with (``frame.attrs["eps"]``) or 0.3.
    Returns:
        A fraction in [0, 1] (Gu et al. report it in percent).
    """
    if "sink_score" not in frame.columns:
        raise WorkbenchError(f"sink_share needs a sink_scores frame (column 'sink_score'); got {list(frame.columns)}")
    eps = fraction("eps", frame.attrs.get("eps", SINK_EPS) if eps is None else eps)
    return float((frame["sink_score"] > eps).mean())


# -- per-token sink scores ------------------------------------------------------------------------
def token_sinks(model, prompts, *, causal_normalization: bool = True, batch_size: int = BATCH,
                backend: str = "auto", capture: Description | None = None) -> pd.DataFrame:
    """α of every key position in every head (Gu et al. 2024), from the capture's column sums.

    Args:
        model: a `ModelHandle`.
        prompts: strings or token ids (None with ``capture``).
        causal_normalization: divide the attention key k receives by the number of queries that
            can see it (T−k for 0-based k in a causal model; Gu et al.). False divides by T
            (the plain mean over queries). Encoders always divide by T (every query sees k).
        batch_size, backend: passed to `wb.describe` when no capture is given.
        capture: a `Description` of these prompts (`wb.describe`).
    Returns:
        DataFrame ``prompt_id, layer, head, position, token, alpha`` (one row per key position),
        with the first-token attrs of the module notes.
    """
    if not isinstance(causal_normalization, bool):
        raise WorkbenchError(f"causal_normalization must be a bool; got {causal_normalization!r}")
    desc = resolve(model, prompts, capture, analysis="token_sinks", batch_size=batch_size, backend=backend)
    frame = desc.column_frame()
    total = desc.lengths.numpy()[frame["prompt_id"].to_numpy()]
    position = frame["position"].to_numpy()
    seen_by = total - position if (causal_normalization and desc.is_causal) else total
    frame.insert(4, "token", [desc.tokens[p][k] for p, k in zip(frame["prompt_id"].to_numpy(), position)])
    frame["alpha"] = frame.pop("col_mass").to_numpy() / seen_by
    frame.attrs.update(desc.first_token_attrs())
    return frame


def hidden_sinks(model, prompts, *, threshold: float = 0.1, min_queries: int = 10, batch_size: int = BATCH,
                 backend: str = "auto", capture: Description | None = None) -> pd.DataFrame:
    """Sinks other than the first token: keys whose α exceeds ``threshold`` (ACT).

    Args:
        threshold: α above which a token past position 0 is a sink. Default 0.1, Yu et al. 2024,
            "Unveiling and Harnessing Hidden Attention Sinks" (ACT).
        min_queries: keys seen by fewer queries are left out: with Gu et al.'s normalization the
            α of the last keys averages a handful of rows (the last key's α is its own
            self-attention), which says nothing about a sink. 10 makes a key that takes all of
            one query's attention fall at the 0.1 bar.
        batch_size, backend, capture: as for `token_sinks` (whose rows these are; no new forward
            with a capture).
    Returns:
        The rows of `token_sinks` (``prompt_id, layer, head, position, token, alpha``) with
        position ≥ 1 and alpha > threshold, strongest first.
    """
    threshold = fraction("threshold", threshold, high_open=True)  # α lies in [0, 1]
    min_queries = positive_int("min_queries", min_queries)
    desc = resolve(model, prompts, capture, analysis="hidden_sinks", batch_size=batch_size, backend=backend)
    frame = token_sinks(model, None, capture=desc)  # prompts already checked against desc
    lengths = desc.lengths.numpy()[frame["prompt_id"].to_numpy()]
    seen_by = lengths - frame["position"] if desc.is_causal else lengths
    keep = (frame["position"] >= 1) & (frame["alpha"] > threshold) & (seen_by >= min_queries)
    out = frame[keep].sort_values("alpha", ascending=False, kind="stable", ignore_index=True)
    out.attrs.update(frame.attrs)
    return out


# -- hidden states -------------------------------------------------------------------------------------
def secondary_sinks(model, prompts, *, cos_threshold: float = 0.9, batch_size: int = BATCH,
                    capture: Description | None = None) -> pd.DataFrame:
    """Tokens whose hidden state lines up with the first token's, and for how many layers.

    For every layer the cosine between each token's ``hook_resid_post`` and position 0's is
    taken; a token is a secondary sink in a layer when |cos| exceeds ``cos_threshold``.
    Consecutive layers form one sink, labelled by its lifetime (``n_layers``).

    Args:
        cos_threshold: default 0.9, Wong et al. 2025, "Secondary Attention Sinks".
        batch_size, capture: as for `sink_scores`.
    Returns:
        DataFrame ``prompt_id, position, token, start_layer, end_layer, n_layers, mean_cos``,
        one row per run of consecutive layers (longest first), with the first-token attrs.
    """
    cos_threshold = fraction("cos_threshold", cos_threshold, high_open=True)  # |cos| > 1 never holds
    desc = resolve(model, prompts, capture, analysis="secondary_sinks", batch_size=batch_size)
    rows = []
    for pid, grid in enumerate(desc.first_cos):
        grid = grid.numpy()  # (layer, pos)
        hit = np.abs(grid) > cos_threshold
        for pos in range(1, grid.shape[1]):
            layer = 0
            while layer < desc.n_layers:
                if not hit[layer, pos]:
                    layer += 1
                    continue
                end = layer
                while end + 1 < desc.n_layers and hit[end + 1, pos]:
                    end += 1
                rows.append({"prompt_id": pid, "position": pos, "token": desc.tokens[pid][pos], "start_layer": layer,
                             "end_layer": end, "n_layers": end - layer + 1,
                             "mean_cos": float(np.abs(grid[layer:end + 1, pos]).mean())})
                layer = end + 1
    columns = ["prompt_id", "position", "token", "start_layer", "end_layer", "n_layers", "mean_cos"]
    frame = pd.DataFrame(rows, columns=columns)
    frame = frame.sort_values(["n_layers", "mean_cos"], ascending=False, kind="stable", ignore_index=True)
    frame.attrs.update(desc.first_token_attrs())
    return frame


def massive_activations(model, prompts, *, abs_threshold: float = MASSIVE_ABS, ratio_threshold: float = MASSIVE_RATIO,
                        batch_size: int = BATCH, capture: Description | None = None) -> pd.DataFrame:
    """Hidden-state entries far larger than the rest (Sun et al. 2024, "Massive Activations in LLMs").

    An entry h[t, i] of ``blocks.{L}.hook_resid_post`` is massive when |h| > ``abs_threshold``
    and |h| / median(|h|) > ``ratio_threshold``, the median over all entries of that layer's
    hidden state for the prompt.

    Args:
        abs_threshold: default 100 (Sun et al. 2024).
        ratio_threshold: default 1000 (Sun et al. 2024: "about 1,000 times larger than the median").
        batch_size, capture: as for `sink_scores`; a capture keeps the entries past its own bars
            (`wb.describe`'s massive_abs / massive_ratio), so these may only be as strict or stricter.
    Returns:
        DataFrame ``prompt_id, layer, position, token, dim, value, ratio`` (often empty for small
        models), largest |value| first.
    """
    abs_threshold = positive("abs_threshold", abs_threshold)
    ratio_threshold = positive("ratio_threshold", ratio_threshold)
    desc = resolve(model, prompts, capture, analysis="massive_activations", batch_size=batch_size,
                   massive_floor=(abs_threshold, ratio_threshold))
    hits = desc.massive
    hits = hits[(hits["value"].abs() > abs_threshold) & (hits["ratio"] > ratio_threshold)].copy()
    hits.insert(3, "token", [desc.tokens[p][k] for p, k in zip(hits["prompt_id"], hits["position"])])
    hits["magnitude"] = -hits["value"].abs()
    hits = hits.sort_values(["magnitude", "prompt_id", "layer", "position", "dim"], ignore_index=True)
    frame = hits.drop(columns="magnitude").astype({"prompt_id": int, "layer": int, "position": int, "dim": int,
                                                       "value": float, "ratio": float})
    frame.attrs.update(desc.first_token_attrs())
    return frame


# -- registry -------------------------------------------------------------------------------------------
def _sink_figures(frame):
    share = sink_share(frame)
    eps = frame.attrs.get("eps", SINK_EPS)
    fig = head_grid(frame, "sink_score", colorscale="Reds", label="α₀",
                    title=f"First-token sink score α₀ (Sink^ε = {100 * share:.0f}% of heads at ε = {eps}; ringed)")
    return [ring_heads(fig, frame[frame["sink_score"] > eps], "sink head")]


_GU = "Gu et al. 2024, When Attention Sink Emerges in Language Models (α, Sink^ε, ε = 0.3)"
register(Analyzer("sink_scores", sink_scores, "First-token attention sinks", capture=True,
                  figures=_sink_figures, sources=(_GU,), family="sinks", findings=findings.sinks,
                  summary=summaries.sinks))
register(Analyzer("token_sinks", token_sinks, "Attention received by every token", capture=True,
                  figures=lambda frame: [token_sink_view(frame)], family="sinks", findings=findings.token_sinks,
                  sources=(_GU, "Yu et al. 2024, Unveiling and Harnessing Hidden Attention Sinks (ACT, α > 0.1)")))
register(Analyzer("secondary_sinks", secondary_sinks, "Secondary sinks (hidden states aligned with the first token)",
                  capture=True, figures=lambda frame: [secondary_sinks_figure(frame)], family="sinks",
                  findings=findings.secondary_sinks,
                  sources=("Wong et al. 2025, Secondary Attention Sinks (|cos| > 0.9)",)))
register(Analyzer("massive_activations", massive_activations, "Massive activations", capture=True,
                  figures=lambda frame: [massive_activations_figure(frame)], family="massive activations",
                  page="sinks", findings=findings.massive, summary=summaries.massive,
                  sources=("Sun et al. 2024, Massive Activations in Large Language Models (|h| > 100, > 1000× median)",)))
