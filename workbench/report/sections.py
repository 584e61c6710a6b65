"""The sections of a run's report, each built from the registry and the run alone (no model):
findings first (one block per family, naming heads, drawing them on stored examples, with their
causal checks), heads ranked by every score, a detailed section per analysis, the glossary and
the prompts."""

from __future__ import annotations

import html

import numpy as np
import pandas as pd

from workbench import findings as F
from workbench.analyzers import ANALYZERS, families
from workbench.analyzers.examples import SUPPORT, example_of  # SUPPORT: tables with no section of their own
from workbench.errors import WorkbenchError
from workbench.figures import example_pattern, position_labels, score_columns
from workbench.figures.checks import complete_checks
from workbench.glossary import entries, lookup
from workbench.report.page import Page, fmt, table

CARDS = 6  # most heads drawn per findings block
RANKED = 5  # heads per row of the ranked table
ORDER = {"high": "highest first", "low": "lowest first", "abs": "largest |value| first"}


class Tables:
    """The run's tables, each read once; a table whose file is missing or damaged reads as None
    (its own section says so and gives the command that restores it)."""

    def __init__(self, run):
        self.run, self._cache = run, {}

    def get(self, name: str) -> pd.DataFrame | None:
        if name not in self._cache:  # read (and so hash-checked, `Run.table`) once per report
            try:
                self._cache[name] = self.run.table(name) if name in self.run else None
            except WorkbenchError:
                self._cache[name] = None
        return self._cache[name]

    def problem(self, name: str) -> str | None:
        """Why the run's table ``name`` cannot be read (`Run.problem`); None when it reads or the
        run lacks it."""
        if name not in self.run or self.get(name) is not None:
            return None
        return self.run.problem(name) or "its file cannot be read"


def esc(text) -> str:
    return html.escape(str(text))


def term_link(column: str, table_name: str) -> str:
    """The column's label, linked to its glossary row, its definition as a tooltip."""
    term = lookup(column, table_name)
    if term is None:
        return f"<code>{esc(column)}</code>"
    return f'<a href="#gl-{esc(_key(term))}" title="{esc(term.tooltip())}">{esc(term.label)}</a>'


def _key(term) -> str:
    return term.label.replace(" ", "-").replace("(", "").replace(")", "").replace("α₀", "a0")


# -- prompts --------------------------------------------------------------------------------
def prompts_used(tables: Tables, name: str) -> str:
    """"Prompts: ..." for one analysis: how many, from which set, linked to the Prompts section."""
    stored = tables.get("prompts")
    n_run = tables.run.manifest.get("n_prompts")
    if stored is None or "used_by" not in stored.columns:
        return (f'<p class="note">Prompts: the run\'s {esc(n_run)} prompts, unless its docstring says otherwise '
                "(this run stores no prompt texts).</p>")
    parts = [f'<a href="#prompts-{esc(_slug(s))}">{n} prompts of set “{esc(s)}”</a> ({low}–{high} tokens)'
             for s, n, low, high in prompt_sets(stored, name)]
    return f'<p class="note">Prompts: {"; ".join(parts)}.</p>' if parts else ""


def prompt_sets(stored: pd.DataFrame | None, name: str) -> list[tuple[str, int, int, int]]:
    """``[(set, prompts, fewest tokens, most tokens)]`` of the sets analysis ``name`` used, from a
    run's ``prompts`` table (its ``used_by`` column); [] without such a table (the report's
    sections and the dashboard's captions both say it this way)."""
    if stored is None or "used_by" not in stored.columns:
        return []
    users = stored.groupby("set", sort=False)["used_by"].first()
    return [(s, len(rows), int(rows["n_tokens"].min()), int(rows["n_tokens"].max()))
            for s, rows in stored.groupby("set", sort=False) if name in str(users[s]).split(",")]


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() else "-" for ch in text.lower()).strip("-")


def prompts_section(tables: Tables) -> str:
    stored = tables.get("prompts")
    if stored is None:
        return (f"<p>This run stores no prompt texts: its {esc(tables.run.manifest.get('n_prompts'))} prompts have "
                f"sha256 <code>{esc(tables.run.manifest.get('prompts_hash'))}</code>. "
                "<code>workbench analyze --analysis prompts</code> adds them.</p>")
    out = []
    for name, rows in stored.groupby("set", sort=False):
        users = ", ".join(str(rows["used_by"].iloc[0]).split(",")) if "used_by" in rows.columns else ""
        items = "".join(f"<li>{esc(p if len(p) <= 2000 else p[:2000] + ' …')}</li>" for p in rows["prompt"])
        out.append(f'<details id="prompts-{esc(_slug(name))}"><summary><b>{esc(name)}</b>: {len(rows)} prompts, '
                   f'{int(rows["n_tokens"].min())}–{int(rows["n_tokens"].max())} tokens'
                   f'{"; used by " + esc(users) if users else ""}</summary><ol class="prompts" start="0">{items}</ol>'
                   "</details>")
    return "<p>Every prompt set the analyses used (click to open).</p>" + "".join(out)


# -- findings -------------------------------------------------------------------------------
def causal_check(tables: Tables, table_name: str, ranking: str | None, k: int = 5) -> tuple[str, bool]:
    """The causal check of a ranking from the run's ``causal_checks`` table (`F.ranking_keys`):
    ``(text, beats_random)``; ``("", True)`` when the run has none for it."""
    checks = tables.get("causal_checks")
    if checks is None or ranking is None or "ranking" not in checks.columns:
        return "", True
    rows = checks[checks["ranking"].astype(str).isin(F.ranking_keys(table_name, ranking))]
    if rows.empty:
        return "", True
    ks = sorted(int(x) for x in rows["k"].unique())
    chosen = max([x for x in ks if x <= k] or ks[:1])
    row = complete_checks(rows[rows["k"] == chosen]).iloc[0]  # a table's own verdict, else the one rule
    beats = bool(row.beats_random)
    text = (f"top-{chosen} ablated: {row.metric} {fmt(float(row.top))} vs bottom-{chosen} {fmt(float(row.bottom))} "
            f"and random {chosen}-sets {fmt(float(row.random_median))} [{fmt(float(row.random_lo))}, "
            f"{fmt(float(row.random_hi))}]" + ("" if beats else ": does not beat random"))
    return text, beats


def token_strip(weights: np.ndarray, positions, tokens, query: int | None = None) -> str:
    """A static head view: the prompt's kept tokens shaded by the attention of one query row
    (default the last kept position), as in bertviz's token view."""
    row = len(positions) - 1 if query is None else query
    values = weights[row]
    peak = float(values.max()) or 1.0
    spans = "".join(f'<span class="tok{" q" if i == row else ""}" title="{esc(lab)}: {values[i]:.3f}" '
                    f'style="background:rgba(33,113,181,{values[i] / peak:.2f})">{esc(tokens[i])}</span>'
                    for i, lab in enumerate(position_labels(positions, tokens)))
    return (f'<div class="tokens">attention from {esc(positions[row])}: {esc(tokens[row])} → {spans}</div>')


def head_card(doc: Page, examples: pd.DataFrame | None, example: str, head: F.NamedHead, table_name: str) -> str:
    term = lookup(head.score, table_name)
    label = term.label if term else head.score
    title = f"{head.label} · {label} {fmt(head.value)}"
    found = None if examples is None else (example_of(examples, example, head.layer, head.head)
                                          or example_of(examples, "prompt", head.layer, head.head))
    if found is None:
        return f'<div class="head"><b>{esc(title)}</b><p class="note">no stored pattern for this head</p></div>'
    weights, positions, tokens, n = found
    used = example if example_of(examples, example, head.layer, head.head) else "prompt"
    fig = example_pattern(weights, positions, tokens, n_tokens=n, title=f"{title} · on “{used}”")
    return f'<div class="head">{doc.figure(fig)}{token_strip(weights, positions, tokens)}</div>'


def findings_section(doc: Page, tables: Tables) -> str:
    """One block per family: sentences, named heads with scores and causal checks, patterns."""
    examples = tables.get("head_examples")
    blocks = []
    for family in F.family_order(families()):
        names = [n for n in families()[family] if tables.get(n) is not None]
        if not names:
            continue
        sentences, rows, cards, drawn = [], [], [], set()
        for name in names:
            analyzer = ANALYZERS[name]
            try:
                found = analyzer.make_findings(tables.get(name), tables.run)
            except Exception as exc:  # noqa: BLE001 - one analysis's summary must not sink the report
                found = [F.Finding(f"{analyzer.title}: could not summarise ({type(exc).__name__}: {exc})", caveat=True)]
            for finding in found:
                check, beats = causal_check(tables, name, finding.ranking)
                css = ' class="caveat"' if finding.caveat or not beats else ""
                sentences.append(f"<p{css}>{esc(finding.text)}"
                                 f'{" Causal check: " + esc(check) + "." if check else ""} '
                                 f'<a href="#analysis-{esc(name)}">details</a></p>')
                for h in finding.heads:
                    rows.append([h.label, term_link(h.score, name), fmt(h.value), esc(check or "—")])
                    key = (h.layer, h.head, finding.example or analyzer.example)
                    if key not in drawn and len(drawn) < CARDS:
                        drawn.add(key)
                        cards.append(head_card(doc, examples, key[2], h, name))
            used = prompts_used(tables, name)
            if used not in sentences:  # analyses of one family often share their prompts
                sentences.append(used)
        named = table(rows, ["head", "score", "value", "causal check"], raw=True, numeric=(2,)) if rows else ""
        note = ("" if examples is not None or not rows else
                '<p class="note">Patterns need the run\'s <code>head_examples</code> table '
                "(<code>workbench analyze --analysis head_examples</code>).</p>")
        blocks.append(f'<div class="block" id="finding-{esc(_slug(family))}"><h3>{esc(F.family_title(family))}</h3>'
                      + "".join(sentences) + named + note + f'<div class="heads">{"".join(cards)}</div></div>')
    if not blocks:
        return "<p>This run holds no table with findings.</p>"
    lead = ('<p class="note">What the run shows, per family of analyses. Heads are named L&lt;layer&gt;H&lt;head&gt; '
            "with the score they are named for; each is drawn on a prompt of the set its analysis used (tokens "
            "labelled by position), with the attention of its last query over the tokens below it.</p>")
    return lead + "".join(blocks)


# -- heads ranked ---------------------------------------------------------------------------
def per_head_parts(frame: pd.DataFrame | None) -> list[tuple[str, pd.DataFrame]]:
    """``[(label, part)]`` of a per-head table: real heads only (no aggregates, ``view == "head"``),
    split by the text columns that vary within a head; [] for tables that are not per head."""
    rows = None if frame is None else F.head_rows(frame)
    return [] if rows is None else [(", ".join(where.values()), part) for where, part in F.head_groups(rows)]


def ranked_section(tables: Tables) -> str:
    """Every ranking score's top heads, ranked by the score's direction (glossary)."""
    rows = []
    for name in tables.run.tables:
        if name in SUPPORT:
            continue
        for label, part in per_head_parts(tables.get(name)):
            for column in score_columns(part):
                term = lookup(column, name)
                if term is None or term.direction is None or term.same_as or part[column].nunique() < 2:
                    continue
                best = F.top_heads(part, column, RANKED, term.direction, name)
                signed = term.direction == "abs"
                cells = [f"{h.label} ({'+' if signed and h.value > 0 else ''}{fmt(h.value)})" for h in best]
                rows.append([esc(name + (f" [{label}]" if label else "")), term_link(column, name),
                             ORDER[term.direction]] + [esc(c) for c in cells] + [""] * (RANKED - len(cells)))
    if not rows:
        return "<p>No per-head score to rank.</p>"
    return ('<p class="note">Each score ranks heads by what it means (glossary): entropy lowest first, effects by '
            "|value| with the sign shown; means over prompts. L = layer, H = head.</p>"
            + table(rows, ["table", "score", "order"] + [f"#{i}" for i in range(1, RANKED + 1)], raw=True))


def flags(frame: pd.DataFrame) -> str:
    """'is_sink: 5 of 64 heads' for each boolean per-head column (a head counts if true in most rows)."""
    out = []
    for label, part in per_head_parts(frame):
        bools = [c for c in part.columns if pd.api.types.is_bool_dtype(part[c])]
        heads = part.groupby(["layer", "head"])[bools].mean() if bools else None
        out += [f"{c}{f' [{label}]' if label else ''}: {int((heads[c] > 0.5).sum())} of {len(heads)} heads"
                for c in bools]
    return f'<p>{esc("; ".join(out))}</p>' if out else ""


# -- glossary -------------------------------------------------------------------------------
def glossary_section(tables: Tables) -> str:
    used = [(n, tables.get(n).columns) for n in tables.run.tables if n not in SUPPORT and tables.get(n) is not None]
    rows = []
    for name, column, term in entries(used):
        same = f" Same numbers as {term.same_as}." if term.same_as else ""
        rows.append([f'<b id="gl-{esc(_key(term))}">{esc(term.label)}</b>', f"<code>{esc(name)}.{esc(column)}</code>",
                     esc(term.formula), esc(term.range), esc(term.higher or "—"), esc(term.note + same),
                     esc(term.source or "—")])
    return ('<p class="note">Every score column of this run, defined once; the dashboard shows the same text as '
            "tooltips.</p>" + table(rows, ["score", "stored as", "definition", "range", "higher means", "note",
                                            "source"], raw=True))
