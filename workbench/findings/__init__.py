"""Findings: what a table says, in words and numbers, naming the heads that matter.

An analysis gives ``Analyzer(findings=fn)`` with ``fn(frame, run) -> list[Finding]``; the report
puts its findings first, in one block per ``Analyzer.family``, draws each named head on the
analysis's example prompt (`workbench.analyzers.examples`), and adds the causal check of the
ranking the heads come from when the run has a ``causal_checks`` table.

Causal checks are matched by ranking name: a finding's ``ranking`` (e.g. ``"sink_score"``,
``"effect:ioi"``) is looked up in ``causal_checks.ranking`` as given, then as
``"<table>.<ranking>"``; see `ranking_keys`. A ``causal_checks`` table has the columns
``ranking, k, top, bottom, random_median, random_lo, random_hi, metric`` (DESIGN.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from workbench.glossary import lookup

#: Heads a finding names by default.
TOP = 3
#: Built-in family titles, in the order the report shows them; other families follow in
#: registry order, titled from their name.
FAMILY_TITLES = {
    "sinks": "Attention sinks",
    "massive activations": "Massive activations",
    "head types": "Head types",
    "importance": "Head importance",
    "retrieval": "Retrieval heads",
    "circuits": "Circuits",
    "saliency": "Attention vs saliency",
}


@dataclass(frozen=True)
class NamedHead:
    """A head a finding names, with the score it is named for."""

    layer: int
    head: int
    score: str
    value: float

    @property
    def label(self) -> str:
        return f"L{self.layer}H{self.head}"


@dataclass(frozen=True)
class Finding:
    """One statement of a findings block.

    Attributes:
        text: one or two sentences with the numbers (plain text).
        heads: the heads it names, strongest first.
        ranking: the ranking the heads come from, as ``causal_checks.ranking`` names it.
        example: the stored example to draw the heads on (default: the analysis's ``example``).
        caveat: True for a warning the reader must see (a weak score, a ranking that does not
            beat random).
    """

    text: str
    heads: tuple[NamedHead, ...] = ()
    ranking: str | None = None
    example: str | None = None
    caveat: bool = False


def family_title(family: str) -> str:
    return FAMILY_TITLES.get(family, family.replace("-", " ").replace("_", " ").capitalize())


def family_order(families) -> list[str]:
    """Built-in families first (in `FAMILY_TITLES` order), then the others as given."""
    families = list(dict.fromkeys(families))
    return [f for f in FAMILY_TITLES if f in families] + [f for f in families if f not in FAMILY_TITLES]


def per_head(frame: pd.DataFrame, score: str) -> pd.DataFrame:
    """``layer, head, <score>``: the mean per real head (aggregate rows with layer or head < 0 and
    rows of other views than ``"head"`` left out)."""
    if "view" in frame.columns:
        frame = frame[frame["view"] == "head"]
    frame = frame[(frame["layer"] >= 0) & (frame["head"] >= 0)]
    return frame.groupby(["layer", "head"], as_index=False)[score].mean()


def rank(frame: pd.DataFrame, score: str, direction: str | None = None, table: str | None = None) -> pd.DataFrame:
    """Heads sorted by how notable their score is: largest first (``"high"``), smallest first
    (``"low"``) or largest |value| first (``"abs"``); the direction defaults to the score's
    glossary entry. Ties break by layer, then head."""
    if direction is None:
        term = lookup(score, table)
        direction = term.direction if term and term.direction else "high"
    heads = per_head(frame, score).dropna(subset=[score])
    key = heads[score].abs() if direction == "abs" else heads[score]
    heads = heads.assign(_key=key).sort_values(["_key", "layer", "head"], ascending=[direction == "low", True, True])
    return heads.drop(columns="_key").reset_index(drop=True)


def top_heads(frame: pd.DataFrame, score: str, k: int = TOP, direction: str | None = None,
              table: str | None = None) -> tuple[NamedHead, ...]:
    """The ``k`` most notable heads by ``score`` (see `rank`)."""
    best = rank(frame, score, direction, table).head(k)
    return tuple(NamedHead(int(r.layer), int(r.head), score, float(getattr(r, score))) for r in best.itertuples())


def fmt(value: float, digits: int = 2) -> str:
    """A number for a sentence: ``0.31``, ``-0.07``, ``2.4e-05``, ``1,530``."""
    value = float(value) + 0.0
    if value != 0 and (abs(value) < 10 ** -digits or abs(value) >= 1e5):
        return f"{value:.{digits}g}" if abs(value) < 1 else f"{value:,.0f}"
    return f"{value:,.{digits}f}" if abs(value) < 1000 else f"{value:,.0f}"


def heads_text(heads, signed: bool = False) -> str:
    """``"L2H4 (0.91), L3H0 (0.85)"``; with ``signed`` the sign is always shown (``+0.91``)."""
    return ", ".join(f"{h.label} ({'+' if signed and h.value > 0 else ''}{fmt(h.value)})" for h in heads)


def ranking_keys(table: str, ranking: str) -> list[str]:
    """Names under which ``causal_checks.ranking`` may list a finding's ranking, most specific
    last: ``[ranking, "<table>.<ranking>"]`` (``"effect:ioi"`` also as ``"circuits.effect:ioi"``)."""
    return [ranking, f"{table}.{ranking}"]


def head_rows(frame: pd.DataFrame) -> pd.DataFrame | None:
    """The per-head rows of a table, or None for tables that are not per head (the report's
    ranked heads and the dashboard's score pages both read these).

    Token-level tables (with ``position``) are not per head; ``view`` tables keep ``view ==
    "head"``; rows with layer or head ``-1`` (layer means, all-head means) are dropped.
    """
    if not {"layer", "head"} <= set(frame.columns) or "position" in frame.columns:
        return None
    if "view" in frame.columns:
        frame = frame[frame["view"] == "head"]
    frame = frame[(frame["layer"] >= 0) & (frame["head"] >= 0)]
    return frame if len(frame) else None


def head_groups(frame: pd.DataFrame) -> list[tuple[dict, pd.DataFrame]]:
    """Split a per-head frame into parts with one row per head: by the text columns that vary
    within a head (e.g. ``task`` and ``method`` of the circuits table). Returns ``[(where,
    part)]`` with ``where`` the column values of the part (``{}`` when unsplit)."""
    if not frame.duplicated(["layer", "head"]).any():
        return [({}, frame)]
    per = frame.groupby(["layer", "head"])
    cols = [c for c in frame.columns if c not in ("layer", "head", "token")
            and pd.api.types.is_string_dtype(frame[c]) and per[c].nunique().max() > 1]
    if not cols:
        return [({}, frame)]
    return [({c: str(v) for c, v in zip(cols, key)}, part) for key, part in frame.groupby(cols, sort=False)]


def n_heads(run) -> int | None:
    """Heads of the run's model (layers × heads), or None when the manifest lacks them."""
    model = (run.manifest.get("model") or {}) if run is not None else {}
    if model.get("n_layers") and model.get("n_heads"):
        return int(model["n_layers"]) * int(model["n_heads"])
    return None


from workbench.findings.builtin import (  # noqa: E402  (built-in findings use the helpers above)
    circuits, head_types, massive, niah, niah_curve, retrieval, saliency, secondary_sinks, sinks, summary_heads,
    token_sinks)

__all__ = ["FAMILY_TITLES", "Finding", "NamedHead", "circuits", "family_order", "family_title", "fmt", "head_rows",
           "head_groups", "head_types", "heads_text", "massive", "niah", "niah_curve", "rank", "ranking_keys", "retrieval",
           "saliency", "secondary_sinks", "sinks", "summary_heads", "token_sinks", "top_heads"]
