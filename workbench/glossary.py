"""Every score column of a run, defined once: the formula, the range, what a higher value means,
and the source. The report's glossary, the dashboard's tooltips and `describe` all read it.

A column means the same thing in every table unless an entry is scoped to a table
(``"head_summary.entropy"`` and ``"head_patterns.entropy"`` are two quantities: the first pools
all query rows of all prompts, the second averages the per-prompt means). A column that repeats
another under a second name says so in ``same_as`` (``sink_mass`` of head_patterns is the
``sink_score`` of sink_scores), and views show it once.

An analysis registers the entries of its own new columns (``Analyzer(glossary=...)``); `lookup`
finds those first, then the built-in entries below.

    >>> lookup("sink_score").direction
    'high'
    >>> lookup("entropy", "head_summary").label
    'entropy (pooled over query rows)'
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping

#: How a score ranks heads: ``"high"`` (largest first), ``"low"`` (smallest first), ``"abs"``
#: (largest |value| first, the sign is a direction of effect and is shown), or None (not a
#: ranking: counts, ids, coordinates, flags).
DIRECTIONS = ("high", "low", "abs", None)


@dataclass(frozen=True)
class Term:
    """The definition of one column.

    Attributes:
        name: the column name as stored.
        label: how views name it (defaults to ``name``); two scoped entries of one column name
            get different labels.
        formula: the definition in one line (plain text, Unicode maths).
        range: the values it takes (``"[0, 1]"``, ``"nats, [0, log T]"``).
        higher: what a higher value means ("more of the head's attention ...").
        source: the paper or code the definition comes from.
        direction: how it ranks heads (see `DIRECTIONS`).
        same_as: the column this one repeats under another name, if any.
        note: anything a reader must know to read it right (which prompts, a caveat).
    """

    name: str
    formula: str
    range: str = ""
    higher: str = ""
    source: str = ""
    direction: str | None = "high"
    label: str = ""
    same_as: str | None = None
    note: str = ""

    def __post_init__(self):
        if self.direction not in DIRECTIONS:
            raise ValueError(f"Term {self.name!r}: direction {self.direction!r} is not one of {DIRECTIONS}")
        if not self.label:
            object.__setattr__(self, "label", self.name)

    def tooltip(self) -> str:
        """One plain-text paragraph: formula, range, what higher means, source."""
        parts = [f"{self.label} = {self.formula}"]
        if self.range:
            parts.append(f"range {self.range}")
        if self.higher:
            parts.append(f"higher: {self.higher}")
        if self.same_as:
            parts.append(f"same numbers as {self.same_as}")
        if self.note:
            parts.append(self.note)
        if self.source:
            parts.append(f"source: {self.source}")
        return ". ".join(parts) + "."


_GU = "Gu et al. 2024, When Attention Sink Emerges in Language Models"
_VOITA = "Voita et al. 2019, Analyzing Multi-Head Self-Attention"
_TL = "TransformerLens head_detector ('mul' score)"
_WU = "Wu et al. 2024, Retrieval Head Mechanistically Explains Long-Context Factuality"
_PROBES = ("on seeded sequences of random tokens repeated twice (TransformerLens' induction probe), "
           "not on the run's prompts")

#: Built-in entries, keyed by column or by ``table.column`` for a table-scoped one.
TERMS: dict[str, Term] = {}


def _add(*terms: Term, table: str | None = None) -> None:
    for t in terms:
        TERMS[f"{table}.{t.name}" if table else t.name] = t


_add(
    Term("sink_score", "α₀ = mean over queries t of A[t, 0], averaged over prompts (attention on the first token)",
         "[0, 1]", "more of the head's attention parks on the first token", _GU + " (α, Sink^ε)",
         label="sink score α₀"),
    Term("is_sink", "sink_score > ε, ε = 0.3", "true/false", "", _GU + " (ε = 0.3)", direction=None,
         label="sink head"),
    Term("alpha", "α_k = (1/(T−k)) Σ_{t≥k} A[t, k]: attention key k receives from the queries that can see it",
         "[0, 1]", "the token draws more attention (a sink when > 0.1 past the first token)",
         _GU + "; Yu et al. 2024 (ACT, α > 0.1)", label="α (attention received)"),
    Term("mean_cos", "mean over the sink's layers of |cos(h_t, h_0)| of hook_resid_post", "[0.9, 1]",
         "the token's hidden state lines up more closely with the first token's",
         "Wong et al. 2025, Secondary Attention Sinks (|cos| > 0.9)"),
    Term("n_layers", "number of consecutive layers in which |cos(h_t, h_0)| > 0.9", "1 .. layers",
         "the secondary sink lasts longer", "Wong et al. 2025, Secondary Attention Sinks", direction="high",
         label="sink lifetime (layers)"),
    Term("value", "the hidden-state entry h[t, i] of hook_resid_post", "any real", "",
         "Sun et al. 2024, Massive Activations in Large Language Models", direction="abs"),
    Term("ratio", "|h[t, i]| / median |h| over the layer's hidden state for the prompt", "> 1000 when massive",
         "the entry stands out more from the rest", "Sun et al. 2024 (|h| > 100 and > 1000× the median)"),
    Term("importance", "I_h = E_x |∂L/∂ξ_h| at ξ = 1 (head mask ξ on hook_z), min–max over all heads "
         "(a global ranking)", "[0, 1]", "the loss is more sensitive to scaling the head's output",
         "Michel et al. 2019, Are Sixteen Heads Really Better than One?; Li et al. 2023 (min–max)",
         note="per-layer L2 normalisation (Michel et al.) is the option normalize_layers=True"),
    Term("raw", "the importance before normalisation: E_x |∂L/∂ξ_h| for the gradient method (Δloss in nats for "
         "ablation, −IG attribution for integrated gradients)", "≥ 0 for the gradient method",
         "the loss depends more on the head, comparable across layers", "Michel et al. 2019",
         direction="abs", label="importance (raw, global)"),
    Term("loss", "mean task loss (cross-entropy of the answer tokens, or next-token loss) with the pruned heads "
         "zeroed", "nats, ≥ 0", "the model does worse", "Michel et al. 2019 (pruning curve)", direction=None),
    Term("accuracy", "share of targets predicted exactly (top-1; NIAH: the whole answer by greedy decoding)",
         "[0, 1]", "the model gets more answers right", _WU + " (NIAH)", direction=None),
    Term("fraction_pruned", "pruned heads / all heads", "[0, 1]", "", "Michel et al. 2019", direction=None),
    Term("prev_token", "Σ(A ⊙ D) / ΣA with D[t, t−1] = 1", "[0, 1]",
         "the head attends more to the token just before the query", _TL, note="measured " + _PROBES,
         label="previous-token score"),
    Term("duplicate", "Σ(A ⊙ D) / ΣA with D[t, k] = 1 where token k = token t, k < t", "[0, 1]",
         "the head attends more to earlier copies of the query's token", _TL, note="measured " + _PROBES,
         label="duplicate-token score"),
    Term("induction", "Σ(A ⊙ D) / ΣA with D[t, k] = 1 where token k−1 = token t (the token after an earlier copy)",
         "[0, 1]; an ideal induction head scores about 0.5 on the probe (its first half has nothing to copy)",
         "the head attends more to what followed the query's token last time", _TL,
         note="measured " + _PROBES, label="induction score"),
    Term("local_mass", "mean over queries of the attention on the query and the 3 keys before it (window 4)",
         "[0, 1]", "the head looks more at its immediate neighbourhood", _VOITA + " (positional heads)",
         label="local mass"),
    Term("mean_distance", "mean over queries t of Σ_k A[t, k]·(t − k) (encoders: |t − k|)", "tokens, ≥ 0",
         "the head looks further back", _VOITA, label="mean attended distance"),
    Term("sink_mass", "mean over queries of the attention on key 0", "[0, 1]",
         "more of the head's attention parks on the first token", _GU, same_as="sink_score",
         label="sink mass"),
    Term("umap_x", "first UMAP coordinate of the standardised descriptors", "arbitrary", "",
         "McInnes et al. 2018, UMAP", direction=None),
    Term("umap_y", "second UMAP coordinate of the standardised descriptors", "arbitrary", "",
         "McInnes et al. 2018, UMAP", direction=None),
    Term("cluster", "k-means cluster of the standardised descriptors (k by silhouette)", "0 .. k−1", "",
         "scikit-learn KMeans", direction=None),
    Term("pattern", "the cluster's name: the descriptor on which its mean stands out most (z > 0.5) and reaches "
         "its floor (induction 0.1, previous-token 0.15, duplicate 0.1, sink 0.3, local 0.5), else mixed",
         "a name", "", "Li et al. 2023 (pattern types of heads)", direction=None, label="pattern type"),
    Term("retrieval_score", "mean over correctly answered needle trials of (steps whose top-1 key lies in the "
         "needle and holds the produced token) / needle length", "[0, 1]",
         "the head copies more of the needle while the answer is produced", _WU, label="retrieval score"),
    Term("activation_frequency", "share of correct trials whose per-trial retrieval score exceeds 0.1", "[0, 1]",
         "the head copies in more of the trials", _WU + " (dynamically activated heads)"),
    Term("is_retrieval", "retrieval_score > 0.1", "true/false", "", _WU + " (0.1)", direction=None,
         label="retrieval head"),
    Term("effect", "(LD_patched − LD_corrupted) / (LD_clean − LD_corrupted): how much patching the head's clean "
         "hook_z into the corrupted run restores the logit difference LD", "any real; 1 = restores it alone",
         "the head carries more of the behaviour (negative: it works against it)",
         "Wang et al. 2022 (IOI); Syed et al. 2023 (attribution patching)", direction="abs",
         label="circuit effect"),
    Term("in_circuit", "among the smallest top-|effect| set whose faithfulness (LD with only it kept, every "
         "other head resample-ablated from the corrupted twin prompt, over the full model's LD) reaches 0.8 on "
         "held-out prompts; no head when no set of at most half the heads does (or: the top-n, |effect| ≥ a "
         "threshold, when asked)", "true/false", "",
         "Wang et al. 2022; Hanna et al. 2024", direction=None, label="in circuit"),
    Term("pearson", "Pearson r between the head's attention (last query row) and the token attributions",
         "[−1, 1]", "attention follows the attributions more closely", "Jain & Wallace 2019"),
    Term("spearman", "Spearman ρ between attention and attributions over the prompt's tokens", "[−1, 1]",
         "attention ranks tokens more like the attributions do", "Jain & Wallace 2019"),
    Term("kendall", "Kendall τ between attention and attributions", "[−1, 1]",
         "attention orders tokens more like the attributions do", "Jain & Wallace 2019"),
    Term("topk_overlap", "|top-5 attended ∩ top-5 attributed| / 5", "[0, 1]",
         "the tokens the head attends to most are more often the ones that matter most",
         "Jain & Wallace 2019", label="top-5 overlap"),
    Term("n_queries", "query rows averaged", "count", "", "", direction=None),
    Term("n_prompts", "prompts averaged", "count", "", "", direction=None),
    Term("n_trials", "trials averaged", "count", "", "", direction=None),
)
_add(
    Term("entropy", "Shannon entropy −Σ_k A[t, k] log A[t, k] of each query row, averaged over all real query "
         "rows of all prompts (long prompts weigh more)", "nats, [0, log T]",
         "the head spreads its attention wider (lower: it focuses)", _VOITA, direction="low",
         label="entropy (pooled over query rows)"),
    Term("max_prob", "max_k A[t, k] of each query row, averaged over all real query rows of all prompts",
         "[0, 1]", "the head is more confident: more of its attention on one key", _VOITA + " (confidence)",
         label="max attention (pooled over query rows)"),
    table="head_summary",
)
_add(
    Term("entropy", "Shannon entropy of each query row, averaged over a prompt's rows, then over prompts "
         "(each prompt weighs the same)", "nats, [0, log T]",
         "the head spreads its attention wider (lower: it focuses)", _VOITA, direction="low",
         label="entropy (mean over prompts)"),
    Term("max_prob", "max_k A[t, k] of each query row, averaged over a prompt's rows, then over prompts",
         "[0, 1]", "the head is more confident", _VOITA + " (confidence)", label="max attention (mean over prompts)"),
    table="head_patterns",
)


def lookup(column: str, table: str | None = None, extra: Mapping[str, Term] | None = None) -> Term | None:
    """The definition of ``column`` (as stored in ``table``), or None when nothing defines it.

    Args:
        column: the column name.
        table: the table it is stored in: a table-scoped entry (``"head_summary.entropy"``)
            wins over the plain one.
        extra: entries registered by an analysis (`workbench.analyzers.Analyzer.glossary`),
            searched first; by default those of ``table``'s registered analyzer.
    """
    if extra is None and table is not None:
        from workbench.analyzers import ANALYZERS

        analyzer = ANALYZERS.get(table)
        extra = analyzer.glossary if analyzer is not None else None
    for source in (extra or {}, TERMS):
        for key in ((f"{table}.{column}",) if table else ()) + (column,):
            if key in source:
                return source[key]
    return None


def entries(tables: Iterable[tuple[str, Iterable[str]]]) -> list[tuple[str, str, Term]]:
    """``(table, column, term)`` for every defined column of the given ``(table, columns)``, each
    definition once (the first table that uses it) in order."""
    seen, out = set(), []
    for table, columns in tables:
        for column in columns:
            term = lookup(column, table)
            if term is None or id(term) in seen:
                continue
            seen.add(id(term))
            out.append((table, column, term))
    return out


def describe(column: str, table: str | None = None) -> str:
    """The definition of a column as one paragraph (for docstrings, tooltips and notebooks)."""
    term = lookup(column, table)
    return term.tooltip() if term else f"{column}: no definition in the glossary"


def _doc() -> str:
    lines = [__doc__ or "", "Built-in entries:", ""]
    for key, term in TERMS.items():
        lines.append(f"- ``{key}``: {term.tooltip()}")
    return "\n".join(lines)


__doc__ = _doc()
