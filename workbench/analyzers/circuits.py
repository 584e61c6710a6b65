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

from workbench.analyzers import Analyzer, register
from workbench.heads import ablate_heads, check_heads, edit_heads, record_heads
from workbench import findings
from workbench.figures import circuit_figures
from workbench.findings import summaries
from workbench.errors import WorkbenchError
from workbench.analyzers import keyword_defaults
from workbench.checks import choice, integer, positive
from workbench.prompts import answer_tokens

TASKS = ("ioi", "colored_objects")
METHODS = ("attribution_patching", "activation_patching")
FIELDS = ("prompt", "answer", "corrupted_prompt", "corrupted_answer")
ABLATIONS = ("mean", "corrupted")
THRESHOLD = 0.1  # default membership: |effect| >= 10% of the clean–corrupted LD gap


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

    A suite name gives the bundled suite for the demo model (or no model), and otherwise the
    suite generated for ``model``'s tokenizer (`workbench.tasks.analysis_suite`: Wang et al.'s
    templates with ABC-corrupted twins for ioi)."""
    from workbench.models import data_dir
    from workbench.prompts import read_jsonl

    if isinstance(task, str) and task in TASKS:
        if model is None or model.source == "demo":
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
def _logit_diff(model, ids: torch.Tensor, group: _Group) -> torch.Tensor:
    """Per-example LD at the final position: ``(batch,)``."""
    last = model.hf_model(input_ids=ids).logits[:, -1]  # (batch, vocab)
    rows = torch.arange(len(ids), device=ids.device)
    return last[rows, group.answer] - last[rows, group.wrong]


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
            rows = torch.arange(len(last))
            total += float((last[rows, group.answer] - last[rows, group.wrong]).sum())
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

            def edit(layer, z, chunk=chunk):  # z: (copies * b, pos, head, d_head)
                mine = [(i, h) for i, (l, h) in enumerate(chunk) if l == layer]
                if not mine:
                    return None
                z = z.clone()
                for i, h in mine:
                    z[i * b:(i + 1) * b, :, h] = clean_z[g][layer][:, :, h]
                return z

            ids = group.corrupt.repeat(len(chunk), 1)  # (copies * b, pos)
            stacked = _Group(ids, ids, group.answer.repeat(len(chunk)), group.wrong.repeat(len(chunk)))
            with torch.no_grad(), edit_heads(model, edit):
                ld = _logit_diff(model, ids, stacked).view(len(chunk), b)  # (copies, b)
            sums[start:start + len(chunk)] += ld.sum(1).double().cpu().numpy()
    count = sum(len(g.corrupt) for g in groups)
    return (sums / count).reshape(model.n_layers, model.n_heads)  # patched LD, not yet relative


def _attribution_effects(model, groups, clean_z) -> np.ndarray:
    grads_dot = np.zeros((model.n_layers, model.n_heads))
    count = sum(len(g.clean) for g in groups)
    for g, group in enumerate(groups):
        store: dict[int, torch.Tensor] = {}

        def edit(layer, z):
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


def circuit(model, task, method: str = "attribution_patching", *, top_n: int | None = None,
            threshold: float | None = None) -> pd.DataFrame:
    """Per-head effect on a task's logit difference, and the circuit they define.

    Args:
        model: a causal `ModelHandle`.
        task: a suite name (``"ioi"``, ``"colored_objects"``: the demo's bundled suite, or the
            one generated for this model's tokenizer, `read_task`), a JSONL path, or a list of
            dicts with ``prompt, answer, corrupted_prompt, corrupted_answer``; each prompt and
            its corrupted prompt must have the same token length.
        method: ``"activation_patching"`` (exact: the clean ``hook_z`` of one head, at every
            position, patched into the corrupted run — denoising) or ``"attribution_patching"``
            (gradient × activation difference at the corrupted run, Syed et al. 2023).
        top_n: the circuit is the ``top_n`` heads by |effect|; or
        threshold: the heads with |effect| >= threshold. Default: threshold 0.1 (a head that
            alone moves LD by a tenth of the clean–corrupted gap; negative heads count too, as
            Wang et al.'s negative name movers do).
    Returns:
        DataFrame ``layer, head, effect, in_circuit``; ``effect`` is relative to the gap
        ``LD_clean − LD_corrupted`` (both in ``frame.attrs``, with method and n).
    """
    choice("method", method, METHODS)
    if top_n is not None and threshold is not None:
        raise WorkbenchError("give top_n or threshold, not both")
    top_n = None if top_n is None else integer("top_n", top_n, low=1, high=model.n_layers * model.n_heads)
    threshold = None if threshold is None else positive("threshold", threshold)  # |effect| >= threshold
    groups = encode_task(model, task)
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
    frame["in_circuit"] = select(frame["effect"], top_n=top_n, threshold=threshold)
    frame.attrs.update(ld_clean=ld_clean, ld_corrupted=ld_corrupt, method=method,
                       n=sum(len(g.clean) for g in groups))
    return frame


def select(effect: pd.Series, *, top_n: int | None = None, threshold: float | None = None) -> pd.Series:
    """Circuit membership from effects: top_n by |effect|, or |effect| >= threshold (default 0.1)."""
    top_n = None if top_n is None else integer("top_n", top_n, low=1)
    threshold = None if threshold is None else positive("threshold", threshold)
    size = effect.abs()
    if top_n is not None:
        return size.rank(method="first", ascending=False) <= top_n
    return size >= (THRESHOLD if threshold is None else threshold)


# -- faithfulness, agreement, overlap -----------------------------------------------------
def circuit_faithfulness(model, task, circuit_frame, *, ablation: str = "mean") -> dict:
    """Task metric with every head outside the circuit ablated, relative to the full model.

    Args:
        circuit_frame: a `circuit` frame (rows with ``in_circuit``) or ``(layer, head)`` pairs.
        ablation: what an ablated head's ``z`` becomes: ``"mean"`` — its mean at each position
            over the task's clean and corrupted prompts (per group of equal token length; mean
            ablation, Wang et al. 2022); ``"corrupted"`` — its value in the same example's
            corrupted run (resample ablation, as ACDC measures faithfulness, Conmy et al. 2023),
            which keeps what clean and corrupted prompts share, so it tests exactly the
            difference the patching effects measured.
    Returns:
        dict ``faithfulness`` = LD(circuit only) / LD(full model) (Wang et al.'s F(C)/F(M)),
        ``normalized`` = (LD(C) − LD(∅)) / (LD(M) − LD(∅)), and the logit differences
        ``metric_full``, ``metric_circuit`` (complement ablated), ``metric_without_circuit``
        (circuit ablated), ``metric_empty`` (all heads ablated), and ``n_heads``.
    """
    choice("ablation", ablation, ABLATIONS)
    groups = encode_task(model, task)
    members = set(check_heads(model, circuit_frame))
    if not members:
        raise WorkbenchError("the circuit is empty: expected at least one (layer, head) in it")
    every = {(l, h) for l in range(model.n_layers) for h in range(model.n_heads)}
    refs = []  # per group: {layer: (batch or 1, pos, head, d_head)}
    for g in groups:
        clean, corrupt = record_heads(model, g.clean), record_heads(model, g.corrupt)
        refs.append(corrupt if ablation == "corrupted" else
                    {l: torch.cat([clean[l], corrupt[l]]).mean(0, keepdim=True) for l in clean})

    def ablated(heads):
        by_layer = defaultdict(list)
        for layer, head in heads:
            by_layer[layer].append(head)

        def edit_for(g):
            def edit(layer, z):
                if layer not in by_layer:
                    return None
                z = z.clone()
                z[:, :, by_layer[layer]] = refs[g][layer][:, :, by_layer[layer]]
                return z
            return edit
        return _mean_ld(model, groups, "clean", edit_for)

    full = _mean_ld(model, groups, "clean")
    only, without, empty = ablated(every - members), ablated(members), ablated(every)
    return {"faithfulness": only / full, "normalized": (only - empty) / (full - empty),
            "metric_full": full, "metric_circuit": only, "metric_without_circuit": without,
            "metric_empty": empty, "n_heads": len(members)}


def circuit_agreement(a: pd.DataFrame, b: pd.DataFrame) -> dict:
    """Rank agreement of two `circuit` frames' effects (e.g. the two methods): Spearman's ρ.

    Returns:
        ``{"spearman", "pvalue", "n"}`` over the heads the two frames share.
    """
    from scipy.stats import spearmanr

    for name, frame in (("a", a), ("b", b)):
        if not {"layer", "head", "effect"} <= set(frame.columns):
            raise WorkbenchError(f"circuit frame {name} needs columns layer, head, effect; it has {list(frame.columns)}")
    both = a.merge(b, on=["layer", "head"], suffixes=("_a", "_b"))
    if len(both) < 2:
        raise WorkbenchError(f"the two circuit frames share {len(both)} head(s); a rank agreement needs at least 2")
    rho, p = spearmanr(both["effect_a"], both["effect_b"])
    return {"spearman": float(rho), "pvalue": float(p), "n": len(both)}


def _head_set(circuit, name: str) -> set[tuple[int, int]]:
    if isinstance(circuit, pd.DataFrame):
        if not {"layer", "head"} <= set(circuit.columns):
            raise WorkbenchError(f"circuit {name} needs columns layer, head; it has {list(circuit.columns)}")
        if "in_circuit" in circuit.columns:
            circuit = circuit[circuit["in_circuit"].astype(bool)]
        circuit = zip(circuit["layer"], circuit["head"])
    try:
        heads = {(int(layer), int(head)) for layer, head in circuit}
    except (TypeError, ValueError):
        raise WorkbenchError(f"circuit {name} must be a circuit frame or (layer, head) pairs") from None
    if not heads:
        raise WorkbenchError(f"circuit {name} is empty: overlap needs at least one head on each side")
    return heads


def circuit_overlap(circuit_a, circuit_b) -> dict:
    """How much two circuits share (Merullo et al., "Circuit Component Reuse"): all four ratios,
    since a single "78% overlap" does not say which.

    Args:
        circuit_a, circuit_b: `circuit` frames (their ``in_circuit`` rows) or ``(layer, head)`` pairs.
    Returns:
        ``{"jaccard": |A∩B|/|A∪B|, "overlap_coefficient": |A∩B|/min(|A|,|B|),
        "share_a_in_b": |A∩B|/|A|, "share_b_in_a": |A∩B|/|B|, "n_a", "n_b", "n_shared"}``.
    """
    a, b = _head_set(circuit_a, "a"), _head_set(circuit_b, "b")
    shared = len(a & b)
    return {"jaccard": shared / len(a | b), "overlap_coefficient": shared / min(len(a), len(b)),
            "share_a_in_b": shared / len(a), "share_b_in_a": shared / len(b),
            "n_a": len(a), "n_b": len(b), "n_shared": shared}


# -- registry -----------------------------------------------------------------------------
DEMO_EXAMPLES = 16  # examples per suite in the registered analysis on the demo (fast on 2 CPU cores)


def task_circuits(model, prompts=None) -> pd.DataFrame:
    """The registered analysis: both methods on the ioi and colored_objects suites — the demo's
    bundled ones (first `DEMO_EXAMPLES` examples), or those generated for any other causal LM
    (`workbench.tasks.analysis_suite`). A task the tokenizer cannot spell is left out (the
    task_accuracy table says why); ``prompts`` is not used — circuits need corrupted pairs.

    Returns:
        DataFrame ``task, method, layer, head, effect, in_circuit``.
    """
    from workbench.tasks import supports

    frames = []
    for task in TASKS:
        if supports(model, task):
            continue
        rows = read_task(task, model)
        if model.source == "demo":
            rows = rows[:DEMO_EXAMPLES]
        for method in METHODS:
            frames.append(circuit(model, rows, method).assign(task=task, method=method))
    cols = ["task", "method", "layer", "head", "effect", "in_circuit"]
    return pd.concat(frames, ignore_index=True)[cols]


demo_circuits = task_circuits  # the name before circuits ran on every causal LM


def _applies(model) -> str | None:
    from workbench.tasks import supports

    if not model.is_causal:
        return "circuits use the next-token logit difference; this model is an encoder"
    reasons = [supports(model, task) for task in TASKS]
    if all(reasons):
        return "; ".join(reasons) + ": call wb.circuit(model, rows) with clean and corrupted prompts of yours"
    return None


def _task_sets(model, prompts) -> dict[str, list[str]]:
    """The prompts each suite's circuit was found on (as `task_circuits` reads them)."""
    from workbench.tasks import supports

    cut = DEMO_EXAMPLES if model.source == "demo" else None
    return {task: [r["prompt"] for r in read_task(task, model)[:cut]] for task in TASKS if not supports(model, task)}


register(Analyzer(
    "circuits", task_circuits, "Circuits (ioi, colored objects) and their overlap", mode="exact",
    applies=_applies, figures=circuit_figures, family="circuits", findings=findings.circuits, example="ioi",
    prompts=_task_sets, summary=summaries.circuits,
    params=keyword_defaults(circuit, method=list(METHODS), tasks=list(TASKS), examples=DEMO_EXAMPLES, threshold=THRESHOLD),
    sources=("Wang et al. 2022, Interpretability in the Wild (IOI; logit difference, mean ablation)",
             "Syed et al. 2023, Attribution Patching Outperforms Automated Circuit Discovery",
             "Merullo et al. 2024, Circuit Component Reuse Across Tasks in Transformer Language Models"),
))
