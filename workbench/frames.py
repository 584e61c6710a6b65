"""Tidy frames built the same way everywhere: one row per (layer, head), layer-major."""

from __future__ import annotations

from typing import Mapping

import numpy as np
import pandas as pd


def head_frame(scores: Mapping[str, object], **constants) -> pd.DataFrame:
    """A frame ``layer, head, <score>...`` from per-head grids.

    Args:
        scores: ``{column: array-like [n_layers, n_heads]}`` (tensors, arrays or nested lists),
            all of one shape.
        constants: columns holding one value for every row (e.g. ``n_queries=120``).
    Returns:
        DataFrame with one row per (layer, head) in layer-major order: ``layer, head``, then the
        scores in the given order, then the constants.
    """
    grids = {name: np.asarray(value.detach().cpu() if hasattr(value, "detach") else value)
             for name, value in scores.items()}
    shapes = {g.shape for g in grids.values()}
    if len(shapes) != 1 or len(next(iter(shapes))) != 2:
        raise ValueError(f"head_frame needs grids of one [layer, head] shape; got {sorted(shapes)}")
    n_layers, n_heads = next(iter(shapes))
    layer, head = np.meshgrid(np.arange(n_layers), np.arange(n_heads), indexing="ij")
    frame = pd.DataFrame({"layer": layer.ravel(), "head": head.ravel()})
    for name, grid in grids.items():
        frame[name] = grid.ravel()
    for name, value in constants.items():
        frame[name] = value
    return frame
