"""Making figures small enough to ship: heatmaps over many tokens are block-averaged.

The report (and anything else that embeds figures in a page) calls `downsample_heatmaps` so a
heatmap never carries more than ``max_side`` cells along either axis; layer × head grids are far
below that and pass through unchanged.
"""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from workbench.figures import block_mean

#: Largest number of heatmap cells kept along one axis (a 128k-token pattern becomes 256 bins).
MAX_SIDE = 256


def _bin_labels(labels, n: int, factor: int) -> list:
    """Axis labels for the bins: the first position of each block for numeric axes; for token
    axes ``"start–end: first-token…"`` (kept unique, since a categorical axis merges equal labels)."""
    if labels is None:
        return [i * factor for i in range(-(-n // factor))]
    labels = list(labels)
    if all(isinstance(v, (int, float, np.integer, np.floating)) for v in labels):
        return [labels[start] for start in range(0, n, factor)]
    out = []
    for start in range(0, n, factor):
        stop = min(start + factor, n)
        out.append(f"{start}–{stop - 1}: {labels[start]}…")
    return out


def downsample_heatmaps(fig: go.Figure, *, max_side: int = MAX_SIDE) -> tuple[go.Figure, int]:
    """Block-average every heatmap trace with more than ``max_side`` rows or columns.

    Args:
        fig: any plotly figure; it is modified in place.
        max_side: the largest number of cells kept per axis.
    Returns:
        ``(fig, factor)``: the figure and the largest block size used (1 when nothing changed).
        Downsampled traces lose their per-cell ``customdata`` (it no longer names one cell) and
        the title says by how much they were reduced.
    """
    largest = 1
    for trace in fig.data:
        if trace.type != "heatmap" or trace.z is None:
            continue
        z = np.asarray(trace.z, dtype=float)
        if z.ndim != 2 or max(z.shape) <= max_side:
            continue
        fy, fx = -(-z.shape[0] // max_side), -(-z.shape[1] // max_side)
        n_rows, n_cols = z.shape
        trace.z = block_mean(z, fy, fx)
        trace.y = _bin_labels(trace.y, n_rows, fy)
        trace.x = _bin_labels(trace.x, n_cols, fx)
        trace.customdata = None
        trace.hovertemplate = "y %{y}<br>x %{x}<br>block mean %{z:.3g}<extra></extra>"
        largest = max(largest, fy, fx)
    if largest > 1:
        title = fig.layout.title.text or ""
        fig.update_layout(title=f"{title} (downsampled: mean over blocks of up to {largest} cells per axis)")
    return fig, largest
