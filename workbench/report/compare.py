"""Two runs side by side (``workbench report RUN_A RUN_B``, and the dashboard's Compare page):
model-level numbers from each analysis's ``summary``, every shared score by relative layer depth,
and per-head differences when the two models have the same shape (e.g. two checkpoints)."""

from __future__ import annotations

import html

import pandas as pd

from workbench.analyzers import ANALYZERS
from workbench.figures import depth_profile, head_difference, score_columns
from workbench.glossary import lookup
from workbench.report.page import Page, fmt, table
from workbench.report.sections import SUPPORT, Tables, per_head_parts


class _Readable(Tables):
    """The run's tables, a damaged one read as missing (a comparison shows what it can)."""

    def get(self, name: str):
        from workbench.errors import WorkbenchError

        try:
            return super().get(name)
        except WorkbenchError:
            return None


def run_label(run, letter: str) -> str:
    model = (run.manifest.get("model") or {}).get("name") or "?"
    return f"{letter}: {model} ({run.path.name})"


def shape(run) -> tuple[int, int] | None:
    model = run.manifest.get("model") or {}
    return (int(model["n_layers"]), int(model["n_heads"])) if model.get("n_layers") and model.get("n_heads") else None


def model_numbers(runs) -> list[list]:
    """Rows ``[quantity, value in run 1, value in run 2, ...]``: model facts, then every registered
    analysis's ``summary`` numbers (``—`` where a run lacks the table)."""
    facts = []
    for key, label in (("name", "model"), ("architecture", "architecture")):
        facts.append([label] + [str((r.manifest.get("model") or {}).get(key)) for r in runs])
    facts.append(["layers × heads"] + [("—" if shape(r) is None else f"{shape(r)[0]} × {shape(r)[1]}") for r in runs])
    facts.append(["prompts"] + [str(r.manifest.get("n_prompts")) for r in runs])
    tables = [_Readable(r) for r in runs]
    numbers: dict[str, list] = {}
    for name, analyzer in ANALYZERS.items():
        if analyzer.summary is None:
            continue
        for i, t in enumerate(tables):
            frame = t.get(name)
            if frame is None or frame.empty:
                continue
            try:
                values = analyzer.make_summary(frame)
            except Exception:  # noqa: BLE001 - a summary that cannot read an old table shows as missing
                continue
            for label, value in values.items():
                numbers.setdefault(label, [None] * len(runs))[i] = value
    return facts + [[label] + ["—" if v is None else fmt(float(v)) for v in values] for label, values in numbers.items()]


def shared_scores(runs) -> list[tuple[str, str, str, list[pd.DataFrame]]]:
    """``(table, part label, column, [part of each run])`` for every ranking score (glossary
    direction set, not a repeat) that every run holds, per-head, under the same part label."""
    tables = [_Readable(r) for r in runs]
    out = []
    for name in runs[0].tables:
        if name in SUPPORT or not all(name in r for r in runs):
            continue
        frames = [t.get(name) for t in tables]
        if any(f is None for f in frames):
            continue
        parts = [dict(per_head_parts(f)) for f in frames]
        for label, first in parts[0].items():
            if not all(label in p for p in parts[1:]):
                continue
            for column in score_columns(first):
                term = lookup(column, name)
                if term is None or term.direction is None or term.same_as:
                    continue
                if all(column in p[label].columns for p in parts):
                    out.append((name, label, column, [p[label] for p in parts]))
    return out


def render_compare(run_a, run_b) -> tuple[str, int]:
    """The comparison page of two runs as HTML text, and how many figures it holds."""
    runs = [run_a, run_b]
    labels = [run_label(run_a, "A"), run_label(run_b, "B")]
    doc = Page(title=f"Attention Workbench comparison: {labels[0]} vs {labels[1]}")
    doc.add("numbers", "Model-level numbers", table(model_numbers(runs), ["quantity", *labels], numeric=(1, 2)))
    same = shape(run_a) is not None and shape(run_a) == shape(run_b)
    profiles, diffs = [], []
    for name, part, column, frames in shared_scores(runs):
        term = lookup(column, name)
        label = (term.label if term else column) + (f" [{part}]" if part else "")
        title = f"{name}: {label}"
        profiles.append(doc.figure(depth_profile(dict(zip(labels, frames)), column, label=label, title=title)))
        if same:
            diffs.append(doc.figure(head_difference(frames[0], frames[1], column, names=("A", "B"), label=label)))
    note = ('<p class="note">Median over each layer\'s heads, with the 25–75% band, against relative depth '
            "(layer / (layers − 1)), so models of different depth share the axis.</p>")
    doc.add("depth", "Scores by relative depth", note + ("".join(profiles) or "<p>The runs share no per-head score.</p>"))
    if same:
        doc.add("differences", "Per-head differences (B − A)", "".join(diffs) or "<p>No shared per-head score.</p>")
    else:
        doc.add("differences", "Per-head differences",
                f"<p>The models differ in shape ({html.escape(str(shape(run_a)))} vs {html.escape(str(shape(run_b)))} "
                "layers × heads), so heads are compared by depth only.</p>")
    return doc.render(f"A: run {run_a.path} · B: run {run_b.path}"), doc.n_figures
