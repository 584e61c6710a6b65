"""What a report needs to show without a model: the prompts each analysis used, and every head's
attention pattern on one example prompt of each of those prompt sets.

Two registered analyses:

- ``prompts``: table ``set, prompt_id, prompt, n_tokens, used_by``: the run's prompts (set
  ``"run"``) and every prompt set a registered analysis declares (`Analyzer.prompts`: task
  suites, needle trials, probes), with the analyses that use each set (comma-separated), so
  every report section can say which prompts it used and show them.
- ``head_examples``: table ``example, layer, head, positions, tokens, weights, n_tokens``: for
  each example (the first prompt of each prompt set, plus a short repeated random sequence),
  the exact pattern of every head (``blocks.{L}.attn.hook_pattern``), kept small: prompts of
  at most `MAX_SIDE` tokens whole; longer ones at `MAX_SIDE` positions (the first tokens, the
  last queries, and the keys those queries attend to most in any head). ``weights`` is the
  flattened ``[kept query, kept key]`` block, row-major.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from workbench.analyzers import ANALYZERS, Analyzer, register
from workbench.capture import patterns_for_batch

#: Most positions an example keeps (readable tick labels, and 270 heads of SmolLM2 stay ~4 MB).
#: The tables this module registers to feed other views (examples, prompt lists): no per-head
#: scores, so the report's rankings and the dashboard's grids skip them.
SUPPORT = ("prompts", "head_examples")
MAX_SIDE = 32
FIRST, LAST = 2, 8  # positions always kept in a long prompt: the first tokens, the last queries
#: The repeated random sequence drawn as the induction / previous-token example: `probe_len`
#: tokens twice, the distribution `head_patterns` scores on (its probes are 24 tokens; a shorter
#: one fits `MAX_SIDE`).
REPEATED_LEN = 12


def prompt_sets(model, prompts) -> dict[str, tuple[list[str], list[str]]]:
    """``{set name: (prompts, analyses using it)}``: the run's prompts (``"run"``, used by every
    analysis that declares no set of its own) and every registered analysis's own sets
    (`Analyzer.prompts`), each set once, in registry order."""
    run = [str(p) if isinstance(p, str) else " ".join(map(str, p)) for p in prompts]
    sets: dict[str, tuple[list[str], list[str]]] = {"run": (run, [])}
    for name, analyzer in ANALYZERS.items():
        if name in SUPPORT or analyzer.applies(model) is not None:
            continue
        if analyzer.prompts is None:
            sets["run"][1].append(name)
            continue
        for set_name, rows in analyzer.prompts(model, list(prompts)).items():
            sets.setdefault(set_name, ([str(r) for r in rows], []))[1].append(name)
    return sets


def stored_prompts(model, prompts) -> pd.DataFrame:
    """The registered ``prompts`` analysis: ``set, prompt_id, prompt, n_tokens, used_by``."""
    rows = []
    for name, (texts, users) in prompt_sets(model, prompts).items():
        for i, text in enumerate(texts):
            rows.append({"set": name, "prompt_id": i, "prompt": text, "n_tokens": len(model.tokenizer(text)["input_ids"]),
                         "used_by": ",".join(users)})
    return pd.DataFrame(rows, columns=["set", "prompt_id", "prompt", "n_tokens", "used_by"])


def keep_positions(patterns: dict[int, torch.Tensor], n: int, max_side: int = MAX_SIDE) -> list[int]:
    """Positions to keep of an ``n``-token prompt: all when ``n <= max_side``, else the first
    `FIRST` tokens, the last `LAST` queries, and the keys those queries attend to most in any
    head (``patterns``: ``{layer: [1, head, query, key]}``), sorted."""
    if n <= max_side:
        return list(range(n))
    last = list(range(n - LAST, n))
    keep = set(range(FIRST)) | set(last)
    reach = torch.stack([p[0][:, last, :].mean(1).amax(0) for p in patterns.values()]).amax(0)  # (key,)
    for k in torch.argsort(reach, descending=True).tolist():
        if len(keep) >= max_side:
            break
        keep.add(int(k))
    return sorted(keep)


def _example_ids(model, sets: dict) -> dict[str, torch.Tensor]:
    """``{example name: token ids [1, pos]}``: the first prompt of each set (``"run"`` is named
    ``"prompt"``; a set that no analysis names as its ``example`` is left out when its first
    prompt is already stored) and a repeated random sequence (``"repeated"``)."""
    from workbench.analyzers.patterns import repeated_token_probes

    named = {a.example for a in ANALYZERS.values()}
    out, first = {}, set()
    for name, (texts, _) in sets.items():
        if name.startswith("repeated") or not texts:
            continue
        if name not in named and name != "run" and texts[0] in first:
            continue  # a set nobody draws on, starting with a prompt already stored
        first.add(texts[0])
        ids, _ = model.to_tokens([texts[0]])
        out["prompt" if name == "run" else name] = ids
    try:
        out["repeated"] = repeated_token_probes(model, n_probes=1, probe_len=REPEATED_LEN, seed=0).to(model.device)
    except Exception:  # noqa: BLE001 - a context too short for probes: no repeated example
        pass
    return out


def head_examples(model, prompts, *, max_side: int = MAX_SIDE) -> pd.DataFrame:
    """Every head's attention on one example prompt of each prompt set (see the module docstring).

    Returns:
        DataFrame ``example, layer, head, positions, tokens, weights, n_tokens``; ``positions``
        (ints), ``tokens`` (strings) and ``weights`` (floats, ``len(positions)²``) are lists.
    """
    rows, done = [], {}
    for example, ids in _example_ids(model, prompt_sets(model, prompts)).items():
        n = ids.shape[1]
        key = tuple(ids[0].tolist())  # sets that start with the same prompt share one capture
        if key not in done:
            done[key] = patterns_for_batch(model, ids, torch.ones_like(ids), range(model.n_layers))
        patterns = done[key]
        keep = keep_positions(patterns, n, max_side)
        tokens = model.tokenizer.convert_ids_to_tokens(ids[0, keep].tolist())
        index = torch.tensor(keep)
        for layer, pattern in patterns.items():  # (1, head, query, key)
            block = pattern[0][:, index][:, :, index]  # (head, kept, kept)
            for head in range(block.shape[0]):
                rows.append({"example": example, "layer": layer, "head": head, "positions": list(keep),
                             "tokens": list(tokens), "weights": block[head].flatten().numpy().astype(np.float32),
                             "n_tokens": n})
    return pd.DataFrame(rows, columns=["example", "layer", "head", "positions", "tokens", "weights", "n_tokens"])


def example_of(frame: pd.DataFrame, example: str, layer: int, head: int):
    """``(weights [kept, kept], positions, tokens, n_tokens)`` of one head on one stored example
    (a `head_examples` frame), or None when the frame lacks it."""
    hit = frame[(frame["example"] == example) & (frame["layer"] == layer) & (frame["head"] == head)]
    if hit.empty:
        return None
    row = hit.iloc[0]
    positions = [int(p) for p in row["positions"]]
    weights = np.asarray(row["weights"], dtype=np.float32).reshape(len(positions), len(positions))
    return weights, positions, [str(t) for t in row["tokens"]], int(row["n_tokens"])


register(Analyzer("prompts", stored_prompts, "Prompts used by each analysis", page=""))
register(Analyzer("head_examples", head_examples, "Attention patterns of every head on one example prompt per set",
                  figures=lambda frame: [], page=""))
