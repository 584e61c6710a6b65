"""The registered circuit tables: ``circuits`` (per-head effects, the faithful circuit),
``circuit_faithfulness_curve`` (top-k vs random k-sets) and ``edge_circuits`` (EAP-IG edges),
each on the ioi and colored_objects suites of the run's model.

The three share one computation per (task, method) through `workbench.tasks.memo`, so the curve
ranks heads exactly as the circuits table does. Suites: the demo's bundled rows (the first
`DEMO_EXAMPLES`, and as many of its seed-1 rows held out), or the rows generated for any other
causal LM (`workbench.tasks.analysis_suite`, seed 0 to find, seed 1 held out).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from workbench import findings
from workbench.analyzers import Analyzer, keyword_defaults, register
from workbench.analyzers.circuits import (
    DRAWS,
    METHODS,
    TARGET,
    TASKS,
    circuit,
    read_task,
)
from workbench.figures import circuit_figures
from workbench.findings import summaries

DEMO_EXAMPLES = 16  # examples per suite (found on, and held out) in the registered analyses on the demo
CURVE_METHOD = "activation_patching"  # the ranking the registered curve follows (exact effects)
EDGE_METHOD, EDGE_STEPS = "eap_ig", 5  # Hanna et al. 2024's EAP-IG with m = 5 steps
EDGE_SEARCH = {"exhaustive": 1, "growth": 2.0, "rtol": 0.25}  # graphs beyond the demo: sizes 1, 2, 4, ... bisected to 25%


def _suites(model) -> dict[str, tuple[list[dict], list[dict]]]:
    """``{task: (rows to find on, held-out rows)}`` for the tasks this model's tokenizer can spell."""
    from workbench.tasks import analysis_suite, supports

    out = {}
    for task in TASKS:
        if supports(model, task):
            continue
        find, held = read_task(task, model), analysis_suite(task, model, seed=1)
        if model.source == "demo":
            find, held = find[:DEMO_EXAMPLES], held[:DEMO_EXAMPLES]
        out[task] = (find, held)
    return out


def _circuit(model, task: str, method: str, rows) -> pd.DataFrame:
    from workbench.tasks import memo

    find, held = rows
    return memo(model, ("registered circuit", task, method, len(find), len(held)),
                lambda: circuit(model, find, method, held_out=held))


def task_circuits(model, prompts=None) -> pd.DataFrame:
    """The registered analysis: both methods on each suite; ``in_circuit`` marks the smallest
    top-|effect| set whose faithfulness reaches `TARGET` on the held-out rows (resample ablation:
    heads outside it take their output on each prompt's corrupted twin, `workbench.circuit`), none
    when no set of at most half the heads does.
    A task the tokenizer cannot spell is left out (the task_accuracy table says why); ``prompts``
    is not used — circuits need corrupted pairs.

    Returns:
        DataFrame ``task, method, layer, head, effect, in_circuit``.
    """
    frames = [_circuit(model, task, method, rows).assign(task=task, method=method)
              for task, rows in _suites(model).items() for method in METHODS]
    cols = ["task", "method", "layer", "head", "effect", "in_circuit"]
    return pd.concat(frames, ignore_index=True)[cols]


def _coarse_sizes(model, frame: pd.DataFrame) -> list[int]:
    """k = 1, 2, 4, ... up to every head, and the circuit's size (models beyond 64 heads)."""
    n_total = model.n_layers * model.n_heads
    sizes = {min(2 ** i, n_total) for i in range(n_total.bit_length() + 1)} | {n_total}
    size = int(frame["in_circuit"].sum())
    return sorted(sizes | ({size} if size else set()))


def task_curves(model, prompts=None) -> pd.DataFrame:
    """The faithfulness curve of each suite's `CURVE_METHOD` circuit (`circuit_curve`): k ->
    faithfulness of the top-k heads and of `DRAWS` random k-sets, and of the model with them
    ablated, on the held-out rows. Models beyond 64 heads get k = 1, 2, 4, ... (and the circuit's
    size) to keep the report within minutes; the demo every k up to 8, then ×1.5.

    Returns:
        DataFrame ``task, method, k, top, random_median, random_lo, random_hi, in_circuit,
        ablated_top, ablated_random_median``.
    """
    from workbench.analyzers.circuits_faithful import circuit_curve

    frames = []
    for task, (find, held) in _suites(model).items():
        frame = _circuit(model, task, CURVE_METHOD, (find, held))
        sizes = None if model.n_layers * model.n_heads <= 64 else _coarse_sizes(model, frame)
        curve = circuit_curve(model, find + held, frame, held_out=held, draws=DRAWS, ablated=True, sizes=sizes)
        frames.append(curve.assign(task=task, method=CURVE_METHOD))
    cols = ["task", "method", "k", "top", "random_median", "random_lo", "random_hi", "in_circuit",
            "ablated_top", "ablated_random_median"]
    return pd.concat(frames, ignore_index=True)[cols]


def task_edge_circuits(model, prompts=None) -> pd.DataFrame:
    """Each suite's edge circuit (`edge_circuit`, EAP-IG with `EDGE_STEPS` steps, resample
    ablation, faithfulness on the held-out rows). On the demo every size up to 16 edges is tried;
    on bigger graphs the size search is coarse (`EDGE_SEARCH`) to keep a report within minutes.

    Returns:
        DataFrame ``task, upstream, downstream, score, in_circuit, faithfulness`` (the circuit's
        faithfulness, the same on every row of a task; NaN when no set of at most half the edges
        reaches `TARGET`).
    """
    from workbench.analyzers.circuits_edges import edge_circuit

    search = {} if model.source == "demo" else EDGE_SEARCH
    frames = []
    for task, (find, held) in _suites(model).items():
        frame = edge_circuit(model, find, EDGE_METHOD, steps=EDGE_STEPS, held_out=held, **search)
        faith = frame.attrs["faithfulness"]
        frames.append(frame.assign(task=task, faithfulness=np.nan if faith is None else float(faith)))
    cols = ["task", "upstream", "downstream", "score", "in_circuit", "faithfulness"]
    return pd.concat(frames, ignore_index=True)[cols]


def _applies(model) -> str | None:
    from workbench.tasks import supports

    if not model.is_causal:
        return "circuits use the next-token logit difference; this model is an encoder"
    reasons = [supports(model, task) for task in TASKS]
    if all(reasons):
        return "; ".join(reasons) + ": call wb.circuit(model, rows) with clean and corrupted prompts of yours"
    return None


def _edge_applies(model) -> str | None:
    from workbench import edges

    reason = _applies(model)
    kind = getattr(getattr(model.hf_model, "config", None), "model_type", None)
    if reason is None and kind not in edges.SUPPORTED:
        return f"edge graphs support model types {list(edges.SUPPORTED)} (pre-norm blocks); this model is {kind!r}"
    return reason


def _task_sets(model, prompts) -> dict[str, list[str]]:
    """The prompts each suite's circuit was found on, and those its faithfulness was measured on."""
    out = {}
    for task, (find, held) in _suites(model).items():
        out[task] = [r["prompt"] for r in find]
        out[f"{task} (held out)"] = [r["prompt"] for r in held]
    return out


_SOURCES = ("Wang et al. 2022, Interpretability in the Wild (IOI; logit difference, mean ablation)",
            "Conmy et al. 2023, Towards Automated Circuit Discovery (ACDC; resample ablation, faithfulness)",
            "Hanna et al. 2024, Have Faith in Faithfulness (EAP-IG; circuits chosen by faithfulness)")

register(Analyzer(
    "circuits", task_circuits, "Circuits (ioi, colored objects) and their overlap", mode="exact",
    applies=_applies, figures=circuit_figures, family="circuits", findings=findings.circuits, example="ioi",
    prompts=_task_sets, summary=summaries.circuits,
    params=keyword_defaults(circuit, method=list(METHODS), tasks=list(TASKS), examples=DEMO_EXAMPLES),
    sources=_SOURCES + ("Syed et al. 2023, Attribution Patching Outperforms Automated Circuit Discovery",
                        "Merullo et al. 2024, Circuit Component Reuse Across Tasks in Transformer Language Models"),
))

from workbench.analyzers import circuits_views as _views  # noqa: E402  (the views read this module's constants)

register(Analyzer(
    "circuit_faithfulness_curve", task_curves, "Faithfulness of top-k head sets vs random k-sets", mode="exact",
    applies=_applies, figures=_views.curve_figures, family="circuits", page="circuits", findings=_views.curve_findings,
    example="ioi", prompts=_task_sets, summary=_views.curve_summary, glossary=_views.CURVE_TERMS,
    params={"method": CURVE_METHOD, "draws": DRAWS, "target": TARGET, "ablation": "resample", "examples": DEMO_EXAMPLES},
    sources=_SOURCES,
))
register(Analyzer(
    "edge_circuits", task_edge_circuits, "Edge circuits (EAP-IG)", mode="exact", applies=_edge_applies,
    figures=_views.edge_figures, family="circuits", page="circuits", findings=_views.edge_findings, example="ioi",
    prompts=_task_sets, summary=_views.edge_summary, glossary=_views.EDGE_TERMS,
    params={"method": EDGE_METHOD, "steps": EDGE_STEPS, "target": TARGET, "ablation": "resample",
            "examples": DEMO_EXAMPLES, "search (beyond the demo)": EDGE_SEARCH},
    sources=_SOURCES + ("Syed et al. 2023, Attribution Patching Outperforms Automated Circuit Discovery",),
))
