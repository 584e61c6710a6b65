"""Comparing node circuits: rank agreement of two effect rankings, and how much two circuits share
next to what chance gives (`workbench.overlap`: hypergeometric expectation and p-value)."""

from __future__ import annotations

import pandas as pd

from workbench import overlap
from workbench.errors import WorkbenchError


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


def head_set(circuit, name: str) -> set[tuple[int, int]]:
    """The ``(layer, head)`` members of a circuit frame (its ``in_circuit`` rows) or of pairs."""
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


def circuit_overlap(circuit_a, circuit_b, *, n_total: int | None = None) -> dict:
    """How much two circuits share (Merullo et al., "Circuit Component Reuse"): all four ratios,
    since a single "78% overlap" does not say which, and what chance alone would give.

    Args:
        circuit_a, circuit_b: `circuit` frames (their ``in_circuit`` rows) or ``(layer, head)`` pairs.
        n_total: how many heads the model has (the universe random sets are drawn from). Default:
            the rows of ``circuit_a`` when it is a frame of every head; with pairs and no
            ``n_total`` the chance columns are left out.
    Returns:
        ``{"jaccard": |A∩B|/|A∪B|, "overlap_coefficient": |A∩B|/min(|A|,|B|),
        "share_a_in_b": |A∩B|/|A|, "share_b_in_a": |A∩B|/|B|, "n_a", "n_b", "n_shared"}`` and,
        with a universe, ``n_total, expected_shared`` (hypergeometric E|A∩B| = |A||B|/N),
        ``p_value`` (P(|A∩B| ≥ observed) for a random B of its size) and each measure's chance
        value ``chance_jaccard, chance_overlap_coefficient, chance_share_a_in_b, chance_share_b_in_a``.
    """
    a, b = head_set(circuit_a, "a"), head_set(circuit_b, "b")
    if n_total is None and isinstance(circuit_a, pd.DataFrame):
        n_total = len(set(zip(circuit_a["layer"], circuit_a["head"])))
    return overlap.overlap(a, b, n_total=n_total)
