"""Pruning curves (Michel et al. 2019): loss and accuracy as heads are masked in order of a
ranking, least important first, a fixed share of the heads at a time; several rankings (and
random orders, the control) on one plot. Every step's mask runs in the same batched forwards
(`workbench.masked.masked_forward`); the loss is `workbench.analyzers.importance`'s.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import pandas as pd
import torch

from workbench import checks
from workbench.analyzers.importance import _batches, _gradient, _masked_totals, layer_normalized
from workbench.errors import WorkbenchError


def _scores(model, importance: pd.DataFrame, column: str = "importance") -> torch.Tensor:
    """A `head_importance`-like frame as a ``[layer, head]`` grid of ``column``."""
    n_total = model.n_layers * model.n_heads
    if not {"layer", "head", column} <= set(importance.columns) or len(importance) != n_total:
        raise WorkbenchError(f"importance must be a head_importance frame with {n_total} rows "
                             f"(layer, head, {column}); got {len(importance)} rows {list(importance.columns)}")
    scores = torch.zeros(model.n_layers, model.n_heads, dtype=torch.float64)
    layers = torch.tensor(importance["layer"].to_numpy(dtype=int))
    heads = torch.tensor(importance["head"].to_numpy(dtype=int))
    scores[layers, heads] = torch.tensor(importance[column].to_numpy(dtype=float))
    return scores


def _order(scores: torch.Tensor, mask: torch.Tensor, normalize_layers: bool) -> list[tuple[int, int]]:
    """Alive heads of ``mask``, least important first (ties by layer, head)."""
    if normalize_layers:
        scores = layer_normalized(scores)
    alive = (mask > 0).nonzero().tolist()
    return [tuple(lh) for lh in sorted(alive, key=lambda lh: (float(scores[lh[0], lh[1]]), lh[0], lh[1]))]


def _prune_masks(model, order: list[tuple[int, int]], per_step: int) -> tuple[list[torch.Tensor], list[list]]:
    """Masks with the first 0, per_step, 2·per_step, … heads of ``order`` zeroed."""
    masks, pruned = [torch.ones(model.n_layers, model.n_heads)], [[]]
    for start in range(0, len(order), per_step):
        mask = masks[-1].clone()
        chosen = order[start:start + per_step]
        for layer, head in chosen:
            mask[layer, head] = 0.0
        masks.append(mask)
        pruned.append(chosen)
    return masks, pruned


def _curve_frame(model, batches, masks, pruned) -> pd.DataFrame:
    with torch.no_grad():
        loss, right, total = _masked_totals(model, batches, torch.stack(masks))  # (steps,) each
    n_prompts = sum(b.ids.shape[0] for b in batches)
    return pd.DataFrame({
        "step": range(len(masks)),
        "n_pruned": [int((m == 0).sum()) for m in masks],
        "fraction_pruned": [float((m == 0).float().mean()) for m in masks],
        "loss": (loss.double() / n_prompts).tolist(),
        "accuracy": (right.double() / total.clamp(min=1).double()).tolist(),
        "pruned": [" ".join(f"L{l}H{h}" for l, h in heads) for heads in pruned],
    })


def _per_step(model, step) -> int:
    step = checks.fraction("step", step)
    return max(1, math.ceil(step * model.n_layers * model.n_heads - 1e-9))


def pruning_curve(model, prompts, *, answers=None, step: float = 0.1, importance: pd.DataFrame | None = None,
                  recompute: bool = False, normalize_layers: bool = False, batch_size: int = 8,
                  seed: int = 0) -> pd.DataFrame:
    """Loss and accuracy as the least important heads are masked, ``step`` of all heads at a time.

    Heads are zeroed in order of increasing gradient importance (global; per layer L2 normalised
    with ``normalize_layers=True``, as in Michel et al. 2019's pruning experiment), the least
    important ``step`` fraction of all heads (10%) at each step. ``recompute=True`` re-estimates
    the importance with the heads pruned so far masked before every step (slower: one backward
    pass a step). With ``importance`` (a `head_importance` frame, any method) the order is that
    frame's ``importance`` instead (see `pruning_curves` for several orders on one plot).

    Args:
        answers: as in `head_importance` (task loss and answer accuracy).
    Returns:
        DataFrame ``step, n_pruned, fraction_pruned, loss, accuracy, pruned``: one row per step
        from no head to all heads pruned; ``pruned`` lists the heads masked at that step
        (``"L1H3 L0H2"``). Accuracy is top-1 on the loss targets.
    """
    per_step = _per_step(model, step)
    batches = _batches(model, prompts, batch_size, seed, answers)
    if importance is not None:
        scores = _scores(model, importance)
        masks, pruned = _prune_masks(model, _order(scores, torch.ones(model.n_layers, model.n_heads), False), per_step)
        return _curve_frame(model, batches, masks, pruned)
    scores = _gradient(model, batches, torch.ones(1, model.n_layers, model.n_heads))
    masks, pruned = [torch.ones(model.n_layers, model.n_heads)], [[]]
    while masks[-1].any():
        mask = masks[-1].clone()
        if recompute:
            scores = _gradient(model, batches, mask[None])
        chosen = _order(scores, mask, normalize_layers)[:per_step]
        for layer, head in chosen:
            mask[layer, head] = 0.0
        masks.append(mask)
        pruned.append(chosen)
    return _curve_frame(model, batches, masks, pruned)


def pruning_curves(model, prompts, rankings, *, answers=None, step: float = 0.1, n_random: int = 1,
                   batch_size: int = 8, seed: int = 0) -> pd.DataFrame:
    """Pruning curves under several rankings (and random orders as the control), for one plot.

    Args:
        rankings: ``{name: frame}`` of head rankings with ``layer, head, importance`` (any
            `head_importance` method, or any per-head score renamed to ``importance``); the
            least important heads are pruned first.
        n_random: random orders drawn as the control (seeded), named ``"random"``,
            ``"random 2"``, ...
        answers, step, batch_size, seed: as in `pruning_curve`.
    Returns:
        DataFrame ``ranking, step, n_pruned, fraction_pruned, loss, accuracy, pruned``: every
        curve's masks run in the same batched forwards.
    """
    per_step = _per_step(model, step)
    n_random = checks.integer("n_random", n_random, low=0)
    if not isinstance(rankings, Mapping) or not rankings:
        raise WorkbenchError(f"rankings must be a non-empty dict {{name: head frame}}; got {type(rankings).__name__}")
    batches = _batches(model, prompts, batch_size, seed, answers)
    every = torch.ones(model.n_layers, model.n_heads)
    orders = {str(name): _order(_scores(model, frame), every, False) for name, frame in rankings.items()}
    generator = torch.Generator().manual_seed(seed)
    heads = [(l, h) for l in range(model.n_layers) for h in range(model.n_heads)]
    for i in range(n_random):
        orders["random" if i == 0 else f"random {i + 1}"] = [heads[j] for j in torch.randperm(len(heads), generator=generator)]
    names, all_masks, all_pruned = [], [], []
    for name, order in orders.items():
        masks, pruned = _prune_masks(model, order, per_step)
        names += [name] * len(masks)
        all_masks += masks
        all_pruned += pruned
    frames = []
    curve = _curve_frame(model, batches, all_masks, all_pruned)
    curve.insert(0, "ranking", names)
    for _, part in curve.groupby("ranking", sort=False):
        frames.append(part.assign(step=range(len(part))))
    return pd.concat(frames, ignore_index=True)
