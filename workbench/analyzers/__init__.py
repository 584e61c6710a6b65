"""The registry of analyses that `analyze`, the CLI, the report and the dashboard all read.

Adding an analysis is one module with one public function ``fn(model, prompts) -> DataFrame``
plus one `register` call (STYLE.md). The `Analyzer` it registers carries everything the views
need, so no view is edited for it: its figures, its findings for the report's first section,
its page in the dashboard, the glossary entries of its columns, the prompts it used, and the
model-level numbers that run comparisons put side by side.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping

import pandas as pd


@dataclass(frozen=True)
class Analyzer:
    """One registered analysis.

    Attributes:
        name: the table name in a run (``head_summary``).
        fn: ``fn(model, prompts) -> DataFrame`` with one row per (layer, head) unless noted.
        title: a short human title.
        mode: which capture produced it (``"exact"`` hooks or ``"stream"`` statistics).
        applies: ``applies(model) -> str | None``: None if it runs on this model, else why not.
        figures: ``figures(frame) -> list[go.Figure]`` for the report, dashboard and notebooks
            (default: a layer × head grid per numeric score, `workbench.figures.default_figures`).
        sources: the papers its definitions and defaults come from (for the report's method note).
        params: what it runs with, stored in each table's manifest entry (thresholds, methods,
            prompt counts, seeds): a dict or ``params(prompts) -> dict``, over the keyword
            defaults of ``fn`` (`keyword_defaults`); declare it when ``fn`` wraps another call.
        family: the block of the report's findings it belongs to (``"sinks"``, ``"circuits"``,
            ...; a new name makes a new block). None: no findings block.
        page: the dashboard page that shows its figures, as a URL slug (``"retrieval"`` is
            ``/retrieval``; a new slug makes a new page). None: the family's name; ``""``: no
            page of its own (its scores still appear on the overview and head pages).
        glossary: `workbench.glossary.Term` entries for columns the built-in glossary lacks,
            keyed by column name.
        findings: ``findings(frame, run) -> list[workbench.findings.Finding]``: what the report's
            first section says about the table, in words and numbers, naming heads.
        example: which stored example prompt (`workbench.analyzers.examples`) the heads its
            findings name are drawn on: ``"prompt"`` (the run's first prompt), ``"repeated"``
            (a repeated random sequence), or a prompt-set name from ``prompts``.
        prompts: ``prompts(model, run_prompts) -> {set name: [prompt text]}``: the prompts it
            uses, when not the run's own (suites, probes); stored in the run's ``prompts`` table
            so every section can say which prompts it used and show them.
        summary: ``summary(frame) -> {label: number}``: model-level numbers for comparing runs
            (``{"Sink^ε (% of heads)": 66.7}``).
        capture: ``fn`` reads the shared descriptive capture (``fn(model, prompts, capture=...)``
            with a `workbench.description.Description`): `analyze` makes one for all such analyses.
    """

    name: str
    fn: Callable[..., pd.DataFrame]
    title: str
    mode: str = "exact"
    applies: Callable[[object], str | None] = lambda model: None
    figures: Callable[[pd.DataFrame], list] | None = None
    sources: tuple[str, ...] = ()
    params: dict | Callable[[list], dict] | None = None
    family: str | None = None
    page: str | None = None
    glossary: Mapping[str, object] = field(default_factory=dict)
    findings: Callable[[pd.DataFrame, object], list] | None = None
    example: str = "prompt"
    prompts: Callable[[object, list], dict[str, list[str]]] | None = None
    summary: Callable[[pd.DataFrame], dict[str, float]] | None = None
    capture: bool = False

    def make_figures(self, frame: pd.DataFrame) -> list:
        from workbench.figures import default_figures

        return (self.figures or default_figures)(frame)

    @property
    def page_slug(self) -> str:
        """The dashboard page slug ("" for none): ``page``, else the family as a slug."""
        if self.page is not None:
            return self.page
        return (self.family or "").replace(" ", "-")

    def make_findings(self, frame: pd.DataFrame, run) -> list:
        return list(self.findings(frame, run)) if self.findings else []

    def make_summary(self, frame: pd.DataFrame) -> dict[str, float]:
        return dict(self.summary(frame)) if self.summary else {}


ANALYZERS: dict[str, Analyzer] = {}


def keyword_defaults(fn: Callable, **overrides) -> dict:
    """The defaults of ``fn``'s parameters after ``(model, prompts)`` that JSON can hold, updated
    with ``overrides``: the parameters a call ``fn(model, prompts, **overrides)`` runs with."""
    import inspect

    out = {}
    for name, param in list(inspect.signature(fn).parameters.items())[1:]:
        if name != "prompts" and param.default is not inspect.Parameter.empty and (
                param.default is None or isinstance(param.default, (bool, int, float, str))):
            out[name] = param.default
    return {**out, **overrides}


def register(analyzer: Analyzer) -> Analyzer:
    ANALYZERS[analyzer.name] = analyzer
    return analyzer


def page_title(slug: str) -> str:
    """A page's name from its slug (``"head-map"`` → ``"Head map"``)."""
    return slug.replace("-", " ").capitalize()


def pages() -> dict[str, list[str]]:
    """Dashboard pages from the registry: ``{slug: [analysis names]}`` in registry order."""
    out: dict[str, list[str]] = {}
    for name, analyzer in ANALYZERS.items():
        if analyzer.page_slug:
            out.setdefault(analyzer.page_slug, []).append(name)
    return out


def families() -> dict[str, list[str]]:
    """Findings blocks from the registry: ``{family: [analysis names]}`` in registry order."""
    out: dict[str, list[str]] = {}
    for name, analyzer in ANALYZERS.items():
        if analyzer.family:
            out.setdefault(analyzer.family, []).append(name)
    return out


from workbench.analyzers import summary  # noqa: E402,F401  (registers itself)
from workbench.analyzers import stream_stats  # noqa: E402,F401  (registers itself)
from workbench.analyzers import importance, patterns, sinks  # noqa: E402,F401  (register themselves)
from workbench.analyzers import accuracy  # noqa: E402,F401  (registers itself, before the causal sections)
from workbench.analyzers import circuits_tables, retrieval, niah, saliency  # noqa: E402,F401  (register themselves)
from workbench.analyzers import rankings  # noqa: E402,F401  (importance by every method, pruning curves)
from workbench.analyzers import causal_checks, duo_deploy  # noqa: E402,F401  (causal checks; DuoAttention)
from workbench.analyzers import examples  # noqa: E402,F401  (last: it reads the others' prompt sets)
