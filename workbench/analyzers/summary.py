"""Per-head summary of exact attention patterns: entropy and maximum attention per query row."""

from __future__ import annotations

import pandas as pd

from workbench.analyzers import Analyzer, register
from workbench import findings
from workbench.checks import positive_int
from workbench.description import ROW_FIELDS, Description, resolve
from workbench.frames import head_frame

BATCH = 8


def head_summary(model, prompts, *, batch_size: int = BATCH, capture: Description | None = None) -> pd.DataFrame:
    """Mean row entropy and mean maximum attention of every head over real query positions.

    Entropy is Shannon's, in nats, of each query row of ``blocks.{L}.attn.hook_pattern``;
    max_prob is the row maximum (Voita et al. 2019's "confidence"). Padding positions are
    excluded; the means are over all real query rows of all prompts (so longer prompts weigh
    more, unlike `head_patterns`' mean of per-prompt means).

    Args:
        model: a `ModelHandle`.
        prompts: strings or token ids (None with ``capture``: the capture's prompts).
        batch_size: prompts per forward, when no capture is given.
        capture: a `Description` of these prompts from `wb.describe` (shared with the other
            descriptive analyses).
    Returns:
        DataFrame with columns ``layer, head, entropy, max_prob, n_queries``.
    """
    desc = resolve(model, prompts, capture, analysis="head_summary", batch_size=batch_size)
    count = int(desc.lengths.sum())
    sums = desc.row_sums.sum(0)  # (layer, head, field)
    return head_frame({name: sums[..., ROW_FIELDS.index(name)] / count for name in ("entropy", "max_prob")},
                      n_queries=count)


register(Analyzer(
    "head_summary", head_summary, "Head summary: entropy and max attention", mode="exact", capture=True,
    sources=("Voita et al. 2019, Analyzing Multi-Head Self-Attention (confidence = max attention)",),
    family="head types", page="", findings=findings.summary_heads,
))
