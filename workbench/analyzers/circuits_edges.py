"""Edge-level circuits: which edges of the graph (`workbench.edges`) carry a task's behaviour.

Metric M: the task's mean logit difference, LD = logit(answer) − logit(corrupted_answer) at the
last position (Wang et al. 2022), as for node circuits. An edge's effect is what M loses when that
edge alone carries its value from the corrupted run while every other edge carries the clean one
(noising, as Hanna et al. 2024 score edges):

- ``activation_patching`` — exact: one forward per edge with ``δ_v = a_u(corrupted) − a_u(clean)``
  added to v's input. For small models (the check the others are measured against).
- ``eap`` — edge attribution patching (Syed et al. 2023): the first-order estimate
  ``(a_u(corrupted) − a_u(clean)) · ∂M/∂x_v`` at the clean run; one backward for all edges.
- ``eap_ig`` — EAP with integrated gradients (Hanna et al. 2024, "Have Faith in Faithfulness"):
  the same difference times ``∂M/∂x_v`` averaged over ``steps`` inputs interpolated from the
  corrupted toward the clean embeddings, ``input(α) = corrupted + α (clean − corrupted)``,
  ``α = k/steps, k = 1..steps``. It does not vanish where the clean run is saturated (a
  confident attention pattern), which is where EAP's single gradient misses edges.

``score`` = (M(clean) − M(edge corrupted)) / (M(clean) − M(corrupted)): the share of the
clean–corrupted gap the edge carries (1 = corrupting it alone removes the whole behaviour;
negative = corrupting it helps, as a negative name mover's input would).

An edge circuit is judged as node circuits are: the edges outside it carry ablated values, those
inside carry what the current run computes (Hanna et al.'s evaluation of a graph), and its
faithfulness is M(circuit) / M(full model), with (M(C) − M(∅)) / (M(full) − M(∅)) beside it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from workbench import checks, edges, overlap
from workbench.analyzers.circuits import encode_task, logit_diff
from workbench.analyzers.circuits_edge_eval import (
    Evaluator,
    batches,
    site_cols,
    split_attn,
)
from workbench.analyzers.circuits_faithful import GROWTH, smallest_faithful, split_task
from workbench.errors import WorkbenchError

METHODS = ("eap_ig", "eap", "activation_patching")
STEPS = 5       # IG steps: Hanna et al. 2024 find m = 5 enough for EAP-IG
TARGET = 0.8    # faithfulness a selected circuit must reach (as for node circuits)
PATCH_BATCH = 512  # sequences per exact-patching forward (copies of a group, one edge each)
EXHAUSTIVE = 16    # edge-set sizes tried one by one before the geometric grid (graphs have 10^3-10^5 edges)
GRAD_BATCH = 8     # examples per gradient forward (its graph holds every head's q/k/v inputs)


# -- per-group runs ------------------------------------------------------------------------------
@torch.no_grad()
def _record(model, group):
    lc, up_c = edges.run(model, group.clean)
    lx, up_x = edges.run(model, group.corrupt)
    return logit_diff(lc, group), logit_diff(lx, group), up_c.flat(), up_x.flat()  # (b,), (b,), (b, p, U, d) x2


# -- scores --------------------------------------------------------------------------------------
def _gradient_scores(model, g: edges.Graph, groups, steps: int, integrated: bool) -> tuple[np.ndarray, float, float]:
    """Σ over examples of ``(a_u(corr) − a_u(clean)) · mean_k ∂M/∂x_v`` ``[U, V]``, and Σ LD clean/corr."""
    scores = torch.zeros(g.n_upstream, g.n_downstream, dtype=torch.float64)
    sums = [0.0, 0.0]
    n_steps = steps if integrated else 1
    for group in groups:
        ld_c, ld_x, up_c, up_x = _record(model, group)
        sums[0], sums[1] = sums[0] + float(ld_c.sum()), sums[1] + float(ld_x.sum())
        diff = up_x - up_c  # (b, p, U, d): corrupted − clean, per upstream node
        b, p, _, d = diff.shape
        grads: dict = {}
        for k in range(1, n_steps + 1):
            leaves: dict = {}

            def delta(site, layer, ups, leaves=leaves, b=b, p=p, d=d, diff=diff):
                n = 3 * g.n_heads if site == "attn" else 1
                leaf = torch.zeros(b, p, n, d, dtype=diff.dtype, device=diff.device, requires_grad=True)
                leaves[(site, layer)] = leaf
                return split_attn(leaf, g.n_heads) if site == "attn" else leaf[:, :, 0]

            alpha = k / n_steps
            start = None if not integrated else up_x[:, :, 0] + alpha * (up_c[:, :, 0] - up_x[:, :, 0])
            with torch.enable_grad():
                logits, _ = edges.run(model, group.clean, delta=delta, input_value=start, record=False)
                keys = list(leaves)
                got = torch.autograd.grad(logit_diff(logits, group).sum(), [leaves[key] for key in keys])
            for key, grad in zip(keys, got):
                grads[key] = grads[key] + grad if key in grads else grad
        rows = diff.permute(2, 0, 1, 3).reshape(g.n_upstream, -1)  # (U, b * p * d)
        for (site, layer), grad in grads.items():  # grad: (b, p, n_cols, d), summed over steps
            n = g.prefix(site, layer)
            cols = grad.permute(2, 0, 1, 3).reshape(grad.shape[2], -1)  # (n_cols, b * p * d)
            scores[:n, site_cols(g, site, layer)] += (rows[:n] @ cols.T).double().cpu() / n_steps  # (n, n_cols)
    return scores.numpy(), sums[0], sums[1]


@torch.no_grad()
def _exact_scores(model, g: edges.Graph, groups) -> tuple[np.ndarray, float, float]:
    """Σ over examples of ``M(edge corrupted) − M(clean)`` for every valid edge ``[U, V]``."""
    scores = np.zeros((g.n_upstream, g.n_downstream))
    valid = g.valid()
    pairs = list(zip(*np.nonzero(valid)))
    site_of = {}  # downstream index -> (site, layer, column within the site)
    for layer in range(g.n_layers):
        for j, col in enumerate(site_cols(g, "attn", layer)):
            site_of[col] = ("attn", layer, j)
        site_of[g.down_mlp(layer)] = ("mlp", layer, 0)
    site_of[g.down_logits] = ("logits", None, 0)
    sums = [0.0, 0.0]
    for group in groups:
        ld_c, ld_x, up_c, up_x = _record(model, group)
        sums[0], sums[1] = sums[0] + float(ld_c.sum()), sums[1] + float(ld_x.sum())
        diff = up_x - up_c  # (b, p, U, d)
        b, p, _, d = diff.shape
        per = max(1, PATCH_BATCH // b)
        for start in range(0, len(pairs), per):
            chunk = pairs[start:start + per]  # copy i of the batch corrupts edge chunk[i]
            by_site: dict = {}
            for i, (u, v) in enumerate(chunk):
                site, layer, j = site_of[v]
                by_site.setdefault((site, layer), []).append((i, u, j))

            copies = len(chunk)

            def delta(site, layer, ups, by_site=by_site, copies=copies, b=b, p=p, d=d, diff=diff):
                todo = by_site.get((site, layer))
                if not todo:
                    return None
                n = 3 * g.n_heads if site == "attn" else 1
                out = torch.zeros(copies * b, p, n, d, dtype=diff.dtype, device=diff.device)
                for i, u, j in todo:
                    out[i * b:(i + 1) * b, :, j] = diff[:, :, u]
                return split_attn(out, g.n_heads) if site == "attn" else out[:, :, 0]

            logits, _ = edges.run(model, group.clean.repeat(len(chunk), 1), delta=delta, record=False)
            change = (logit_diff(logits, group).view(len(chunk), b) - ld_c[None]).sum(1).double().cpu().numpy()
            for (u, v), c in zip(chunk, change):
                scores[u, v] += c
    return scores, sums[0], sums[1]


def edge_scores(model, task, method: str = "eap_ig", *, steps: int = STEPS) -> pd.DataFrame:
    """Every valid edge's effect on the task (see the module docstring), without selecting.

    Returns:
        DataFrame ``upstream, downstream, score`` (one row per valid edge, graph order);
        attrs ``method, steps, ld_clean, ld_corrupted, n``.
    """
    method = checks.choice("method", method, METHODS)
    steps = checks.positive_int("steps", steps)
    g = edges.check_model(model)
    groups = encode_task(model, task)
    if method == "activation_patching":
        raw, ld_c, ld_x = _exact_scores(model, g, groups)
    else:
        raw, ld_c, ld_x = _gradient_scores(model, g, batches(groups, GRAD_BATCH), steps,
                                           integrated=method == "eap_ig")
    n = sum(len(gr.clean) for gr in groups)
    ld_c, ld_x = ld_c / n, ld_x / n
    gap = ld_c - ld_x
    if abs(gap) < 1e-6:
        raise WorkbenchError(f"clean and corrupted prompts give the same logit difference ({ld_c:.3g}); "
                             "edge scores relative to their gap are undefined")
    up, down = np.nonzero(g.valid())
    ups, downs = g.upstream(), g.downstream()
    frame = pd.DataFrame({"upstream": [ups[i] for i in up], "downstream": [downs[j] for j in down],
                          "score": -raw[up, down] / n / gap})
    frame.attrs.update(method=method, steps=steps if method == "eap_ig" else None, ld_clean=ld_c,
                       ld_corrupted=ld_x, n=n)
    return frame




# -- circuits ------------------------------------------------------------------------------------
def edge_circuit(model, task, method: str = "eap_ig", *, steps: int = STEPS, target: float = TARGET,
                 top_n: int | None = None, ablation: str = "resample", reference=None, held_out=None,
                 exhaustive: int = EXHAUSTIVE, growth: float = GROWTH, rtol: float = 0.0) -> pd.DataFrame:
    """Edge scores on a task, and the smallest top-|score| edge set whose faithfulness reaches ``target``.

    Args:
        model: a causal `ModelHandle` of a supported architecture (`workbench.edges.SUPPORTED`;
            grouped-query models included, see `workbench.edges`).
        task: as for `workbench.circuit` (prompt, answer, corrupted_prompt, corrupted_answer).
        method: ``"eap_ig"`` (default, Hanna et al. 2024), ``"eap"`` (Syed et al. 2023) or
            ``"activation_patching"`` (exact, one forward per edge: small models).
        steps: EAP-IG's interpolation steps (default 5, as Hanna et al.).
        target: the faithfulness M(C)/M(full) the circuit must reach (default 0.8). The search
            covers sets of at most half of the valid edges; when none reaches the target, no
            edge is marked and ``attrs["reached"]`` is False (the circuit is not padded).
        top_n: take the top ``top_n`` edges instead of searching (faithfulness still reported).
        ablation: what edges outside the circuit carry while it is judged (`ABLATIONS`, default
            ``"resample"``); reference: prompts for ``"mean"``.
        held_out: the rows faithfulness is measured on (`workbench.analyzers.circuits_faithful.split_task`:
            by default the suite drawn with seed 1 for a suite name, every second row of 8 or
            more rows, else the task's own rows); scores come from the other rows.
        exhaustive, growth, rtol: the size search (`circuits_faithful.smallest_faithful`): sizes
            1..``exhaustive`` one by one, then a grid of ratio ``growth``, bisected to within
            ``rtol`` of the size found (0: exactly). A big graph is searched coarsely for speed.
    Returns:
        DataFrame ``upstream, downstream, score, in_circuit`` (one row per valid edge; ``score``
        is the share of the clean–corrupted LD gap the edge carries). attrs: ``method, steps,
        ld_clean, ld_corrupted, n, target, ablation, reference, reached, n_edges, faithfulness,
        normalized, metric_full, metric_empty, searched`` ({k: faithfulness} of sizes tried),
        ``held_out, n_held_out, note``.
    """
    target = checks.number("target", target)
    growth = checks.number("growth", growth, low=1.01)
    rtol = checks.fraction("rtol", rtol, low_open=False)
    exhaustive = checks.positive_int("exhaustive", exhaustive)
    find, held, where = split_task(model, task, held_out)
    frame = edge_scores(model, find, method, steps=steps)
    g = edges.graph(model)
    if top_n is not None:
        top_n = checks.integer("top_n", top_n, low=1, high=len(frame))
    ev = Evaluator(model, held, ablation=ablation, reference=reference)
    up, down = np.nonzero(g.valid())
    order = np.argsort(-frame["score"].abs().to_numpy(), kind="stable")  # graph order breaks ties
    full, empty = ev.metric(g.valid()), ev.metric(np.zeros_like(g.valid()))

    def kept(k: int) -> np.ndarray:
        mask = np.zeros_like(g.valid())
        mask[up[order[:k]], down[order[:k]]] = True
        return mask

    def faithfulness(k: int) -> float:
        return ev.metric(kept(k)) / full

    n_max = len(frame) // 2
    if top_n is not None:
        k, searched = top_n, {top_n: faithfulness(top_n)}
    else:
        k, searched = smallest_faithful(faithfulness, n_max, target, exhaustive=exhaustive, growth=growth, rtol=rtol)
    frame["in_circuit"] = False
    note = f"faithfulness on {where}; edges outside the circuit carry {ev.reference} ({ev.ablation} ablation)"
    if k is None:
        best = max(searched, key=searched.get)
        note = (f"no set of at most {n_max} edges (half of {len(frame)}) reaches faithfulness {target:g} "
                f"(best {searched[best]:.3f} with {best} edges); no edge is marked; " + note)
        f = n = None
    else:
        frame.loc[frame.index[order[:k]], "in_circuit"] = True
        f, n = searched[k], (searched[k] * full - empty) / (full - empty)
    frame.attrs.update(target=target, ablation=ev.ablation, reference=ev.reference, reached=k is not None,
                       n_edges=0 if k is None else int(k), faithfulness=f, normalized=n, metric_full=full,
                       metric_empty=empty, searched=searched, held_out=where, n_held_out=sum(len(gr.clean) for gr in ev.groups),
                       note=note)
    return frame


def _components(names) -> set[str]:
    """Graph nodes of edge endpoints, a head's q/k/v inputs counted as the head: ``a1.h0<k>`` -> ``a1.h0``."""
    return {name.split("<")[0] for name in names}


def edge_overlap(circuit_a: pd.DataFrame, circuit_b: pd.DataFrame) -> dict:
    """Edge and node overlap of two `edge_circuit` frames of the same model, each next to chance.

    Nodes are the components the circuit's edges touch (``input``, ``a{L}.h{H}``, ``m{L}``,
    ``logits``; a head's q/k/v inputs count as the head). The universe is every valid edge
    (every node) of the graph, the frames' rows.

    Returns:
        ``{"edges": overlap, "nodes": overlap}``, each as `workbench.overlap.overlap` with
        ``n_total`` (four measures, sizes, hypergeometric expectation and p-value).
    """
    for name, frame in (("a", circuit_a), ("b", circuit_b)):
        if not isinstance(frame, pd.DataFrame) or not {"upstream", "downstream", "in_circuit"} <= set(frame.columns):
            raise WorkbenchError(f"edge circuit {name} must be an edge_circuit frame (upstream, downstream, "
                                 "in_circuit)")
        if not frame["in_circuit"].any():
            raise WorkbenchError(f"edge circuit {name} is empty (no edge in_circuit): overlap needs edges on each side")
    every = [set(zip(f["upstream"], f["downstream"])) for f in (circuit_a, circuit_b)]
    if every[0] != every[1]:
        raise WorkbenchError("the two edge frames hold different edges: compare circuits of one model's graph")
    sets = [set(zip(f.loc[f["in_circuit"], "upstream"], f.loc[f["in_circuit"], "downstream"]))
            for f in (circuit_a, circuit_b)]
    nodes = [_components(u for u, _ in s) | _components(v for _, v in s) for s in sets]
    universe = _components(circuit_a["upstream"]) | _components(circuit_a["downstream"])
    return {"edges": overlap.overlap(*sets, n_total=len(every[0])),
            "nodes": overlap.overlap(*nodes, n_total=len(universe))}
