"""Attention Workbench: record, analyse and view what attention heads do.

    >>> import workbench as wb
    >>> model = wb.load_model("demo")
    >>> patterns = wb.capture_patterns(model, ["When Mary and John went to the store"])
    >>> run = wb.analyze(model, out="runs/demo")
"""

from workbench.analyze import analyze
from workbench.analyzers import ANALYZERS, Analyzer, register
from workbench.analyzers.summary import head_summary
from workbench.capture import capture_patterns, capture_stats
from workbench.errors import WorkbenchError
from workbench.models import SOURCES, ModelHandle, load_model
from workbench.prompts import load_prompts
from workbench.report import report  # noqa: F401  (wb.report(run, "report.html"))
from workbench.run import Run

__all__ = [
    "ANALYZERS", "Analyzer", "ModelHandle", "Run", "SOURCES", "WorkbenchError", "analyze", "capture_patterns", "capture_stats",
    "head_summary", "load_model", "load_prompts", "register",
]
__version__ = "0.1.0"
