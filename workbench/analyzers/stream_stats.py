"""The streaming statistics as a table of their own: one row per (prompt, layer, head).

This is the per-prompt table that both engines of `analyze` write (``engine="local"`` in this
process, ``engine="ray"`` as Parquet shards from Ray Data actors); the two agree row for row.
"""

from __future__ import annotations

from workbench.analyzers import Analyzer, register
from workbench.capture import capture_stats

register(Analyzer(
    "capture_stats", capture_stats, "Streaming head statistics per prompt (no N×N matrix)", mode="stream",
    sources=("Voita et al. 2019 (max attention = confidence)",
             "Gu et al., When Attention Sink Emerges (attention on the first token)"),
))
