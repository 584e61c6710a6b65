"""The report page: plain string templates, every value passed through `html.escape`.

One page holds plotly.js once (inlined in ``<head>``), then each figure as a JSON spec in a
``<script type="application/json">`` block that one loop at the end draws with ``Plotly.newPlot``.
Nothing is fetched: no ``<script src>``, no fonts, no favicon (``data:`` icon), no MathJax.
"""

from __future__ import annotations

import html
import json
import time
from dataclasses import dataclass, field

import pandas as pd
import plotly.io as pio
from plotly.offline import get_plotlyjs

from workbench.figures import score_columns
from workbench.report.figures import downsample_heatmaps

TOP_K = 5

STYLE = """
body{font:15px/1.5 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;color:#1d232b;background:#fafbfc}
header{background:#1d2b3a;color:#fff;padding:1.2em 2em}header h1{margin:0 0 .2em;font-size:1.5em}
header p{margin:0;opacity:.85}main{max-width:1100px;margin:0 auto;padding:1em 2em 4em}
nav{margin:1em 0;font-size:.92em}nav a{margin-right:1em;white-space:nowrap}
section{background:#fff;border:1px solid #dde3ea;border-radius:6px;padding:1em 1.4em;margin:1.2em 0}
h2{margin:.2em 0 .5em;font-size:1.25em}h3{font-size:1.02em;margin:1em 0 .3em}
table{border-collapse:collapse;font-size:.88em;margin:.4em 0}td,th{border:1px solid #dde3ea;padding:.25em .6em;text-align:left;vertical-align:top}
th{background:#f0f3f6}code{font-size:.92em}.note{color:#5a6673}.skipped{border-left:4px solid #c98a1b}
.missing{border-left:4px solid #9aa5b1}.wb-figure{min-height:200px;margin:.6em 0}
"""

RENDER = """
(function () {
  var specs = document.querySelectorAll('script.wb-figure-data');
  for (var i = 0; i < specs.length; i++) {
    var target = document.getElementById(specs[i].getAttribute('data-target'));
    try {
      var fig = JSON.parse(specs[i].textContent);
      Plotly.newPlot(target, fig.data, fig.layout || {}, {responsive: true, displaylogo: false});
    } catch (err) {
      console.error('workbench report: figure ' + target.id + ' failed: ' + err);
    }
  }
})();
"""


@dataclass
class Page:
    """The pieces of a report as they are collected (sections in order, figure count)."""

    title: str
    sections: list[tuple[str, str, str, str]] = field(default_factory=list)  # (anchor, heading, body html, css class)
    n_figures: int = 0
    downsampled: int = 0

    def figure(self, fig) -> str:
        """One figure: an empty div plus its JSON spec, drawn by the page's render loop."""
        fig, factor = downsample_heatmaps(fig)
        self.downsampled += factor > 1
        self.n_figures += 1
        target = f"wb-fig-{self.n_figures}"
        spec = pio.to_json(fig, validate=False).replace("</", "<\\/")
        return (f'<div class="wb-figure" id="{target}"></div>'
                f'<script type="application/json" class="wb-figure-data" data-target="{target}">{spec}</script>')

    def add(self, anchor: str, heading: str, body: str, css: str = "") -> None:
        self.sections.append((anchor, heading, body, css))

    def render(self, subtitle: str) -> str:
        nav = " ".join(f'<a href="#{html.escape(a)}">{html.escape(h)}</a>' for a, h, _, _ in self.sections)
        parts = []
        for anchor, heading, body, css in self.sections:
            parts.append(f'<section id="{html.escape(anchor)}" class="{css}"><h2>{html.escape(heading)}</h2>{body}</section>')
        return (
            "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<meta name=\"generator\" content=\"attention-workbench\"><meta name=\"wb-figures\" content=\"{self.n_figures}\">"
            f"<title>{html.escape(self.title)}</title><link rel=\"icon\" href=\"data:,\"><style>{STYLE}</style>"
            f"<script>{get_plotlyjs()}</script></head><body>"
            f"<header><h1>{html.escape(self.title)}</h1><p>{html.escape(subtitle)}</p></header>"
            f"<main><nav>{nav}</nav>{''.join(parts)}</main><script>{RENDER}</script></body></html>\n"
        )


def table(rows: list[list], header: list[str]) -> str:
    """An HTML table of already-formatted cells (escaped here)."""
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def fmt(value) -> str:
    if isinstance(value, float):
        return f"{value + 0.0:.4g}"  # + 0.0 turns -0.0 into 0
    return "—" if value is None else str(value)


def per_head(frame: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """The frame as one row per real (layer, head), for each combination of its label columns.

    Token-level tables (with ``position``) give nothing; a ``view`` column keeps only
    ``view == "head"``; rows with layer or head < 0 (layer/model aggregates) are dropped; text
    columns that vary within a head (e.g. ``task``, ``method``) split the frame into groups
    labelled by their values;
    within a group several rows per head (e.g. per prompt) are averaged.

    Returns:
        ``[(label, heads)]`` where ``heads`` has ``layer, head`` and the numeric and boolean
        columns (booleans become the share of rows that are true); label is "" without groups.
    """
    if not {"layer", "head"} <= set(frame.columns) or "position" in frame.columns:
        return []
    if "view" in frame.columns:
        frame = frame[frame["view"] == "head"].drop(columns="view")
    frame = frame[(frame["layer"] >= 0) & (frame["head"] >= 0)]
    bools = [c for c in frame.columns if pd.api.types.is_bool_dtype(frame[c])]
    cols = score_columns(frame) + bools
    if frame.empty or not cols:
        return []
    text = [c for c in frame.columns if c not in cols and c not in ("layer", "head", "token")
            and not pd.api.types.is_numeric_dtype(frame[c])]
    # a text column that varies within one head (task, method) splits the frame; one that is a
    # property of the head (its pattern type) does not
    labels = [c for c in text if frame.groupby(["layer", "head"])[c].nunique().max() > 1]
    frame = frame.astype({c: float for c in bools})
    groups = frame.groupby(labels, sort=False) if labels else [((), frame)]
    out = []
    for key, part in groups:
        key = key if isinstance(key, tuple) else (key,)
        out.append((", ".join(map(str, key)), part.groupby(["layer", "head"])[cols].mean().reset_index()))
    return out


def ranked_scores(heads: pd.DataFrame, skip: set[str]) -> list[str]:
    """Score columns worth ranking heads by: real-valued ones (not ``skip``: the frame's boolean
    and integer columns, i.e. flags, counts and cluster ids), no map coordinates, not constant."""
    return [c for c in score_columns(heads) if c not in skip and not c.startswith("umap")
            and heads[c].nunique(dropna=True) > 1]


def top_heads(name: str, frame: pd.DataFrame, k: int = TOP_K) -> list[list]:
    """Rows ``[analysis, score, head 1, ..., head k]``: the k heads with the highest mean of each
    real-valued score (within each group of label columns, e.g. per task and method)."""
    skip = {c for c in frame.columns if pd.api.types.is_bool_dtype(frame[c]) or pd.api.types.is_integer_dtype(frame[c])}
    rows = []
    for label, heads in per_head(frame):
        for score in ranked_scores(heads, skip):
            best = heads.dropna(subset=[score]).nlargest(k, score)
            cells = [f"L{int(r.layer)}.H{int(r.head)} ({fmt(float(getattr(r, score)))})" for r in best.itertuples()]
            rows.append([name + (f" [{label}]" if label else ""), score] + cells + [""] * (k - len(cells)))
    return rows


def flags(frame: pd.DataFrame) -> str:
    """'is_sink: 5 of 64 heads' for each boolean per-head column (a head counts if true in most rows)."""
    bools = [c for c in frame.columns if pd.api.types.is_bool_dtype(frame[c])]
    out = []
    for label, heads in per_head(frame):
        out += [f"{c}{f' [{label}]' if label else ''}: {int((heads[c] > 0.5).sum())} of {len(heads)} heads"
                for c in bools]
    return f'<p>{html.escape("; ".join(out))}</p>' if out else ""


def provenance(manifest: dict) -> str:
    """Model, prompts, versions and how each table was made, from ``run.manifest``."""
    model = manifest.get("model") or {}
    facts = [["model " + k, fmt(v)] for k, v in model.items()]
    facts += [["prompts", fmt(manifest.get("n_prompts"))], ["prompts sha256", fmt(manifest.get("prompts_hash"))],
              ["run created", fmt(manifest.get("created"))],
              ["report written", time.strftime("%Y-%m-%dT%H:%M:%S%z")]]
    versions = [[k, v] for k, v in (manifest.get("versions") or {}).items()]
    tables = []
    total = 0.0
    for name, t in manifest.get("tables", {}).items():
        total += t.get("seconds") or 0.0
        params = json.dumps(t.get("params") or {}, sort_keys=True)
        tables.append([name, t.get("rows"), t.get("capture_mode"), fmt(t.get("backend")), fmt(t.get("seconds")),
                       params if params != "{}" else "—", fmt(t.get("written"))])
    skipped = [[n, r] for n, r in (manifest.get("skipped") or {}).items()]
    return (
        table(facts, ["fact", "value"])
        + "<h3>Tables</h3>"
        + table(tables, ["table", "rows", "capture", "backend", "seconds", "params", "written"])
        + f'<p class="note">Analysis time in this run: {total:.1f} s.</p>'
        + ("<h3>Skipped</h3>" + table(skipped, ["analysis", "reason"]) if skipped else "")
        + "<h3>Versions</h3>" + table(versions, ["package", "version"])
    )
