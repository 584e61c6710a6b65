"""The report page: plain string templates, every value passed through `html.escape`.

One page holds plotly.js once, inlined as inert text at the very end of ``<body>`` so it never
delays the first paint; once the page is parsed, after a frame, it is evaluated, and each figure (a JSON spec in a
``<script type="application/json">`` block) is drawn when it scrolls near the viewport
(``IntersectionObserver``). The navigation is sticky. Nothing is fetched: no ``<script src>``,
no fonts, no favicon (``data:`` icon), no MathJax.
"""

from __future__ import annotations

import html
import json
import time
from dataclasses import dataclass, field

import plotly.io as pio
from plotly.offline import get_plotlyjs

from workbench.report.figures import downsample_heatmaps

STYLE = """
body{font:15px/1.5 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;color:#1d232b;background:#fafbfc}
header{background:#1d2b3a;color:#fff;padding:1em 2em}header h1{margin:0 0 .2em;font-size:1.45em}
header p{margin:0;opacity:.85}main{max-width:1150px;margin:0 auto;padding:0 2em 4em}
nav{position:sticky;top:0;z-index:10;background:#fafbfcf2;border-bottom:1px solid #dde3ea;margin:0 -2em;
padding:.45em 2em;font-size:.88em;line-height:1.9}nav a{margin-right:.9em;white-space:nowrap;color:#1f5fa8}
section{background:#fff;border:1px solid #dde3ea;border-radius:6px;padding:1em 1.4em;margin:1.2em 0;scroll-margin-top:4em}
h2{margin:.2em 0 .5em;font-size:1.25em}h3{font-size:1.05em;margin:1.1em 0 .3em}
table{border-collapse:collapse;font-size:.86em;margin:.4em 0}td,th{border:1px solid #dde3ea;padding:.2em .55em;text-align:left;vertical-align:top}
th{background:#f0f3f6}code{font-size:.92em}.note{color:#5a6673;font-size:.92em}.skipped{border-left:4px solid #c98a1b}
.missing{border-left:4px solid #9aa5b1}.wb-figure{min-height:200px;margin:.6em 0}
.block{border-top:1px solid #e6eaef;padding-top:.3em;margin-top:.8em;scroll-margin-top:4em}.caveat{color:#8a4b00}
.heads{display:flex;flex-wrap:wrap;gap:12px}.head{flex:0 0 340px;border:1px solid #e6eaef;border-radius:4px;padding:4px}
.head .wb-figure{min-height:300px;margin:0}.tokens{font-size:.78em;line-height:1.8;margin:2px 4px}
.tok{padding:0 2px;margin:0 1px;border-radius:2px;white-space:pre}.tok.q{outline:2px solid #d9480f}
.num{text-align:right;font-variant-numeric:tabular-nums}details{margin:.3em 0}summary{cursor:pointer}
ol.prompts li{font-size:.82em;white-space:pre-wrap;word-break:break-word;margin:.2em 0}
"""

RENDER = """
(function () {
  function draw(target) {
    var spec = document.querySelector('script.wb-figure-data[data-target="' + target.id + '"]');
    if (!spec || target.getAttribute('data-drawn')) return;
    target.setAttribute('data-drawn', '1');
    try {
      var fig = JSON.parse(spec.textContent);
      Plotly.newPlot(target, fig.data, fig.layout || {}, {responsive: true, displaylogo: false});
    } catch (err) {
      console.error('workbench report: figure ' + target.id + ' failed: ' + err);
    }
  }
  function start() {
    window.wbPlotlyAt = performance.now();
    var code = document.getElementById('wb-plotly');
    var script = document.createElement('script');
    script.text = code.textContent;
    document.head.appendChild(script);
    var figures = document.querySelectorAll('div.wb-figure');
    if (!('IntersectionObserver' in window)) { figures.forEach(draw); return; }
    var seen = new IntersectionObserver(function (entries) {
      entries.forEach(function (e) { if (e.isIntersecting) { seen.unobserve(e.target); draw(e.target); } });
    }, {rootMargin: '600px 0px'});
    figures.forEach(function (f) { seen.observe(f); });
    window.wbDrawAll = function () { figures.forEach(draw); };
  }
  // plotly.js is the page's last element: read it once the whole page is parsed, after a frame
  function later() { requestAnimationFrame(function () { setTimeout(start, 0); }); }
  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', later); else later();
})();
"""


@dataclass
class Page:
    """The pieces of a report as they are collected (sections in order, figure count)."""

    title: str
    sections: list[tuple[str, str, str, str]] = field(default_factory=list)  # (anchor, heading, body html, css class)
    n_figures: int = 0
    downsampled: int = 0

    def figure(self, fig, css: str = "") -> str:
        """One figure: an empty div plus its JSON spec, drawn when it scrolls into view."""
        fig, factor = downsample_heatmaps(fig)
        self.downsampled += factor > 1
        self.n_figures += 1
        target = f"wb-fig-{self.n_figures}"
        spec = pio.to_json(fig, validate=False).replace("</", "<\\/")
        return (f'<div class="wb-figure{" " + css if css else ""}" id="{target}"></div>'
                f'<script type="application/json" class="wb-figure-data" data-target="{target}">{spec}</script>')

    def add(self, anchor: str, heading: str, body: str, css: str = "") -> None:
        self.sections.append((anchor, heading, body, css))

    def render(self, subtitle: str, nav: list[tuple[str, str]] | None = None) -> str:
        """The whole page; ``nav`` is ``[(anchor, label)]`` (default: one link per section)."""
        links = nav if nav is not None else [(a, h) for a, h, _, _ in self.sections]
        nav_html = " ".join(f'<a href="#{html.escape(a)}">{html.escape(h)}</a>' for a, h in links)
        parts = [f'<section id="{html.escape(a)}" class="{css}"><h2>{html.escape(h)}</h2>{body}</section>'
                 for a, h, body, css in self.sections]
        return (
            "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<meta name=\"generator\" content=\"attention-workbench\"><meta name=\"wb-figures\" content=\"{self.n_figures}\">"
            f"<title>{html.escape(self.title)}</title><link rel=\"icon\" href=\"data:,\"><style>{STYLE}</style></head><body>"
            f"<header><h1>{html.escape(self.title)}</h1><p>{html.escape(subtitle)}</p></header>"
            f"<main><nav>{nav_html}</nav>{''.join(parts)}</main><script>{RENDER}</script>"
            f"<script type=\"text/plain\" id=\"wb-plotly\">{get_plotlyjs()}</script></body></html>\n"
        )


def table(rows: list[list], header: list[str], *, raw: bool = False, numeric: tuple[int, ...] = ()) -> str:
    """An HTML table of already-formatted cells (escaped here unless ``raw``: cells are HTML).

    ``numeric``: column indices right-aligned."""
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    esc = (lambda c: str(c)) if raw else (lambda c: html.escape(str(c)))
    body = "".join("<tr>" + "".join(f'<td{" class=num" if i in numeric else ""}>{esc(c)}</td>'
                                    for i, c in enumerate(row)) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def fmt(value) -> str:
    if isinstance(value, float):
        return f"{value + 0.0:.4g}"  # + 0.0 turns -0.0 into 0
    return "—" if value is None else str(value)


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
