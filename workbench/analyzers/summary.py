"""Per-head summary of exact attention patterns: entropy and maximum attention per query row."""

from __future__ import annotations

import pandas as pd
import torch

from workbench.analyzers import Analyzer, register
from workbench import findings
from workbench.capture import patterns_for_batch
from workbench.checks import positive_int

BATCH = 8


def head_summary(model, prompts, *, batch_size: int = BATCH) -> pd.DataFrame:
    """Mean row entropy and mean maximum attention of every head over real query positions.

    Entropy is Shannon's, in nats, of each query row of ``blocks.{L}.attn.hook_pattern``;
    max_prob is the row maximum (Voita et al. 2019's "confidence"). Padding positions are
    excluded; the means are over all real query rows of all prompts.

    Returns:
        DataFrame with columns ``layer, head, entropy, max_prob, n_queries``.
    """
    batch_size = positive_int("batch_size", batch_size)
    ids, mask = model.to_tokens(prompts)
    sums = torch.zeros(model.n_layers, model.n_heads, 2, dtype=torch.float64)
    count = 0
    for start in range(0, ids.shape[0], batch_size):
        chunk, chunk_mask = ids[start:start + batch_size], mask[start:start + batch_size]
        width = int(chunk_mask.sum(-1).max())
        chunk, chunk_mask = chunk[:, :width], chunk_mask[:, :width]
        patterns = patterns_for_batch(model, chunk, chunk_mask, range(model.n_layers))
        rows = chunk_mask.bool().cpu()  # (batch, query)
        count += int(rows.sum())
        for layer, pattern in patterns.items():  # (batch, head, query, key)
            p = pattern.double()
            entropy = -(torch.where(p > 0, p * p.log(), torch.zeros_like(p))).sum(-1)  # (batch, head, query)
            peak = p.amax(-1)
            keep = rows[:, None, :]
            sums[layer, :, 0] += (entropy * keep).sum((0, 2))
            sums[layer, :, 1] += (peak * keep).sum((0, 2))
    means = (sums / count).float()
    layer, head = torch.meshgrid(torch.arange(model.n_layers), torch.arange(model.n_heads), indexing="ij")
    return pd.DataFrame({
        "layer": layer.flatten().numpy(),
        "head": head.flatten().numpy(),
        "entropy": means[..., 0].flatten().numpy(),
        "max_prob": means[..., 1].flatten().numpy(),
        "n_queries": count,
    })


register(Analyzer(
    "head_summary", head_summary, "Head summary: entropy and max attention", mode="exact",
    sources=("Voita et al. 2019, Analyzing Multi-Head Self-Attention (confidence = max attention)",),
    family="head types", page="", findings=findings.summary_heads,
))
