"""What DuoAttention's gates buy (Xiao et al. 2024): the KV cache kept when the non-retrieval KV
heads stream (``sink + recent`` tokens each), and NIAH accuracy on held-out passkey trials with
the gates deployed, beside every head full and every head streaming; and the registered tables.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from workbench.analyzers import Analyzer, register
from workbench.analyzers.duo import (INITIAL, LR, REG, THRESHOLD, _answered, _passkey_trials, duo_attention,
                                     duo_gates)
from workbench.errors import WorkbenchError
from workbench.findings import checks as checks_findings


# -- what the gates buy ---------------------------------------------------------------------
def kv_cache_bytes(model, gates: pd.DataFrame, context_length: int, *, sink: int, recent: int,
                   dtype_bytes: int = 2) -> dict:
    """KV-cache size at ``context_length`` tokens with every KV head full, and with the
    non-retrieval heads streaming (``sink + recent`` tokens each). fp16/bf16 (2 bytes) by default."""
    per_token = 2 * model.d_head * dtype_bytes  # key + value of one KV head
    n_kv = model.n_layers * model.n_kv_heads
    n_full = int(gates["is_retrieval"].sum())
    full = n_kv * context_length * per_token
    duo = (n_full * context_length + (n_kv - n_full) * min(context_length, sink + recent)) * per_token
    return {"kv_full_bytes": full, "kv_duo_bytes": duo, "kv_saved_fraction": 1 - duo / full}


def duo_effect(model, gates: pd.DataFrame, trials=None, *, exclude=None, batch_size: int = 4) -> pd.DataFrame:
    """NIAH accuracy and KV-cache memory with the gates deployed (retrieval KV heads full, the
    others streaming), against all heads full and all heads streaming.

    Args:
        gates: a `duo_attention` frame (its attrs give sink and recent).
        trials: passkey trials (default: the model's passkey suite, as for the gates); those
            whose index is in ``exclude`` are left out (default: the gates' training trials,
            ``gates.attrs["train_trials"]``, so the accuracy is on held-out trials).
    Returns:
        DataFrame ``context_length, n_trials, accuracy_full, accuracy_duo, accuracy_streaming,
        kv_full_bytes, kv_duo_bytes, kv_saved_fraction`` (one row per context length of the
        trials, in tokens; accuracy = greedy exact match, teacher forced).
    """
    from workbench.analyzers.retrieval import encode_trials, trial_batches

    sink, recent = int(gates.attrs["sink"]), int(gates.attrs["recent"])
    rows = _passkey_trials(model, trials)
    exclude = set(gates.attrs.get("train_trials", ()) if exclude is None else exclude)
    keep = [i for i in range(len(rows)) if i not in exclude]
    if not keep:
        raise WorkbenchError("no passkey trial is left to evaluate (all are excluded)")
    encoded = encode_trials(model, [rows[i] for i in keep])
    binary = torch.zeros(model.n_layers, model.n_kv_heads)
    for r in gates.itertuples():
        binary[int(r.layer), int(r.kv_head)] = float(bool(r.is_retrieval))
    settings = {"full": torch.ones_like(binary), "duo": binary, "streaming": torch.zeros_like(binary)}
    hits = {name: np.zeros(len(encoded), dtype=bool) for name in settings}
    groups = trial_batches(model, encoded, batch_size)
    with torch.no_grad():
        for name, values in settings.items():
            with duo_gates(model, values, sink=sink, recent=recent):
                for g in groups:
                    hits[name][g.rows] = _answered(model, g).cpu().numpy()
    lengths = np.array([len(t.prompt) for t in encoded])
    labels = np.array([int(rows[i].get("context_length", lengths[j])) for j, i in enumerate(keep)])
    out = []
    for ctx in sorted(set(labels)):
        sel = labels == ctx
        n_tokens = int(lengths[sel].max())
        out.append({"context_length": int(ctx), "n_trials": int(sel.sum()),
                    **{f"accuracy_{name}": float(h[sel].mean()) for name, h in hits.items()},
                    **kv_cache_bytes(model, gates, n_tokens, sink=sink, recent=recent)})
    frame = pd.DataFrame(out)
    frame.attrs.update(sink=sink, recent=recent, n_retrieval_kv=int(binary.sum()), n_kv=int(binary.numel()))
    return frame


# -- registry -----------------------------------------------------------------------------
#: The registered run on the demo: its 512-token passkey trials (every other one; the rest and
#: the other lengths are held out), 60 steps (~0.3 s each on 2 idle cores).
DEMO_SETTINGS = {"min_context": 512, "max_context": 512, "steps": 60}


def _settings(model) -> dict | None:
    return DEMO_SETTINGS if model.source == "demo" else None


def registered_gates(model, prompts=None) -> pd.DataFrame:
    """The registered analysis: `duo_attention` on the model's passkey suite with Wu et al.'s
    retrieval scores beside it (``prompts`` is not used: the gates train on needle trials)."""
    from workbench.analyzers.rankings import memo
    from workbench.analyzers.retrieval import passkey_retrieval

    settings = _settings(model)
    # the run's one retrieval set (the retrieval_heads table), read only when the gates are trained
    return memo(model, ("duo_attention",),
                lambda: duo_attention(model, retrieval=passkey_retrieval(model), **settings))


def registered_effect(model, prompts=None) -> pd.DataFrame:
    """The registered analysis: `duo_effect` of the registered gates on the held-out passkey trials."""
    return duo_effect(model, registered_gates(model))


def _applies(model) -> str | None:
    if not model.is_causal:
        return "DuoAttention gates KV heads of a causal LM's cache; this model is an encoder"
    if _settings(model) is None:
        return "needs passkey trials and a CPU budget for this model (set for the demo)"
    return None


def _gate_figures(frame):
    from workbench.figures.checks import duo_gates_figure

    return [duo_gates_figure(frame)]


def _effect_figures(frame):
    from workbench.figures.checks import duo_effect_figure

    return [duo_effect_figure(frame)]

_XIAO = "Xiao et al. 2024, DuoAttention: Efficient Long-Context LLM Inference with Retrieval and Streaming Heads"
register(Analyzer("duo_attention", registered_gates, "DuoAttention retrieval heads (trained gates per KV head)",
                  mode="exact", applies=_applies, figures=_gate_figures, family="retrieval",
                  findings=checks_findings.duo_gates, summary=checks_findings.duo_summary,
                  glossary=checks_findings.DUO_TERMS,
                  params={"lr": LR, "reg": REG, "threshold": THRESHOLD, "initial": INITIAL, **DEMO_SETTINGS},
                  sources=(_XIAO, "Wu et al. 2024 (retrieval score > 0.1), mapped to KV heads")))
register(Analyzer("duo_effect", registered_effect, "DuoAttention: NIAH accuracy and KV cache with the other heads streaming",
                  mode="exact", applies=_applies, figures=_effect_figures, family="retrieval",
                  findings=checks_findings.duo_effect, glossary=checks_findings.EFFECT_TERMS, sources=(_XIAO,)))
