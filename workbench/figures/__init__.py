"""Figures as pure functions of tidy frames, shared by the dashboard, the HTML report and notebooks.

Each function takes a frame (as an analysis returns it) and returns a ``plotly.graph_objects.Figure``;
none of them reads a model, a run or a file. Modules by what they draw: `grids` (layer × head),
`patterns` (attention patterns, layer thumbnails), `sinks`, `rankings` (ranked bars, pruning
curve, UMAP map), `tasks` (retrieval, circuits, saliency), `compare` (two runs side by side).
"""

from workbench.figures._common import block_mean, position_labels
from workbench.figures.compare import depth_profile, head_difference
from workbench.figures.grids import default_figures, head_grid, ring_heads, score_columns
from workbench.figures.patterns import MAX_PATTERN_SIDE, attention_pattern, example_pattern, layer_thumbnails
from workbench.figures.rankings import importance_ranking, pruning_curve_figure, umap_scatter
from workbench.figures.sinks import massive_activations_figure, secondary_sinks_figure, token_sink_view
from workbench.figures.tasks import (attribution_bars, circuit_figures, circuit_membership, correlation_grid,
                                     niah_heatmap, retrieval_grid)

__all__ = [
    "MAX_PATTERN_SIDE", "attention_pattern", "attribution_bars", "block_mean", "circuit_figures",
    "circuit_membership", "correlation_grid", "default_figures", "depth_profile", "example_pattern",
    "head_difference", "head_grid", "importance_ranking", "layer_thumbnails", "massive_activations_figure",
    "niah_heatmap", "position_labels", "pruning_curve_figure", "retrieval_grid", "ring_heads", "score_columns",
    "secondary_sinks_figure", "token_sink_view", "umap_scatter",
]
