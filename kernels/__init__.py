"""Fused per-head attention statistics that never build the N×N matrix (see kernels.head_stats)."""

from .head_stats import HeadStats, head_stats

__all__ = ["head_stats", "HeadStats"]
