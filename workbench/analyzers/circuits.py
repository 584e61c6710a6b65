"""Circuits: per-head effects on a task's logit difference, circuit faithfulness, and overlap.

Metric (Wang et al. 2022, IOI): logit difference LD = logit(answer) − logit(corrupted_answer) at
the final position (first token of each answer), averaged over the task's examples. A head's
effect is how far patching its clean output ``z`` (TransformerLens ``hook_z``, all positions)
into the corrupted run moves LD back toward the clean value, as a share of the gap:
``(LD_patched − LD_corrupted) / (LD_clean − LD_corrupted)`` (1 = the head alone restores the
clean behaviour). ``activation_patching`` runs that patch exactly, one forward per head;
``attribution_patching`` (Syed et al. 2023, Nanda 2023) takes its first-order estimate
``Σ (z_clean − z_corrupted) · ∂LD/∂z`` at the corrupted run, from one backward pass.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from workbench.analyzers.circuits_faithful import split_task
from workbench.analyzers.circuits_overlap import circuit_agreement, circuit_overlap  # noqa: F401  (public here too)
from workbench.checks import choice, integer, positive
from workbench.errors import WorkbenchError
from workbench.heads import ablate_heads, check_heads, edit_heads, record_heads
from workbench.prompts import answer_tokens

TASKS = ("ioi", "colored_objects")
METHODS = ("attribution_patching", "activation_patching")
FIELDS = ("prompt", "answer", "corrupted_prompt", "corrupted_answer")
THRESHOLD = 0.1  # membership by threshold: |effect| >= 10% of the clean–corrupted LD gap
TARGET = 0.8     # default membership: the smallest top-|effect| set keeping 80% of the metric
MIN_SPLIT = 8    # rows needed to hold half of a task out for faithfulness
DRAWS = 5        # random head sets of the circuit's size it is compared with
SEARCH_EXHAUSTIVE = 16  # circuit sizes tried one by one before a geometric grid (x1.25, bisected)


@dataclass(frozen=True)
class _Group:
    """Examples of one token length (no padding anywhere)."""

    clean: torch.Tensor    # (batch, pos)
    corrupt: torch.Tensor  # (batch, pos)
    answer: torch.Tensor   # (batch,) first token of answer
    wrong: torch.Tensor    # (batch,) first token of corrupted_answer


# -- inputs -------------------------------------------------------------------------------
def read_task(task, model=None) -> list[dict]:
    """Rows of a task: a suite name (``ioi``, ``colored_objects``), a JSONL path, or dicts with
    ``prompt, answer, corrupted_prompt, corrupted_answer``.

    A suite name gives the suite for ``model`` (`workbench.tasks.analysis_suite`: the demo's
    bundled rows with their template ids, else rows generated for its tokenizer, Wang et al.'s
    templates with ABC-corrupted twins for ioi), or the bundled file when no model is given."""
    from workbench.models import data_dir
    from workbench.prompts import read_jsonl

    if isinstance(task, str) and task in TASKS:
        if model is None:
            return read_jsonl(data_dir() / "suites" / f"{task}.jsonl", required=FIELDS)
        from workbench.tasks import analysis_suite, supports

        reason = supports(model, task)
        if reason:
            raise WorkbenchError(f"task {task!r} cannot be built for {model.name}: {reason}; pass rows instead")
        return analysis_suite(task, model)
    if isinstance(task, (str, Path)):
        if not Path(task).is_file():
            raise WorkbenchError(f"unknown task {str(task)!r}: expected a suite name {list(TASKS)}, a JSONL "
                                 f"path, or a list of dicts with {list(FIELDS)}")
        return read_jsonl(task, required=FIELDS)
    rows = list(task)
    if not rows:
        raise WorkbenchError(f"task is empty: expected dicts with {list(FIELDS)}")
    for i, row in enumerate(rows):
        missing = [f for f in FIELDS if not isinstance(row, dict) or f not in row]
        if missing:
            raise WorkbenchError(f"task example {i} lacks field(s) {missing}; expected {list(FIELDS)}")
    return rows


def encode_task(model, task) -> list[_Group]:
    """Tokenize a task into equal-length groups, checking clean/corrupted lengths match."""
    if not model.is_causal:
        raise WorkbenchError(f"circuits use the next-token logit difference; {model.name} is an encoder")
    tok = model.tokenizer
    by_len: dict[int, list[tuple]] = defaultdict(list)
    for i, row in enumerate(read_task(task, model)):
        clean, corrupt = tok(str(row["prompt"]))["input_ids"], tok(str(row["corrupted_prompt"]))["input_ids"]
        if len(clean) != len(corrupt):
            raise WorkbenchError(
                f"task example {i}: prompt is {len(clean)} tokens but corrupted_prompt is {len(corrupt)}; "
                "patching needs clean and corrupted prompts of equal token length"
            )
        if len(clean) > model.n_ctx:
            raise WorkbenchError(f"task example {i} is {len(clean)} tokens; {model.name} has a context of {model.n_ctx}")
        answer = answer_tokens(model, str(row["answer"]), f"task example {i}: answer")
        wrong = answer_tokens(model, str(row["corrupted_answer"]), f"task example {i}: corrupted_answer")
        if not answer or not wrong or answer[0] == wrong[0]:
            raise WorkbenchError(f"task example {i}: answer {row['answer']!r} and corrupted_answer "
                                 f"{row['corrupted_answer']!r} must start with different, non-empty tokens")
        by_len[len(clean)].append((clean, corrupt, answer[0], wrong[0]))
    dev = model.device
    return [_Group(*(torch.tensor(col, device=dev) for col in zip(*rows))) for rows in by_len.values()]


# -- metric -------------------------------------------------------------------------------
def logit_diff(logits: torch.Tensor, group) -> torch.Tensor:
    """Per-sequence LD ``(batch,)`` from final-position logits ``[batch, vocab]``; a batch of
    stacked copies of the group (copy-major) repeats its answers."""
    reps = len(logits) // len(group.answer)
    rows = torch.arange(len(logits), device=logits.device)
    return logits[rows, group.answer.repeat(reps)] - logits[rows, group.wrong.repeat(reps)]


def _logit_diff(model, ids: torch.Tensor, group: _Group) -> torch.Tensor:
    """Per-example LD at the final position of a forward on ``ids`` (copies of the group's
    prompts allowed): ``(batch,)``."""
    return logit_diff(model.hf_model(input_ids=ids).logits[:, -1], group)  # logits (batch, vocab)


def _mean_ld(model, groups, which: str = "clean", edit_for=None) -> float:
    """Mean LD over all examples; ``edit_for(group_index)`` gives an edit or None."""
    total, count = 0.0, 0
    with torch.no_grad():
        for g, group in enumerate(groups):
            edit = edit_for(g) if edit_for else None
            ids = getattr(group, which)
            if edit is None:
                ld = _logit_diff(model, ids, group)
            else:
                with edit_heads(model, edit):
                    ld = _logit_diff(model, ids, group)
            total, count = total + float(ld.sum()), count + len(ld)
    return total / count


def task_metric(model, task, *, ablate=None) -> dict:
    """The task's mean logit difference and greedy accuracy, optionally with heads zeroed.

    Returns:
        ``{"logit_diff", "accuracy", "n"}``; accuracy = share of examples whose top next token
        is the answer's first token.
    """
    groups = encode_task(model, task)
    heads = [] if ablate is None else check_heads(model, ablate)
    total, hits, count = 0.0, 0, 0
    with torch.no_grad(), ablate_heads(model, heads):
        for group in groups:
            last = model.hf_model(input_ids=group.clean).logits[:, -1]  # (batch, vocab)
            total += float(logit_diff(last, group).sum())
            hits += int((last.argmax(-1) == group.answer).sum())
            count += len(last)
    return {"logit_diff": total / count, "accuracy": hits / count, "n": count}


# -- effects ------------------------------------------------------------------------------
PATCH_BATCH = 512  # sequences per patching forward: several heads' patches ride in one batch


def _activation_effects(model, groups, clean_z) -> np.ndarray:
    """Patched mean LD of every head; each forward stacks copies of a group's corrupted batch,
    copy i patching head ``heads[i]`` (one large forward instead of one per head)."""
    heads = [(l, h) for l in range(model.n_layers) for h in range(model.n_heads)]
    sums = np.zeros(len(heads))
    for g, group in enumerate(groups):
        b = len(group.corrupt)
        per = max(1, PATCH_BATCH // b)
        for start in range(0, len(heads), per):
            chunk = heads[start:start + per]  # copy i of the batch patches chunk[i]

            def edit(layer, z, chunk=chunk, b=b, g=g):  # z: (copies * b, pos, head, d_head)
                mine = [(i, h) for i, (l, h) in enumerate(chunk) if l == layer]
                if not mine:
                    return None
                z = z.clone()
                for i, h in mine:
                    z[i * b:(i + 1) * b, :, h] = clean_z[g][layer][:, :, h]
                return z

            ids = group.corrupt.repeat(len(chunk), 1)  # (copies * b, pos)
            with torch.no_grad(), edit_heads(model, edit):
                ld = _logit_diff(model, ids, group).view(len(chunk), b)  # (copies, b)
            sums[start:start + len(chunk)] += ld.sum(1).double().cpu().numpy()
    count = sum(len(g.corrupt) for g in groups)
    return (sums / count).reshape(model.n_layers, model.n_heads)  # patched LD, not yet relative


def _attribution_effects(model, groups, clean_z) -> np.ndarray:
    grads_dot = np.zeros((model.n_layers, model.n_heads))
    count = sum(len(g.clean) for g in groups)
    for g, group in enumerate(groups):
        store: dict[int, torch.Tensor] = {}

        def edit(layer, z, store=store):
            if not z.requires_grad:  # frozen parameters: start the graph here
                z = z.detach().requires_grad_()
            store[layer] = z
            return z

        with torch.enable_grad(), edit_heads(model, edit):
            ld = _logit_diff(model, group.corrupt, group).sum()
            zs = [store[layer] for layer in range(model.n_layers)]
            grads = torch.autograd.grad(ld, zs)  # each (batch, pos, head, d_head)
        for layer, (z, grad) in enumerate(zip(zs, grads)):
            delta = clean_z[g][layer] - z.detach()
            grads_dot[layer] += (delta * grad).sum((0, 1, 3)).cpu().double().numpy()
    return grads_dot / count  # first-order change of the mean LD


def circuit(model, task, method: str = "attribution_patching", *, target: float = TARGET,
            top_n: int | None = None, threshold: float | None = None, ablation: str = "resample",
            held_out=None, draws: int = DRAWS) -> pd.DataFrame:
    """Per-head effect on a task's logit difference, and the smallest faithful circuit they define.

    Args:
        model: a causal `ModelHandle`.
        task: a suite name (``"ioi"``, ``"colored_objects"``: the suite generated for this
            model's tokenizer, the bundled one for the demo, `read_task`), a JSONL path, or a
            list of dicts with ``prompt, answer, corrupted_prompt, corrupted_answer`` (and
            optionally ``template``); each prompt and its corrupted prompt must have the same
            token length.
        method: ``"activation_patching"`` (exact: the clean ``hook_z`` of one head, at every
            position, patched into the corrupted run — denoising) or ``"attribution_patching"``
            (gradient × activation difference at the corrupted run, Syed et al. 2023).
        target: the circuit is the smallest top-|effect| set whose faithfulness (metric with only
            it kept, every other head ablated, over the full model's; Wang et al. 2022, Hanna et
            al. 2024) reaches ``target`` (default 0.8) on the held-out rows. Sets of at most half
            the heads are searched (every size up to 16, then a ×1.25 grid bisected between the
            last size that fails and the first that reaches); if none reaches it, no head is marked (``attrs["reached"]``
            False; the circuit is not padded). Ignored when ``top_n`` or ``threshold`` is given.
        top_n: the circuit is the ``top_n`` heads by |effect|; or
        threshold: the heads with |effect| >= threshold (the old default was 0.1).
        ablation: what a head outside the circuit becomes while faithfulness is measured
            (`circuits_faithful.NODE_ABLATIONS`; default ``"resample"``: its output on the same
            example's corrupted prompt; ``"mean"``: over the task's corrupted prompts,
            position-aware where a template is shared; ``"zero"``).
        held_out: which rows faithfulness is measured on (`split_task`).
        draws: random head sets of the circuit's size compared with it (seeded, 0).
    Returns:
        DataFrame ``layer, head, effect, in_circuit``; ``effect`` is relative to the gap
        ``LD_clean − LD_corrupted`` on the rows effects were found on. attrs: ``ld_clean,
        ld_corrupted, method, n`` (those rows), ``target, reached, size, faithfulness,
        normalized`` ((kept − corrupted)/(clean − corrupted)), ``metric_full, metric_corrupted,
        metric_circuit, metric_without_circuit`` (circuit ablated, the rest kept),
        ``random_kept_median, random_ablated_median`` (random sets of its size, drawn from all
        heads), ``ablation, reference, held_out, n_held_out, searched`` ({k: faithfulness}),
        ``note``.
    """
    from workbench.analyzers.circuits_faithful import (
        NodeEvaluator,
        grid,
        smallest_faithful,
    )

    choice("method", method, METHODS)
    if top_n is not None and threshold is not None:
        raise WorkbenchError("give top_n or threshold, not both")
    n_total = model.n_layers * model.n_heads
    top_n = None if top_n is None else integer("top_n", top_n, low=1, high=n_total)
    threshold = None if threshold is None else positive("threshold", threshold)  # |effect| >= threshold
    target = positive("target", target)
    draws = integer("draws", draws, low=0)
    find, held, where = split_task(model, task, held_out)
    groups = encode_task(model, find)
    ld_clean = _mean_ld(model, groups, "clean")
    ld_corrupt = _mean_ld(model, groups, "corrupt")
    gap = ld_clean - ld_corrupt
    if abs(gap) < 1e-6:
        raise WorkbenchError(f"clean and corrupted prompts give the same logit difference ({ld_clean:.3g}); "
                             "effects relative to their gap are undefined")
    clean_z = [record_heads(model, g.clean) for g in groups]
    if method == "activation_patching":
        raw = (_activation_effects(model, groups, clean_z) - ld_corrupt) / gap
    else:
        raw = _attribution_effects(model, groups, clean_z) / gap
    layer, head = np.meshgrid(np.arange(model.n_layers), np.arange(model.n_heads), indexing="ij")
    frame = pd.DataFrame({"layer": layer.ravel(), "head": head.ravel(), "effect": raw.ravel()})
    frame.attrs.update(ld_clean=ld_clean, ld_corrupted=ld_corrupt, method=method, n=sum(len(g.clean) for g in groups))

    ev = NodeEvaluator(model, held, ablation=ablation, reference=find + held if held is not find else None)
    order = np.argsort(-np.abs(raw.ravel()), kind="stable")  # head index l * H + h, best first

    def kept(index) -> np.ndarray:
        mask = np.zeros(n_total, dtype=np.float32)
        mask[list(index)] = 1.0
        return mask.reshape(model.n_layers, model.n_heads)

    full, corrupted = float(ev.metric([np.ones((model.n_layers, model.n_heads))])[0]), ev.corrupted_metric()
    n_max = n_total // 2
    if top_n is None and threshold is None:
        sizes, cache = grid(n_max, SEARCH_EXHAUSTIVE), {}
        for start in range(0, len(sizes), SEARCH_EXHAUSTIVE):  # batched passes, stopping once a size reaches it
            chunk = sizes[start:start + SEARCH_EXHAUSTIVE]
            cache.update(zip(chunk, ev.metric([kept(order[:k]) for k in chunk]) / full))
            if max(cache[k] for k in chunk) >= target:
                break
        size, searched = smallest_faithful(lambda k: cache[k] if k in cache else ev.metric([kept(order[:k])])[0] / full,
                                           n_max, target, exhaustive=SEARCH_EXHAUSTIVE)
        members = [] if size is None else list(order[:size])
        rule = f"the smallest top-|effect| set with faithfulness >= {target:g}"
    else:
        chosen = select(frame["effect"], top_n=top_n, threshold=threshold).to_numpy()
        members, searched = list(np.nonzero(chosen)[0]), {}
        size = len(members)
        rule = f"top {top_n} by |effect|" if top_n is not None else f"|effect| >= {threshold:g}"
    frame["in_circuit"] = False
    frame.loc[members, "in_circuit"] = True
    note = (f"faithfulness on {where}; heads outside the circuit get {ev.reference} ({ev.ablation} ablation)")
    stats = {"faithfulness": None, "normalized": None, "metric_circuit": None, "metric_without_circuit": None,
             "random_kept_median": None, "random_ablated_median": None}
    if members:
        rng = np.random.default_rng(0)
        rand = [rng.choice(n_total, len(members), replace=False) for _ in range(draws)]
        every = np.ones((model.n_layers, model.n_heads), dtype=np.float32)
        got = ev.metric([kept(members), every - kept(members)] + [kept(r) for r in rand]
                        + [every - kept(r) for r in rand])
        stats.update(faithfulness=float(got[0] / full), normalized=float((got[0] - corrupted) / (full - corrupted)),
                     metric_circuit=float(got[0]), metric_without_circuit=float(got[1]))
        if draws:
            stats.update(random_kept_median=float(np.median(got[2:2 + draws]) / full),
                         random_ablated_median=float(np.median(got[2 + draws:]) / full))
    elif top_n is None and threshold is None:
        best = max(searched, key=searched.get)
        note = (f"no set of at most {n_max} heads (half of {n_total}) reaches faithfulness {target:g} (best "
                f"{searched[best]:.3f} with the top {best}); no head is marked, the circuit is not padded; " + note)
    frame.attrs.update(target=target if top_n is None and threshold is None else None, rule=rule,
                       reached=bool(members) and (stats["faithfulness"] or 0) >= target, size=len(members),
                       metric_full=full, metric_corrupted=corrupted, ablation=ev.ablation, reference=ev.reference,
                       held_out=where, n_held_out=ev.n, draws=draws, searched=searched, note=note, **stats)
    return frame


def select(effect: pd.Series, *, top_n: int | None = None, threshold: float | None = None) -> pd.Series:
    """Circuit membership from effects: top_n by |effect|, or |effect| >= threshold (default 0.1)."""
    top_n = None if top_n is None else integer("top_n", top_n, low=1)
    threshold = None if threshold is None else positive("threshold", threshold)
    size = effect.abs()
    if top_n is not None:
        return size.rank(method="first", ascending=False) <= top_n
    return size >= (THRESHOLD if threshold is None else threshold)


def circuit_faithfulness(model, task, circuit_frame, *, ablation: str = "resample", reference=None) -> dict:
    """Task metric with every head outside the circuit ablated, relative to the full model.

    Args:
        task: the rows to score (as for `circuit`; faithfulness of a circuit found on other rows
            is measured on held-out rows, see `split_task`).
        circuit_frame: a `circuit` frame (rows with ``in_circuit``) or ``(layer, head)`` pairs.
        ablation: what an ablated head's ``z`` becomes (`circuits_faithful.NODE_ABLATIONS`, where
            the default is argued): ``"resample"`` (default; ACDC, Conmy et al. 2023) — its value
            on the same example's corrupted prompt; ``"mean"`` (Wang et al. 2022) — its mean over
            the reference distribution, the task's corrupted prompts (ABC names for ioi), per
            position where a scored prompt and at least `MIN_TEMPLATE_REFS` reference prompts
            share its template and length, else one mean over all reference positions; never a
            mean over the prompts being scored; ``"zero"``.
        reference: prompts or task rows whose corrupted prompts replace the task's own as the
            reference for ``"mean"``.
    Returns:
        dict ``faithfulness`` = LD(circuit only) / LD(full model) (Wang et al.'s F(C)/F(M)),
        ``normalized`` = (LD(C) − LD(corrupted)) / (LD(M) − LD(corrupted)) with LD(corrupted) the
        corrupted prompts' own LD, the logit differences ``metric_full``, ``metric_circuit``
        (complement ablated), ``metric_without_circuit`` (circuit ablated), ``metric_empty``
        (every head ablated), ``metric_corrupted``, and ``n_heads, n, ablation, reference``.
    """
    from workbench.analyzers.circuits_faithful import NodeEvaluator

    members = set(check_heads(model, circuit_frame))
    if not members:
        raise WorkbenchError("the circuit is empty: expected at least one (layer, head) in it")
    ev = NodeEvaluator(model, task, ablation=ablation, reference=reference)
    only = np.zeros((model.n_layers, model.n_heads), dtype=np.float32)
    for layer, head in members:
        only[layer, head] = 1.0
    every = np.ones_like(only)
    full, kept, without, empty = ev.metric([every, only, every - only, 0 * every])
    corrupted = ev.corrupted_metric()
    return {"faithfulness": float(kept / full), "normalized": float((kept - corrupted) / (full - corrupted)),
            "metric_full": float(full), "metric_circuit": float(kept), "metric_without_circuit": float(without),
            "metric_empty": float(empty), "metric_corrupted": corrupted, "n_heads": len(members), "n": ev.n,
            "ablation": ev.ablation, "reference": ev.reference}
