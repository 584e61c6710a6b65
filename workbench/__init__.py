"""Attention Workbench: record, analyse and view what attention heads do.

    >>> import workbench as wb
    >>> model = wb.load_model("demo")
    >>> patterns = wb.capture_patterns(model, ["When Mary and John went to the store"])
    >>> run = wb.analyze(model, out="runs/demo")
"""

from workbench.analyze import analyze
from workbench.analyzers import ANALYZERS, Analyzer, register
from workbench.analyzers.summary import head_summary
from workbench.analyzers.accuracy import task_accuracy
from workbench.analyzers.circuits import circuit, circuit_agreement, circuit_faithfulness, circuit_overlap, task_metric
from workbench.analyzers.circuits_edge_eval import edge_faithfulness
from workbench.analyzers.circuits_faithful import circuit_curve
from workbench.analyzers.circuits_edges import edge_circuit, edge_overlap, edge_scores
from workbench.analyzers.retrieval import niah_grid, retrieval_scores
from workbench.analyzers.saliency import saliency_alignment, token_attributions
from workbench.analyzers.importance import head_importance
from workbench.analyzers.pruning import pruning_curve, pruning_curves
from workbench.analyzers.causal import causal_check
from workbench.analyzers.duo import duo_attention
from workbench.analyzers.duo_deploy import duo_effect
from workbench.analyzers.patterns import head_patterns
from workbench.analyzers.sinks import hidden_sinks, massive_activations, secondary_sinks, sink_scores, sink_share, token_sinks
from workbench.capture import capture_columns, capture_patterns, capture_stats
from workbench.description import Description, describe
from workbench.errors import WorkbenchError
from workbench import glossary  # wb.glossary.describe("sink_score"): every score column defined once
from workbench.heads import HeadEdit, ablate_heads, edit_heads, head_mask, head_means, patch_heads, record_heads
from workbench.heads import ablate_heads as ablate  # the short name: wb.ablate(model, heads)
from workbench.models import SOURCES, ModelHandle, load_model
from workbench.prompts import load_prompts
from workbench.report import report  # wb.report(run, "report.html")
from workbench.run import Run
from workbench.tasks import task_suite

__all__ = [
    "ANALYZERS", "SOURCES", "ablate", "ablate_heads", "analyze", "Analyzer", "capture_columns",
    "capture_patterns", "capture_stats", "circuit", "circuit_agreement", "circuit_curve", "circuit_faithfulness",
    "circuit_overlap",
    "describe", "Description", "edit_heads", "glossary", "HeadEdit", "head_importance", "head_mask", "head_means",
    "head_patterns", "head_summary", "hidden_sinks", "patch_heads", "record_heads",
    "causal_check", "duo_attention", "duo_effect", "pruning_curves",
    "edge_circuit", "edge_faithfulness", "edge_overlap", "edge_scores",
    "load_model", "load_prompts", "massive_activations", "ModelHandle", "niah_grid",
    "pruning_curve", "register", "report", "retrieval_scores", "Run", "saliency_alignment",
    "secondary_sinks", "sink_scores", "sink_share", "task_metric", "token_attributions",
    "task_accuracy", "task_suite", "token_sinks", "WorkbenchError",
]
__version__ = "0.1.0"
