"""The registry of analyses that `analyze`, the CLI, the report and the dashboard all read.

Adding an analysis is one module with one public function ``fn(model, prompts) -> DataFrame``
plus one `register` call (STYLE.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

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
    """

    name: str
    fn: Callable[..., pd.DataFrame]
    title: str
    mode: str = "exact"
    applies: Callable[[object], str | None] = lambda model: None
    figures: Callable[[pd.DataFrame], list] | None = None
    sources: tuple[str, ...] = ()

    def make_figures(self, frame: pd.DataFrame) -> list:
        from workbench.figures import default_figures

        return (self.figures or default_figures)(frame)


ANALYZERS: dict[str, Analyzer] = {}


def register(analyzer: Analyzer) -> Analyzer:
    ANALYZERS[analyzer.name] = analyzer
    return analyzer


from workbench.analyzers import summary  # noqa: E402,F401  (registers itself)
from workbench.analyzers import importance, patterns, sinks  # noqa: E402,F401  (register themselves)
from workbench.analyzers import circuits, retrieval, saliency  # noqa: E402,F401  (register themselves)
from workbench.analyzers import rankings  # noqa: E402,F401  (importance by every method, pruning curves)
from workbench.analyzers import causal_checks, duo  # noqa: E402,F401  (causal checks; DuoAttention)
