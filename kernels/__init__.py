"""Fused per-head attention statistics that never build the N×N matrix (see kernels.head_stats).

Imports nothing from `workbench`: its one error type, `kernels.errors.WorkbenchError`, is the
class `workbench.WorkbenchError` re-exports.
"""

from .errors import WorkbenchError
from .head_stats import HeadStats, attention_stats, head_stats

__all__ = ["head_stats", "attention_stats", "HeadStats", "WorkbenchError"]
