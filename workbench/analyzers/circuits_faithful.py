"""Choosing a circuit by faithfulness: the smallest top-ranked set whose faithfulness reaches a
target (Hanna et al. 2024 choose edge circuits this way; Wang et al. 2022 and Conmy et al. 2023
judge circuits by it), shared by node and edge circuits.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd

from workbench.errors import WorkbenchError

EXHAUSTIVE = 64  # sizes up to this are all tried; beyond, a geometric grid refined by bisection
GROWTH = 1.25    # ratio between consecutive grid sizes


def grid(n_max: int, exhaustive: int = EXHAUSTIVE, growth: float = GROWTH) -> list[int]:
    """Sizes tried first: every k <= ``exhaustive`` (at least 1), then a geometric grid (ratio
    ``growth``) up to ``n_max``."""
    sizes = list(range(1, min(n_max, max(1, exhaustive)) + 1))
    k = float(sizes[-1]) if sizes else 1.0
    while sizes and sizes[-1] < n_max:
        k = max(k * growth, sizes[-1] + 1)
        sizes.append(min(int(k), n_max))
    return sizes


def smallest_faithful(evaluate: Callable[[int], float], n_max: int, target: float, *,
                      exhaustive: int = EXHAUSTIVE, growth: float = GROWTH, rtol: float = 0.0) -> tuple[int | None, dict]:
    """The smallest k <= ``n_max`` with ``evaluate(k) >= target``.

    Faithfulness need not grow with k (a negative head can enter the set), so every size up to
    ``exhaustive`` is tried in order; past it, sizes on a geometric grid, and the first grid size
    that reaches the target is refined by bisection against the grid size before it (exact when
    faithfulness is monotone between the two).

    Args:
        evaluate: ``k -> faithfulness of the top-k set``.
        n_max: the largest size allowed (e.g. half of all heads).
        target: the faithfulness to reach.
        exhaustive: sizes tried one by one before the grid (default `EXHAUSTIVE`).
        growth: the grid's ratio (default `GROWTH`).
        rtol: stop bisecting once the bracket is within ``rtol`` of its upper end (0: exact; a
            budget for graphs whose evaluations are slow).
    Returns:
        ``(k or None when no allowed size reaches the target, {k: faithfulness} of every size tried)``.
    """
    tried: dict[int, float] = {}

    def f(k: int) -> float:
        if k not in tried:
            tried[k] = float(evaluate(k))
        return tried[k]

    previous = 0
    for k in grid(n_max, exhaustive, growth):
        if f(k) >= target:
            lo, hi = previous, k  # lo fails (or is 0), hi reaches
            while hi - lo > max(1.0, rtol * hi):
                mid = (lo + hi) // 2
                lo, hi = (lo, mid) if f(mid) >= target else (mid, hi)
            return hi, dict(sorted(tried.items()))
        previous = k
    return None, dict(sorted(tried.items()))


def curve(evaluate: Callable[[list], float], ranking: list, sizes, *, draws: int = 5, seed: int = 0,
          universe: list | None = None) -> pd.DataFrame:
    """Faithfulness of the top-k items of a ranking beside random k-sets, for each k in ``sizes``.

    Args:
        evaluate: ``items -> faithfulness`` of the set of those items (heads, edges).
        ranking: the items, best first (by |effect| or |score|).
        sizes: the k to evaluate (each in ``[1, len(universe)]``).
        draws: random k-sets per k, drawn uniformly from ``universe`` (default: the ranking) with
            ``numpy.random.default_rng(seed)``.
    Returns:
        DataFrame ``k, top, random_median, random_lo, random_hi`` (lo/hi: the smallest and
        largest of the draws).
    """
    universe = list(ranking if universe is None else universe)
    rng = np.random.default_rng(seed)
    rows = []
    for k in sizes:
        k = int(k)
        top = evaluate(list(ranking[:k]))
        rand = [evaluate([universe[i] for i in rng.choice(len(universe), k, replace=False)]) for _ in range(draws)]
        rows.append({"k": k, "top": float(top), "random_median": float(np.median(rand)),
                     "random_lo": float(np.min(rand)), "random_hi": float(np.max(rand))})
    return pd.DataFrame(rows, columns=["k", "top", "random_median", "random_lo", "random_hi"])


# -- node circuits: the metric with only some heads kept ----------------------------------------
#: What a head outside the circuit becomes. ``resample`` (default; Conmy et al. 2023's ACDC,
#: Hanna et al. 2024): its output on the same example's corrupted prompt, a draw from the task's
#: corrupted distribution (ABC names for ioi). The effects rank heads by what the clean–corrupted
#: difference carries; resample ablation removes exactly that difference and keeps what a prompt
#: and its twin share, so it tests the ranking on its own terms. ``mean`` (Wang et al. 2022): its
#: mean output over the reference distribution (default: the task's corrupted prompts), position by
#: position where the scored prompt and at least `MIN_TEMPLATE_REFS` reference prompts share its
#: template and length, else one mean over every reference position; it also removes per-prompt
#: information the twins share (which object is asked about), which no patching effect can see, so
#: a circuit of high-effect heads may not reach the target under it (the demo's colored_objects
#: keeps 0.65 with 16 of 32 heads). ``zero``: nothing (off-distribution; the harshest).
NODE_ABLATIONS = ("resample", "mean", "zero")
MIN_TEMPLATE_REFS = 4   # reference prompts of one template and length needed for per-position means
NODE_BATCH = 512        # sequences per forward when several head masks ride in one batch


def _reference_rows(task_rows: list[dict], reference) -> list[tuple[str, object]]:
    """``(prompt, template or None)`` of the reference distribution (never a scored prompt)."""
    if reference is None:
        return [(str(r["corrupted_prompt"]), r.get("template")) for r in task_rows]
    out = []
    for i, item in enumerate(reference):
        if isinstance(item, str):
            out.append((item, None))
        elif isinstance(item, dict) and "corrupted_prompt" in item:
            out.append((str(item["corrupted_prompt"]), item.get("template")))
        else:
            raise WorkbenchError(f"reference item {i} must be a prompt string or a task row with "
                                 f"'corrupted_prompt'; got {type(item).__name__}")
    if not out:
        raise WorkbenchError("reference is empty: expected prompts or task rows")
    return out


class NodeEvaluator:
    """Mean LD of a task with chosen heads kept and the rest ablated; many masks per forward.

    Args:
        model: a causal `ModelHandle`.
        task: as for `workbench.circuit` (rows may carry ``template``).
        ablation: one of `NODE_ABLATIONS`.
        reference: prompts or task rows whose corrupted prompts are the reference distribution
            for ``mean`` (default: the task's own corrupted prompts; the clean prompts being
            scored are never part of it).
    """

    def __init__(self, model, task, *, ablation: str = "resample", reference=None):
        import torch

        from workbench import checks
        from workbench.analyzers.circuits import encode_task, read_task
        from workbench.heads import head_means, record_heads

        self.model, self.ablation = model, checks.choice("ablation", ablation, NODE_ABLATIONS)
        rows = read_task(task, model)
        by_template: dict = {}
        for row in rows:
            by_template.setdefault(row.get("template"), []).append(row)
        self.groups = [(g, t) for t, part in by_template.items() for g in encode_task(model, part)]
        self.bases: list = []
        self.position_aware = 0
        if self.ablation == "mean":
            refs = _reference_rows(rows, reference)
            tok = model.tokenizer
            lengths = [len(tok(p)["input_ids"]) for p, _ in refs]
            overall = head_means(model, [p for p, _ in refs])  # (L, H, d)
            cache: dict = {}
            for g, template in self.groups:
                n = g.clean.shape[1]
                key = (template, n)
                if key not in cache:
                    same = [p for (p, t), m in zip(refs, lengths) if template is not None and t == template and m == n]
                    cache[key] = head_means(model, same, by_position=True) if len(same) >= MIN_TEMPLATE_REFS else None
                base = cache[key]
                self.position_aware += len(g.clean) if base is not None else 0
                self.bases.append(overall if base is None else base)  # (L, H, d) or (L, pos, H, d)
            self.reference = (f"mean over {len(refs)} " + ("corrupted prompts of the task" if reference is None
                              else "reference prompts") + f"; per position for {self.position_aware} of "
                              f"{self.n} examples (template shared by >= {MIN_TEMPLATE_REFS} reference prompts)")
        elif self.ablation == "resample":
            with torch.no_grad():
                self.bases = [record_heads(model, g.corrupt) for g, _ in self.groups]  # {layer: (b, pos, H, d)}
            self.reference = "the same example's corrupted prompt (resample)"
        else:
            self.bases = [None] * len(self.groups)
            self.reference = "zero"

    @property
    def n(self) -> int:
        return sum(len(g.clean) for g, _ in self.groups)

    def metric(self, masks) -> np.ndarray:
        """Mean LD for each head mask: ``masks [C, n_layers, n_heads]`` (1 keeps, 0 ablates) -> ``[C]``."""
        import torch

        from workbench.heads import HeadEdit, edit_heads

        masks = torch.as_tensor(np.asarray(masks, dtype=np.float32))
        totals = np.zeros(len(masks))
        with torch.no_grad():
            for (g, _), base in zip(self.groups, self.bases):
                b = len(g.clean)
                per = max(1, NODE_BATCH // b)
                for start in range(0, len(masks), per):
                    chunk = masks[start:start + per]  # (c, L, H)
                    c = len(chunk)
                    scale = chunk.repeat_interleave(b, 0)  # (c * b, L, H): copy i is rows i*b..(i+1)*b
                    if isinstance(base, dict):  # resample: this group's corrupted outputs, per copy
                        edit_base = {layer: z.repeat(c, 1, 1, 1) for layer, z in base.items()}
                    else:
                        edit_base = base
                    ids = g.clean.repeat(c, 1)
                    with edit_heads(self.model, HeadEdit(scale, edit_base), site="hf"):
                        last = self.model.hf_model(input_ids=ids, use_cache=False, logits_to_keep=1).logits[:, -1]
                    rows = torch.arange(len(ids))
                    ld = last[rows, g.answer.repeat(c)] - last[rows, g.wrong.repeat(c)]  # (c * b,)
                    totals[start:start + c] += ld.view(c, b).sum(1).double().cpu().numpy()
        return totals / self.n

    def corrupted_metric(self) -> float:
        """Mean LD of the corrupted prompts themselves (answer vs corrupted answer tokens)."""
        import torch

        total = 0.0
        with torch.no_grad():
            for g, _ in self.groups:
                last = self.model.hf_model(input_ids=g.corrupt, use_cache=False, logits_to_keep=1).logits[:, -1]
                rows = torch.arange(len(last))
                total += float((last[rows, g.answer] - last[rows, g.wrong]).sum())
        return total / self.n


def split_task(model, task, held_out=None) -> tuple[list[dict], list[dict], str]:
    """The rows effects are found on, the rows faithfulness is measured on, and which they are.

    Args:
        task: as for `circuit`.
        held_out: None (default): for a suite name, the same suite drawn with seed 1
            (`workbench.tasks.analysis_suite`: new names, objects and places); for rows or a
            JSONL path of at least `MIN_SPLIT` rows, every second row is held out (so both halves
            cover the templates) and effects use the others; fewer rows are used for both.
            Rows (or a path, or a suite name) give the held-out rows explicitly; False uses the
            task's own rows for both.
    Returns:
        ``(find_rows, held_rows, description)``.
    """
    from workbench.analyzers.circuits import MIN_SPLIT, TASKS, read_task

    rows = read_task(task, model)
    if held_out is False:
        return rows, rows, f"the same {len(rows)} rows the effects were found on"
    if held_out is not None:
        held = read_task(held_out, model)
        return rows, held, f"{len(held)} held-out rows given"
    if isinstance(task, str) and task in TASKS and model is not None:
        from workbench.tasks import analysis_suite

        held = analysis_suite(task, model, seed=1)
        return rows, held, f"{len(held)} held-out rows (the {task} suite drawn with seed 1)"
    if len(rows) >= MIN_SPLIT:
        return rows[0::2], rows[1::2], f"{len(rows) // 2} held-out rows (every second row of the task)"
    return rows, rows, f"the same {len(rows)} rows the effects were found on (fewer than {MIN_SPLIT} to split)"


CURVE_EXHAUSTIVE, CURVE_GROWTH = 8, 1.5  # the curve's k: 1..8, then a geometric grid up to every head


def circuit_curve(model, task, circuit_frame, *, ablation: str = "resample", held_out=None, sizes=None,
                  draws: int = 5, seed: int = 0, ablated: bool = False) -> pd.DataFrame:
    """Faithfulness of the top-k heads of a circuit's ranking against random k-sets, for each k.

    Args:
        model: a causal `ModelHandle`.
        task: as for `workbench.circuit`; scored on the same held-out rows (`split_task` with
            ``held_out``) and against the same reference as the circuit.
        circuit_frame: a `circuit` frame (``layer, head, effect``): heads ranked by |effect|.
        ablation: as for `circuit_faithfulness` (default ``"resample"``).
        sizes: the k (default 1..8, then ×1.5 up to every head).
        draws: random k-sets per k, from all heads (``numpy.random.default_rng(seed)``).
        ablated: also the metric with each set ablated and every other head kept (how much the
            set's removal hurts the task), over the full model's.
    Returns:
        DataFrame ``k, top, random_median, random_lo, random_hi, in_circuit`` (faithfulness =
        metric with the set kept over the full model's; lo/hi the draws' extremes; ``in_circuit``
        marks the k of the frame's circuit), with ``ablated``: ``ablated_top,
        ablated_random_median`` (the same sets ablated instead). attrs: ``ablation, reference, held_out, n_held_out,
        metric_full, metric_corrupted``.
    """
    from workbench import checks

    for column in ("layer", "head", "effect"):
        if column not in getattr(circuit_frame, "columns", ()):
            raise WorkbenchError(f"circuit_curve needs a circuit frame with layer, head, effect; got {circuit_frame!r:.80}")
    draws = checks.positive_int("draws", draws)
    n_layers, n_heads = model.n_layers, model.n_heads
    n_total = n_layers * n_heads
    size = int(circuit_frame["in_circuit"].astype(bool).sum()) if "in_circuit" in circuit_frame.columns else 0
    sizes = grid(n_total, CURVE_EXHAUSTIVE, CURVE_GROWTH) + ([size] if size else []) if sizes is None else sizes
    sizes = sorted({checks.integer("k", k, low=1, high=n_total) for k in sizes})
    find, held, where = split_task(model, task, held_out)
    ev = NodeEvaluator(model, held, ablation=ablation, reference=find + held if held is not find else None)
    index = np.asarray(circuit_frame["layer"], dtype=int) * n_heads + np.asarray(circuit_frame["head"], dtype=int)
    order = index[np.argsort(-np.abs(np.asarray(circuit_frame["effect"], dtype=float)), kind="stable")]
    rng = np.random.default_rng(seed)

    def kept(chosen) -> np.ndarray:
        mask = np.zeros(n_total, dtype=np.float32)
        mask[list(chosen)] = 1.0
        return mask.reshape(n_layers, n_heads)

    sets = [[order[:k]] + [rng.choice(n_total, k, replace=False) for _ in range(draws)] for k in sizes]
    full = float(ev.metric([np.ones((n_layers, n_heads))])[0])
    masks = [kept(s) for per_k in sets for s in per_k]
    every = np.ones((n_layers, n_heads), dtype=np.float32)
    both = ev.metric(masks + ([every - m for m in masks] if ablated else [])) / full  # one batched pass
    got = both[:len(masks)].reshape(len(sizes), 1 + draws)  # (k, top + draws)
    frame = pd.DataFrame({"k": sizes, "top": got[:, 0], "random_median": np.median(got[:, 1:], 1),
                          "random_lo": got[:, 1:].min(1), "random_hi": got[:, 1:].max(1),
                          "in_circuit": [k == size for k in sizes]})
    if ablated:
        cut = both[len(masks):].reshape(len(sizes), 1 + draws)
        frame["ablated_top"], frame["ablated_random_median"] = cut[:, 0], np.median(cut[:, 1:], 1)
    frame.attrs.update(ablation=ev.ablation, reference=ev.reference, held_out=where, n_held_out=ev.n,
                       metric_full=full, metric_corrupted=ev.corrupted_metric(), draws=draws, seed=seed)
    return frame
