"""Faithfulness of an edge circuit: the task metric when only its edges carry what the current
run computes and every other edge carries an ablated value (Hanna et al. 2024's evaluation of a
graph; Conmy et al. 2023's ACDC). With no edge kept and resample ablation, every node reads only
corrupted values, so the run is exactly the corrupted run; with every edge kept, the clean one.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from workbench import checks, edges
from workbench.analyzers.circuits import encode_task, logit_diff, read_task
from workbench.errors import WorkbenchError

#: What an edge outside the circuit carries. ``resample`` (default): the upstream node's output
#: on the same example's corrupted prompt, a draw from the task's corrupted distribution (Hanna
#: et al., ACDC); ``mean``: its mean output over reference prompts (default: the task's
#: corrupted prompts, never the clean prompts being scored); ``zero``: nothing.
ABLATIONS = ("resample", "mean", "zero")


def edge_mask(g: edges.Graph, chosen) -> np.ndarray:
    """``[U, V]`` bool of the chosen edges, from an edge frame (its ``in_circuit`` rows) or
    ``(upstream, downstream)`` name pairs."""
    if isinstance(chosen, pd.DataFrame):
        if not {"upstream", "downstream"} <= set(chosen.columns):
            raise WorkbenchError(f"an edge frame needs columns upstream, downstream; it has {list(chosen.columns)}")
        if "in_circuit" in chosen.columns:
            chosen = chosen[chosen["in_circuit"].astype(bool)]
        chosen = zip(chosen["upstream"], chosen["downstream"])
    up = {name: i for i, name in enumerate(g.upstream())}
    down = {name: j for j, name in enumerate(g.downstream())}
    valid = g.valid()
    mask = np.zeros_like(valid)
    for item in chosen:
        try:
            u, v = item
            i, j = up[u], down[v]
        except (KeyError, TypeError, ValueError):
            raise WorkbenchError(f"edges must be (upstream, downstream) node names such as ('a0.h1', "
                                 f"'a1.h0<k>'); got {item!r}") from None
        if not valid[i, j]:
            raise WorkbenchError(f"there is no edge {u} -> {v}: {u} is not computed before {v} reads")
        mask[i, j] = True
    return mask


@torch.no_grad()
def reference_means(model, prompts, *, by_position: bool = False) -> torch.Tensor:
    """Mean output of every upstream node over ``prompts``.

    Args:
        prompts: strings or token ids; grouped by token length, so no padding enters a mean.
        by_position: one mean per position (Wang et al.'s position-aware means, for prompts that
            share one template: all must have the same token length).
    Returns:
        ``[U, d_model]``, or ``[pos, U, d_model]`` with ``by_position``.
    """
    ids, mask = model.to_tokens(prompts)
    lengths = mask.sum(-1)
    if by_position and bool((lengths != lengths[0]).any()):
        raise WorkbenchError("position-aware means need reference prompts of one token length "
                             f"(one template); got lengths {sorted(set(lengths.tolist()))}")
    total, count = None, 0
    for n in sorted(set(lengths.tolist())):
        chunk = ids[lengths == n][:, :n]
        flat = edges.run(model, chunk)[1].flat().double()  # (b, p, U, d)
        part = flat.sum(0) if by_position else flat.sum((0, 1))
        total = part if total is None else total + part
        count += chunk.shape[0] if by_position else chunk.shape[0] * n
    return (total / count).float()


class Evaluator:
    """The task metric (mean LD) of edge sets on one task, with the ablation's values cached."""

    def __init__(self, model, task, *, ablation: str = "resample", reference=None, by_position: bool = False):
        self.ablation = checks.choice("ablation", ablation, ABLATIONS)
        self.model, self.g = model, edges.check_model(model)
        self.groups = encode_task(model, task)
        self.refs: list = []
        if self.ablation == "resample":
            with torch.no_grad():
                self.refs = [edges.run(model, group.corrupt)[1].flat() for group in self.groups]  # (b, p, U, d)
        elif self.ablation == "mean":
            if reference is None:
                reference = [row["corrupted_prompt"] for row in read_task(task, model)]
            means = reference_means(model, reference, by_position=by_position).to(model.device)
            self.refs = [means] * len(self.groups)  # (U, d) or (p, U, d)
        else:
            self.refs = [None] * len(self.groups)
        self.reference = {"resample": "the same example's corrupted prompt",
                          "mean": "mean over " + ("the task's corrupted prompts" if reference is None else
                                                  f"{len(reference)} reference prompts")
                          + (", per position" if by_position else ""),
                          "zero": "zero"}[self.ablation]

    @torch.no_grad()
    def metric(self, kept: np.ndarray) -> float:
        """Mean LD with every valid edge outside ``kept [U, V]`` carrying its ablated value."""
        g = self.g
        cut = torch.as_tensor(g.valid() & ~kept)
        total, count = 0.0, 0
        for group, ref in zip(self.groups, self.refs):
            state = {"done": 0, "diff": None}  # diff[:, :, u] = ablated − current value of upstream u

            def delta(site, layer, ups, ref=ref, state=state):
                n = g.prefix(site, layer)
                a = cut[:n, site_cols(g, site, layer)]
                if not bool(a.any()):
                    return None
                cur, done = ups.flat(n), state["done"]  # (b, p, n, d); nodes before `done` are filled
                if state["diff"] is None:
                    state["diff"] = torch.empty_like(ups.buffer)  # (b, p, U, d)
                if n > done:  # each upstream node's difference is computed once, when first read
                    new = cur[:, :, done:n]
                    state["diff"][:, :, done:n] = -new if ref is None else ref[..., done:n, :] - new
                    state["done"] = n
                base = state["diff"][:, :, :n]  # (b, p, n, d)
                full, part = a.all(1), a.any(1) & ~a.all(1)  # (n,): upstreams cut into every column / some
                # δ_v = Σ_u cut[u, v] base_u: one weighted sum for the rows cut everywhere, a product for the rest
                out = (full.to(base.dtype) @ base)[:, :, None]  # (b, p, 1, d)
                if not bool(part.any()):  # the same shift for every reader of the site
                    return out[:, :, 0]
                rows = part.nonzero()[:, 0]
                out = out + a[rows].T.to(base.dtype) @ base[:, :, rows]  # (cols, r) @ (b, p, r, d)
                out = out.expand(*out.shape[:2], a.shape[1], out.shape[-1])  # (b, p, cols, d)
                return split_attn(out, g.n_heads) if site == "attn" else out[:, :, 0]

            ld = logit_diff(edges.run(self.model, group.clean, delta=delta)[0], group)
            total, count = total + float(ld.sum()), count + len(ld)
        return total / count


def batches(groups, size: int) -> list:
    """Split length groups into batches of at most ``size`` examples (bounds a backward's memory)."""
    out = []
    for group in groups:
        for start in range(0, len(group.clean), size):
            part = slice(start, start + size)
            out.append(type(group)(group.clean[part], group.corrupt[part], group.answer[part], group.wrong[part]))
    return out


def site_cols(g: edges.Graph, site: str, layer: int | None) -> list[int]:
    """Downstream indices a site's delta covers: q, k, v of every head (attn), or one node."""
    if site == "attn":
        return [g.down_head(k, layer, h) for k in edges.KINDS for h in range(g.n_heads)]
    return [g.down_mlp(layer)] if site == "mlp" else [g.down_logits]


def split_attn(d: torch.Tensor, n_heads: int):
    """``[batch, pos, 3 * heads, d]`` (q, k, v blocks) -> three ``[batch, pos, heads, d]``."""
    return tuple(d[:, :, i * n_heads:(i + 1) * n_heads] for i in range(3))


def edge_faithfulness(model, task, circuit, *, ablation: str = "resample", reference=None,
                      by_position: bool = False) -> dict:
    """The task metric with only ``circuit``'s edges kept, relative to the full model.

    Args:
        model: a causal `ModelHandle` (see `workbench.edges.SUPPORTED`).
        task: as for `workbench.circuit`.
        circuit: an `edge_circuit` frame (its ``in_circuit`` rows) or ``(upstream, downstream)`` pairs.
        ablation: what an edge outside the circuit carries (`ABLATIONS`; default ``"resample"``).
        reference: prompts for ``"mean"`` (default: the task's corrupted prompts).
        by_position: position-aware means (reference prompts of one template).
    Returns:
        dict ``faithfulness`` = M(C)/M(full) (Wang et al.'s F(C)/F(M)), ``normalized`` =
        (M(C) − M(∅))/(M(full) − M(∅)), ``metric_full``, ``metric_circuit``, ``metric_empty``
        (every edge ablated), ``n_edges``, ``ablation``, ``reference``.
    """
    ev = Evaluator(model, task, ablation=ablation, reference=reference, by_position=by_position)
    kept = edge_mask(ev.g, circuit)
    full, empty, only = ev.metric(ev.g.valid()), ev.metric(np.zeros_like(kept)), ev.metric(kept)
    return {"faithfulness": only / full, "normalized": (only - empty) / (full - empty), "metric_full": full,
            "metric_circuit": only, "metric_empty": empty, "n_edges": int(kept.sum()),
            "ablation": ev.ablation, "reference": ev.reference}
