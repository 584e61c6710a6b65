"""Where an IOI circuit's heads look, to compare them with Wang et al. 2022's head classes.

Wang et al. ("Interpretability in the Wild", IOI in GPT-2 small) name the classes by attention
from fixed positions: name movers attend from the final token (END) to the indirect object (IO)
and copy it; S-inhibition heads attend from END to the subject's second mention (S2); induction
and duplicate-token heads attend from S2 to the token after S1 (S1+1) and to S1; previous-token
heads attend to the token before. This module measures exactly those attention shares on the
task's clean prompts (exact patterns, `workbench.capture_patterns`), so that a circuit's heads
can be read against the classes; which class a head plays is a judgement made from these
numbers and from the edges it writes through (`edge_circuit`), not a label computed here.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from workbench.errors import WorkbenchError

COLUMNS = ("end_to_io", "end_to_s1", "end_to_s2", "s2_to_s1", "s2_to_s1_next", "prev_token")


def _positions(tok, row: dict) -> dict | None:
    """END, IO, S1, S2 token positions of one IOI row (names as single tokens), or None."""
    ids = tok(row["prompt"])["input_ids"]
    io = tok(" " + str(row["io"]).strip(), add_special_tokens=False)["input_ids"]
    s = tok(" " + str(row["s"]).strip(), add_special_tokens=False)["input_ids"]
    if len(io) != 1 or len(s) != 1:
        return None
    io_at = [i for i, t in enumerate(ids) if t == io[0]]
    s_at = [i for i, t in enumerate(ids) if t == s[0]]
    if len(io_at) != 1 or len(s_at) != 2:
        return None
    return {"end": len(ids) - 1, "io": io_at[0], "s1": s_at[0], "s2": s_at[1], "n": len(ids)}


def ioi_attention(model, task, heads=None) -> pd.DataFrame:
    """Mean attention of each head at the positions that define Wang et al.'s IOI head classes.

    Args:
        model: a causal `ModelHandle`.
        task: IOI rows with ``prompt`` and the names ``io`` and ``s`` (as `workbench.task_suite`
            gives them); rows whose names are not single tokens appearing once (IO) and twice
            (S) are skipped.
        heads: ``(layer, head)`` pairs to report (default: every head).
    Returns:
        DataFrame ``layer, head, end_to_io, end_to_s1, end_to_s2, s2_to_s1, s2_to_s1_next,
        prev_token`` (means over prompts; ``prev_token``: attention to the previous position,
        averaged over every query after the first); attrs ``n`` (prompts used).
    """
    from workbench import capture_patterns
    from workbench.analyzers.circuits import read_task
    from workbench.heads import check_heads

    rows = [r for r in read_task(task) if "io" in r and "s" in r]
    found = [(r, _positions(model.tokenizer, r)) for r in rows]
    found = [(r, p) for r, p in found if p is not None]
    if not found:
        raise WorkbenchError("ioi_attention needs IOI rows with single-token names 'io' (once in the prompt) "
                             "and 's' (twice), as wb.task_suite('ioi', model) gives them")
    chosen = [(l, h) for l in range(model.n_layers) for h in range(model.n_heads)] if heads is None \
        else check_heads(model, heads)
    layers = sorted({l for l, _ in chosen})
    sums = {c: np.zeros((model.n_layers, model.n_heads)) for c in COLUMNS}
    for row, pos in found:
        pattern = capture_patterns(model, [row["prompt"]], layers=layers)  # {layer: (1, head, q, k)}
        for layer in layers:
            a = pattern[layer][0].numpy()  # (head, query, key)
            e, s2 = pos["end"], pos["s2"]
            sums["end_to_io"][layer] += a[:, e, pos["io"]]
            sums["end_to_s1"][layer] += a[:, e, pos["s1"]]
            sums["end_to_s2"][layer] += a[:, e, s2]
            sums["s2_to_s1"][layer] += a[:, s2, pos["s1"]]
            sums["s2_to_s1_next"][layer] += a[:, s2, pos["s1"] + 1]
            q = np.arange(1, pos["n"])
            sums["prev_token"][layer] += a[:, q, q - 1].mean(-1)
    frame = pd.DataFrame([{"layer": l, "head": h, **{c: sums[c][l, h] / len(found) for c in COLUMNS}}
                          for l, h in chosen])
    frame.attrs["n"] = len(found)
    return frame
