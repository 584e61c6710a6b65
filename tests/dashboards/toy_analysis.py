"""A toy analysis in one module: registering it is all it takes to appear in `analyze`, the
report (a section, a findings block, the glossary) and a dashboard page of its own."""

from __future__ import annotations

import pandas as pd

import workbench as wb
from workbench.analyzers import Analyzer, register
from workbench.findings import Finding, top_heads
from workbench.glossary import Term


def last_key_mass(model, prompts) -> pd.DataFrame:
    """Mean attention of the last query on the last key (its own position), per head."""
    rows = []
    for prompt in prompts:
        for layer, pattern in wb.capture_patterns(model, [prompt]).items():  # (1, head, query, key)
            for head in range(pattern.shape[1]):
                rows.append({"layer": layer, "head": head, "self_mass": float(pattern[0, head, -1, -1])})
    return pd.DataFrame(rows).groupby(["layer", "head"], as_index=False)["self_mass"].mean()


def _findings(frame, run):
    best = top_heads(frame, "self_mass")
    return [Finding(f"The last query attends to itself most in {best[0].label}.", best, ranking="self_mass")]


TOY = register(Analyzer(
    "toy_self_mass", last_key_mass, "Toy: attention of the last query on itself", family="toy checks", page="toy",
    findings=_findings, summary=lambda frame: {"toy: mean self mass": float(frame["self_mass"].mean())},
    glossary={"self_mass": Term("self_mass", "A[T−1, T−1], averaged over prompts", "[0, 1]",
                                "the last query looks more at itself", "Toy 2026")},
    sources=("Toy 2026",)))
