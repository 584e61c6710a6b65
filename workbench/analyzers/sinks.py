"""Attention sinks: first-token sink heads, per-token sink scores, hidden and secondary sinks,
and massive activations.

Sink scores come from the streaming statistics (`wb.capture_stats`), so they run at long
context without any N×N tensor. Hidden-state analyses (secondary sinks, massive activations)
reduce ``blocks.{L}.hook_resid_post`` inside the hook, so only the hits are kept.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from workbench.analyzers import Analyzer, register
from workbench import findings
from workbench.figures import head_grid, massive_activations_figure, ring_heads, secondary_sinks_figure, token_sink_view
from workbench.findings import summaries
from workbench.capture import capture_stats, run_bridge
from workbench.checks import fraction, positive, positive_int
from workbench.errors import WorkbenchError
from workbench.heads import hooks

#: Gu et al. 2024 ("When Attention Sink Emerges in Language Models", sail-sg/Attention-Sink): ε = 0.3.
SINK_EPS = 0.3


def _prompt_tokens(model, prompts) -> list[list[str]]:
    """The tokens of each prompt as strings (padding dropped)."""
    ids, mask = model.to_tokens(prompts)
    lengths = mask.sum(-1).tolist()
    return [model.tokenizer.convert_ids_to_tokens(ids[i, :n].tolist()) for i, n in enumerate(lengths)]


# -- first-token sink heads ---------------------------------------------------------------------
def sink_scores(model, prompts, *, eps: float = SINK_EPS, batch_size: int = 4, backend: str = "auto") -> pd.DataFrame:
    """First-token sink score of every head (Gu et al. 2024's α₁ and Sink^ε).

    α_k = (1/(T−k)) Σ_{t≥k} A[t, k] with 0-based k is the attention key k receives, averaged
    over the T−k queries that can see it (all T queries in a non-causal encoder). For the first
    token every query sees it, so α₀ is the row-mean of the attention on key 0: exactly the
    streaming statistic ``sink_mass`` with ``sink_tokens=1``. No pattern is materialised.

    Args:
        model: a `ModelHandle`.
        prompts: strings or token ids.
        eps: a head is a sink head if its α₀ (averaged over prompts) exceeds ε. Default 0.3,
            Gu et al. 2024, "When Attention Sink Emerges in Language Models" (Sink^ε metric).
        batch_size, backend: passed to `wb.capture_stats`.
    Returns:
        DataFrame ``layer, head, sink_score, is_sink``, one row per head. The model-level
        Sink^ε (fraction of sink heads; × 100 for Gu et al.'s percentage) is ``sink_share(frame)``
        and is also stored in ``frame.attrs["sink_share"]`` (with ``frame.attrs["eps"]``).
    Raises:
        WorkbenchError: eps outside (0, 1], empty prompts, a prompt longer than the context.
    """
    eps = fraction("eps", eps)
    stats = capture_stats(model, prompts, batch_size=batch_size, sink_tokens=1, backend=backend)
    per_head = stats.groupby(["layer", "head"], as_index=False)["sink_mass"].mean()
    frame = pd.DataFrame({
        "layer": per_head["layer"].astype(int), "head": per_head["head"].astype(int),
        "sink_score": per_head["sink_mass"].astype(float),
    })
    frame["is_sink"] = frame["sink_score"] > eps
    frame.attrs.update(eps=eps, sink_share=float(frame["is_sink"].mean()))
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
def token_sinks(model, prompts, *, causal_normalization: bool = True, batch_size: int = 4,
                backend: str = "auto") -> pd.DataFrame:
    """α of every key position in every head (Gu et al. 2024), from the streaming column sums.

    Args:
        model: a `ModelHandle`.
        prompts: strings or token ids.
        causal_normalization: divide the attention key k receives by the number of queries that
            can see it (T−k for 0-based k in a causal model; Gu et al.). False divides by T
            (the plain mean over queries). Encoders always divide by T (every query sees k).
        batch_size, backend: passed to `wb.capture_stats`.
    Returns:
        DataFrame ``prompt_id, layer, head, position, token, alpha`` (one row per key position).
    """
    stats, cols = capture_stats(model, prompts, batch_size=batch_size, sink_tokens=1, backend=backend, columns=True)
    tokens = _prompt_tokens(model, prompts)
    lengths = np.array([len(t) for t in tokens])
    total = lengths[cols["prompt_id"].to_numpy()]
    position = cols["position"].to_numpy()
    seen_by = total - position if (causal_normalization and model.is_causal) else total
    frame = cols[["prompt_id", "layer", "head", "position"]].copy()
    frame["token"] = [tokens[p][k] for p, k in zip(cols["prompt_id"].to_numpy(), position)]
    frame["alpha"] = cols["col_mass"].to_numpy() / seen_by
    return frame.sort_values(["prompt_id", "layer", "head", "position"], ignore_index=True)


def hidden_sinks(model, prompts, *, threshold: float = 0.1, min_queries: int = 10, batch_size: int = 4,
                 backend: str = "auto") -> pd.DataFrame:
    """Sinks other than the first token: keys whose α exceeds ``threshold`` (ACT).

    Args:
        threshold: α above which a non-first token is a sink. Default 0.1, Yu et al. 2024,
            "Unveiling and Harnessing Hidden Attention Sinks" (ACT).
        min_queries: keys seen by fewer queries are left out: with Gu et al.'s normalization the
            α of the last keys averages a handful of rows (the last key's α is its own
            self-attention), which says nothing about a sink. 10 makes a key that takes all of
            one query's attention fall at the 0.1 bar.
    Returns:
        The rows of `token_sinks` (``prompt_id, layer, head, position, token, alpha``) with
        position ≥ 1 and alpha > threshold, strongest first.
    """
    threshold = fraction("threshold", threshold, high_open=True)  # α lies in [0, 1]
    min_queries = positive_int("min_queries", min_queries)
    frame = token_sinks(model, prompts, batch_size=batch_size, backend=backend)
    lengths = frame.groupby("prompt_id")["position"].transform("max") + 1
    seen_by = lengths - frame["position"] if model.is_causal else lengths
    keep = (frame["position"] >= 1) & (frame["alpha"] > threshold) & (seen_by >= min_queries)
    return frame[keep].sort_values("alpha", ascending=False, ignore_index=True)


# -- hidden states -------------------------------------------------------------------------------------
def _resid_batches(model, prompts, batch_size: int, reduce):
    """Run the bridge over ``prompts`` and call ``reduce(layer, resid [B, T, d], lengths, prompt_ids)``
    on every ``blocks.{L}.hook_resid_post`` inside the hook (nothing is stored)."""
    batch_size = positive_int("batch_size", batch_size)
    ids, mask = model.to_tokens(prompts)
    for start in range(0, ids.shape[0], batch_size):
        chunk, chunk_mask = ids[start:start + batch_size], mask[start:start + batch_size]
        lengths = chunk_mask.sum(-1).tolist()
        width = max(lengths)
        chunk, chunk_mask = chunk[:, :width], chunk_mask[:, :width]
        pids = list(range(start, start + chunk.shape[0]))

        def make(layer: int):
            def hook(resid, hook=None):  # noqa: ARG001 - (batch, pos, d_model)
                reduce(layer, resid.detach(), lengths, pids)
                return resid
            return hook

        fns = {f"blocks.{layer}.hook_resid_post": make(layer) for layer in range(model.n_layers)}
        with torch.no_grad(), hooks(model, fns):
            run_bridge(model, chunk, chunk_mask, return_type=None)


def secondary_sinks(model, prompts, *, cos_threshold: float = 0.9, batch_size: int = 8) -> pd.DataFrame:
    """Tokens whose hidden state lines up with the first token's, and for how many layers.

    For every layer the cosine between each token's ``hook_resid_post`` and the first token's
    is taken; a token is a secondary sink in a layer when |cos| exceeds ``cos_threshold``.
    Consecutive layers form one sink, labelled by its lifetime (``n_layers``).

    Args:
        cos_threshold: default 0.9, Wong et al. 2025, "Secondary Attention Sinks".
    Returns:
        DataFrame ``prompt_id, position, token, start_layer, end_layer, n_layers, mean_cos``,
        one row per run of consecutive layers (longest first).
    """
    cos_threshold = fraction("cos_threshold", cos_threshold, high_open=True)  # |cos| > 1 never holds
    tokens = _prompt_tokens(model, prompts)
    cos = [np.zeros((model.n_layers, len(t))) for t in tokens]  # per prompt (layer, pos)

    def reduce(layer, resid, lengths, pids):
        first = resid[:, :1, :].float()  # (batch, 1, d)
        sim = torch.nn.functional.cosine_similarity(resid.float(), first, dim=-1).cpu().numpy()  # (batch, pos)
        for b, (n, pid) in enumerate(zip(lengths, pids)):
            cos[pid][layer] = sim[b, :n]

    _resid_batches(model, prompts, batch_size, reduce)
    rows = []
    for pid, grid in enumerate(cos):
        hit = np.abs(grid) > cos_threshold  # (layer, pos)
        for pos in range(1, grid.shape[1]):
            layer = 0
            while layer < model.n_layers:
                if not hit[layer, pos]:
                    layer += 1
                    continue
                end = layer
                while end + 1 < model.n_layers and hit[end + 1, pos]:
                    end += 1
                rows.append({"prompt_id": pid, "position": pos, "token": tokens[pid][pos], "start_layer": layer,
                             "end_layer": end, "n_layers": end - layer + 1,
                             "mean_cos": float(np.abs(grid[layer:end + 1, pos]).mean())})
                layer = end + 1
    columns = ["prompt_id", "position", "token", "start_layer", "end_layer", "n_layers", "mean_cos"]
    frame = pd.DataFrame(rows, columns=columns)
    return frame.sort_values(["n_layers", "mean_cos"], ascending=False, ignore_index=True)


def massive_activations(model, prompts, *, abs_threshold: float = 100.0, ratio_threshold: float = 1000.0,
                        batch_size: int = 8) -> pd.DataFrame:
    """Hidden-state entries far larger than the rest (Sun et al. 2024, "Massive Activations in LLMs").

    An entry h[t, i] of ``blocks.{L}.hook_resid_post`` is massive when |h| > ``abs_threshold``
    and |h| / median(|h|) > ``ratio_threshold``, the median over all entries of that layer's
    hidden state for the prompt.

    Args:
        abs_threshold: default 100 (Sun et al. 2024).
        ratio_threshold: default 1000 (Sun et al. 2024: "about 1,000 times larger than the median").
    Returns:
        DataFrame ``prompt_id, layer, position, token, dim, value, ratio`` (often empty for small
        models), largest |value| first.
    """
    abs_threshold = positive("abs_threshold", abs_threshold)
    ratio_threshold = positive("ratio_threshold", ratio_threshold)
    tokens = _prompt_tokens(model, prompts)
    rows = []

    def reduce(layer, resid, lengths, pids):
        for b, (n, pid) in enumerate(zip(lengths, pids)):
            h = resid[b, :n].float()  # (pos, d)
            mag = h.abs()
            median = float(mag.median())
            ratio = mag / max(median, 1e-12)
            for pos, dim in (mag > abs_threshold).logical_and(ratio > ratio_threshold).nonzero().tolist():
                rows.append({"prompt_id": pid, "layer": layer, "position": pos, "token": tokens[pid][pos],
                             "dim": dim, "value": float(h[pos, dim]), "ratio": float(ratio[pos, dim])})

    _resid_batches(model, prompts, batch_size, reduce)
    frame = pd.DataFrame(rows, columns=["prompt_id", "layer", "position", "token", "dim", "value", "ratio"])
    return frame.iloc[np.argsort(-frame["value"].abs().to_numpy(), kind="stable")].reset_index(drop=True)


# -- registry -------------------------------------------------------------------------------------------
def _sink_figures(frame):
    share = sink_share(frame)
    eps = frame.attrs.get("eps", SINK_EPS)
    fig = head_grid(frame, "sink_score", colorscale="Reds", label="α₀",
                    title=f"First-token sink score α₀ (Sink^ε = {100 * share:.0f}% of heads at ε = {eps}; ringed)")
    return [ring_heads(fig, frame[frame["sink_score"] > eps], "sink head")]


_GU = "Gu et al. 2024, When Attention Sink Emerges in Language Models (α, Sink^ε, ε = 0.3)"
register(Analyzer("sink_scores", sink_scores, "First-token attention sinks", mode="stream",
                  figures=_sink_figures, sources=(_GU,), family="sinks", findings=findings.sinks,
                  summary=summaries.sinks))
register(Analyzer("token_sinks", token_sinks, "Attention received by every token", mode="stream",
                  figures=lambda frame: [token_sink_view(frame)], family="sinks", findings=findings.token_sinks,
                  sources=(_GU, "Yu et al. 2024, Unveiling and Harnessing Hidden Attention Sinks (ACT, α > 0.1)")))
register(Analyzer("secondary_sinks", secondary_sinks, "Secondary sinks (hidden states aligned with the first token)",
                  mode="exact", figures=lambda frame: [secondary_sinks_figure(frame)], family="sinks",
                  findings=findings.secondary_sinks,
                  sources=("Wong et al. 2025, Secondary Attention Sinks (|cos| > 0.9)",)))
register(Analyzer("massive_activations", massive_activations, "Massive activations", mode="exact",
                  figures=lambda frame: [massive_activations_figure(frame)], family="massive activations",
                  page="sinks", findings=findings.massive, summary=summaries.massive,
                  sources=("Sun et al. 2024, Massive Activations in Large Language Models (|h| > 100, > 1000× median)",)))
