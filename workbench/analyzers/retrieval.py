"""Retrieval heads (Wu et al. 2024, "Retrieval Head Mechanistically Explains Long-Context
Factuality") and the needle-in-a-haystack accuracy grid that tests them causally.

A head *copies* at a decoding step when its top-attended key (argmax, top-1) lies in the needle
and holds the token being produced. A trial's score is copies / needle length; a head's
retrieval score is the mean over the trials the model answers correctly, and it is a retrieval
head if that score exceeds 0.1 (Wu et al.). The argmax comes from the streaming capture
(`probes.streaming`), so no N×N tensor is formed and long contexts work.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from workbench.analyzers import Analyzer, register
from workbench.heads import ablate_heads, check_heads
from workbench import findings
from workbench.figures import retrieval_grid
from workbench.findings import summaries
from workbench.errors import WorkbenchError
from workbench.analyzers import keyword_defaults
from workbench.checks import choice, number
from workbench.prompts import answer_tokens

THRESHOLD = 0.1  # Wu et al. 2024: a retrieval head has retrieval score > 0.1
MODES = ("teacher_forced", "generation")


@dataclass(frozen=True)
class Trial:
    """One needle-in-a-haystack trial, tokenized."""

    prompt: list[int]   # prompt token ids, with the tokenizer's special tokens
    answer: list[int]   # answer token ids, no special tokens
    needle: list[int]   # prompt positions where the answer's tokens occur as a span
    row: dict


# -- inputs -------------------------------------------------------------------------------
def read_trials(trials=None, required: tuple[str, ...] = ("prompt", "answer"), model=None) -> list[dict]:
    """Trials from a list of dicts, a JSONL path, or (None) the passkey suite: the demo's bundled
    one for the demo model (or no model), else the one generated for ``model``'s tokenizer
    (`workbench.tasks.analysis_suite`)."""
    from workbench.models import data_dir
    from workbench.prompts import read_jsonl

    if trials is None and model is not None and model.source != "demo":
        from workbench.tasks import analysis_suite, supports

        reason = supports(model, "passkey")
        if reason:
            raise WorkbenchError(f"no default trials for {model.name}: {reason}; pass trials=[...] of yours")
        return analysis_suite("passkey", model)
    if trials is None:
        trials = data_dir() / "suites" / "passkey.jsonl"
    if isinstance(trials, (str, Path)):
        return read_jsonl(trials, required=required)
    rows = list(trials)
    if not rows:
        raise WorkbenchError("trials is empty: expected dicts with 'prompt' and 'answer' or a JSONL path")
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise WorkbenchError(f"trial {i} is {type(row).__name__}: expected a dict with fields {list(required)}")
        missing = [f for f in required if f not in row]
        if missing:
            raise WorkbenchError(f"trial {i} lacks field(s) {missing}; expected {list(required)}")
    return rows


def encode_trials(model, rows: list[dict]) -> list[Trial]:
    """Tokenize trials and locate the needle (every span of the prompt equal to the answer)."""
    if not model.is_causal:
        raise WorkbenchError(f"retrieval heads need a causal LM that generates; {model.name} is an encoder")
    out = []
    for i, row in enumerate(rows):
        prompt, answer = str(row["prompt"]), str(row["answer"])
        if not answer.strip():
            raise WorkbenchError(f"trial {i}: the answer is empty; expected the needle text to copy")
        if answer.strip() not in prompt:
            raise WorkbenchError(
                f"trial {i}: the answer {answer!r} does not appear in the prompt; a retrieval trial "
                "needs the needle verbatim in the haystack"
            )
        p_ids = model.tokenizer(prompt)["input_ids"]
        a_ids = answer_tokens(model, answer, f"trial {i}: the answer")
        n = len(a_ids)
        starts = [s for s in range(len(p_ids) - n + 1) if p_ids[s:s + n] == a_ids]
        if not starts:
            raise WorkbenchError(
                f"trial {i}: the answer {answer!r} is in the prompt text but its tokens {a_ids} are not a "
                "token span of the prompt; give the answer exactly as it is tokenized in the haystack"
            )
        if len(p_ids) + n > model.n_ctx:
            raise WorkbenchError(f"trial {i} is {len(p_ids) + n} tokens with its answer; {model.name} has a "
                                 f"context of {model.n_ctx}")
        needle = sorted({s + j for s in starts for j in range(n)})
        out.append(Trial(p_ids, a_ids, needle, row))
    return out


@dataclass(frozen=True)
class TrialBatch:
    """Trials of one prompt and answer length, batched with no padding."""

    ids: torch.Tensor      # (batch, prompt + answer) on the model's device
    prompt_len: int
    answer_len: int
    rows: list[int]        # indices of the trials


def trial_batches(model, trials: list[Trial], batch_size: int) -> list[TrialBatch]:
    """Trials of equal prompt and answer length batched together, at most ``batch_size`` a batch,
    in order of (prompt length, answer length), each length's trials in their given order."""
    by: dict[tuple[int, int], list[int]] = defaultdict(list)
    for i, t in enumerate(trials):
        by[(len(t.prompt), len(t.answer))].append(i)
    out = []
    for (p, a), members in sorted(by.items()):
        for start in range(0, len(members), batch_size):
            chosen = members[start:start + batch_size]
            ids = torch.tensor([trials[i].prompt + trials[i].answer for i in chosen], device=model.device)
            out.append(TrialBatch(ids, p, a, chosen))
    return out


# -- copies per trial ---------------------------------------------------------------------
def _copies(top: torch.Tensor, seq: torch.Tensor, produced: torch.Tensor, needle: list[int]) -> torch.Tensor:
    """Copy events per head: top ``[layer, head, step]`` key indices, seq the token ids,
    produced ``[step]`` the token produced at each step. Returns ``[layer, head]`` counts."""
    in_needle = torch.isin(top, torch.tensor(needle))
    same = seq[top] == produced  # (layer, head, step)
    return (in_needle & same).sum(-1)


def _teacher_forced(model, trials: list[Trial], batch_size: int, backend: str):
    from probes.streaming import streaming

    results: dict[int, tuple[bool, torch.Tensor]] = {}
    for batch in trial_batches(model, trials, batch_size):
        p, a = batch.prompt_len, batch.answer_len
        with torch.no_grad(), streaming(model, column_mass=False, backend=backend) as stats:
            # logits of the last a + 1 positions only: queries p - 1 .. p + a - 1
            logits = model.hf_model(input_ids=batch.ids, logits_to_keep=a + 1).logits
        ids = batch.ids.cpu()  # (b, p + a)
        top_all = torch.stack([s.argmax for s in stats])  # (layer, b, head, query)
        steps = torch.arange(p - 1, p + a - 1)  # the query that produces answer token k
        for r, i in enumerate(batch.rows):
            answer = ids[r, p:]
            correct = bool((logits[r, :a].argmax(-1).cpu() == answer).all())
            top = top_all[:, r][:, :, steps].long()  # (layer, head, step)
            results[i] = (correct, _copies(top, ids[r], answer, trials[i].needle))
    return [results[i] for i in range(len(trials))]


def _generation(model, trials: list[Trial], backend: str):
    from probes.streaming import streaming

    results = []
    for t in trials:
        cur = torch.tensor([t.prompt], device=model.device)  # (1, p)
        past, produced, tops = None, [], []
        with torch.no_grad(), streaming(model, column_mass=False, backend=backend) as stats:
            for _ in t.answer:
                seen = len(stats)
                out = model.hf_model(input_ids=cur, past_key_values=past, use_cache=True, logits_to_keep=1)
                past = out.past_key_values
                token = out.logits[0, -1].argmax()
                tops.append(torch.stack([s.argmax[0, :, -1] for s in stats[seen:]]))  # (layer, head)
                produced.append(int(token))
                cur = token.view(1, 1)
        produced_t = torch.tensor(produced)
        seq = torch.tensor(t.prompt + produced)
        top = torch.stack(tops, -1).long()  # (layer, head, step)
        results.append((produced == t.answer, _copies(top, seq, produced_t, t.needle)))
    return results


def trial_scores(model, trials=None, *, mode: str = "teacher_forced", batch_size: int = 4,
                 backend: str = "auto") -> pd.DataFrame:
    """Per-trial copies of every head: ``trial, layer, head, copies, needle_length, correct``.

    See `retrieval_scores` for the arguments and the definition of a copy.
    """
    choice("mode", mode, MODES)
    encoded = encode_trials(model, read_trials(trials, model=model))
    results = (_teacher_forced(model, encoded, batch_size, backend) if mode == "teacher_forced"
               else _generation(model, encoded, backend))
    layer, head = np.meshgrid(np.arange(model.n_layers), np.arange(model.n_heads), indexing="ij")
    parts = [pd.DataFrame({"trial": i, "layer": layer.ravel(), "head": head.ravel(),
                           "copies": copies.flatten().numpy(), "needle_length": len(t.answer),
                           "correct": correct})
             for i, (t, (correct, copies)) in enumerate(zip(encoded, results))]
    return pd.concat(parts, ignore_index=True)


def retrieval_scores(model, trials=None, *, mode: str = "teacher_forced", threshold: float = THRESHOLD,
                     batch_size: int = 4, backend: str = "auto") -> pd.DataFrame:
    """Retrieval score of every head (Wu et al. 2024).

    Args:
        model: a causal `ModelHandle`.
        trials: dicts with ``prompt`` and ``answer`` (the answer must appear verbatim in the
            prompt: it is the needle), a JSONL path, or None for the passkey suite: the demo's
            ``data/suites/passkey.jsonl``, or the one generated for any other causal LM
            (`workbench.tasks.analysis_suite`).
        mode: ``"teacher_forced"`` — one streaming forward over prompt + answer, the argmax of
            the query rows that produce the answer tokens (fast, long context); or
            ``"generation"`` — greedy decoding on ``model.hf_model`` with a KV cache, the argmax
            of each step's query. They agree on trials the model answers correctly.
        threshold: retrieval head if score > threshold (Wu et al.: 0.1); also the per-trial score
            above which a head counts as activated.
    Returns:
        DataFrame ``layer, head, retrieval_score, activation_frequency, is_retrieval``:
        retrieval_score = mean over correctly answered trials of copies / needle length;
        activation_frequency = share of those trials whose per-trial score exceeds threshold
        (Wu et al.'s "dynamically activated"). ``frame.attrs`` holds n_trials, n_correct, mode.
    Raises:
        WorkbenchError: an unknown mode, a needle not in its haystack, an encoder, a threshold
            outside [0, 1), or no trial answered correctly (the score is defined on those).
    """
    threshold = number("threshold", threshold, low=0.0, high=1.0, high_open=True)
    per = trial_scores(model, trials, mode=mode, batch_size=batch_size, backend=backend)
    n_trials = int(per["trial"].nunique())
    good = per[per["correct"]]
    if good.empty:
        raise WorkbenchError(
            f"the model answered none of the {n_trials} trials correctly; retrieval scores are "
            "averaged over correctly answered trials (Wu et al. 2024)"
        )
    good = good.assign(score=good["copies"] / good["needle_length"])
    frame = good.groupby(["layer", "head"], as_index=False).agg(
        retrieval_score=("score", "mean"), activation_frequency=("score", lambda s: float((s > threshold).mean())))
    frame["is_retrieval"] = frame["retrieval_score"] > threshold
    frame.attrs.update(n_trials=n_trials, n_correct=int(good["trial"].nunique()), mode=mode)
    return frame


# -- ablation and the NIAH grid -----------------------------------------------------------


def niah_grid(model, trials=None, ablate=None) -> pd.DataFrame:  # noqa: A002 - the public keyword
    """Needle-in-a-haystack accuracy by context length and needle depth (Wu et al.'s causal test).

    Args:
        trials: as for `retrieval_scores`, each also with ``context_length`` and ``depth``.
        ablate: heads to zero while answering (pairs or a `retrieval_scores` frame), or None.
    Returns:
        DataFrame ``context_length, depth, accuracy, n_trials``: greedy exact match of the
        answer (teacher-forced, the shared scorer `workbench.tasks.greedy_match`).
    """
    from workbench.tasks import greedy_match
    from workbench.tasks.scoring import sdpa

    rows = read_trials(trials, required=("prompt", "answer", "context_length", "depth"), model=model)
    encode_trials(model, rows)  # validates needles and lengths
    heads = [] if ablate is None else check_heads(model, ablate)
    with sdpa(model.hf_model), ablate_heads(model, heads):
        hits = greedy_match(model.hf_model, model.tokenizer, rows)
    frame = pd.DataFrame({"context_length": [r["context_length"] for r in rows],
                          "depth": [float(r["depth"]) for r in rows], "hit": hits})
    return (frame.groupby(["context_length", "depth"], as_index=False)
            .agg(accuracy=("hit", "mean"), n_trials=("hit", "size")))


# -- registry -----------------------------------------------------------------------------
DEMO_MAX_CONTEXT = 256  # the registered scores use the passkey trials up to this context (fast)

RANDOM_DRAWS = 5  # random head sets of the same size in the NIAH control (median reported)
HELD_OUT_SEED = 1  # NIAH reads passkey trials of this seed; the retrieval scores read seed 0


def _passkey_rows(max_context: int | None = None) -> list[dict]:
    rows = read_trials(None)
    return [r for r in rows if max_context is None or int(r.get("context_length", 0)) <= max_context]


def passkey_retrieval(model, prompts=None, *, threshold: float = THRESHOLD) -> pd.DataFrame:
    """The registered analysis: teacher-forced retrieval scores on the passkey suite — the
    demo's bundled trials up to `DEMO_MAX_CONTEXT` tokens, or the suite generated for any other
    causal LM (`workbench.tasks.analysis_suite`). ``prompts`` is not used: retrieval needs
    needle trials. When the model answers no trial correctly the scores are undefined (Wu et
    al. average over correct trials): every score is NaN and no head is a retrieval head."""
    from workbench.tasks import ANALYSIS_SUITES, memo

    key = ("passkey_retrieval", threshold, repr(ANALYSIS_SUITES["passkey"]))
    return memo(model, key, lambda: _passkey_retrieval(model, threshold))


def _scoring_rows(model) -> list[dict]:
    """The passkey trials that score the heads: the demo's bundled ones up to `DEMO_MAX_CONTEXT`
    tokens, or the suite generated for any other causal LM."""
    return _passkey_rows(DEMO_MAX_CONTEXT) if model.source == "demo" else read_trials(None, model=model)


def _passkey_retrieval(model, threshold: float) -> pd.DataFrame:
    rows = _scoring_rows(model)
    if model.source != "demo" and not any(r["model_correct"] for r in rows):
        layer, head = np.meshgrid(np.arange(model.n_layers), np.arange(model.n_heads), indexing="ij")
        frame = pd.DataFrame({"layer": layer.ravel(), "head": head.ravel(), "retrieval_score": np.nan,
                              "activation_frequency": np.nan, "is_retrieval": False})
        frame.attrs.update(n_trials=len(rows), n_correct=0, mode="teacher_forced")
        return frame
    return retrieval_scores(model, rows, threshold=threshold)


demo_retrieval = passkey_retrieval  # the name before retrieval ran on every causal LM


def passkey_niah(model, prompts=None) -> pd.DataFrame:
    """The registered ``niah`` table (`workbench.analyzers.niah.registered_niah`): NIAH accuracy
    on held-out passkey trials (seed `HELD_OUT_SEED`), full, with the one labelled retrieval set
    (Wu et al.'s score > 0.1) ablated, and with `RANDOM_DRAWS` random sets of its size."""
    from workbench.analyzers.niah import registered_niah

    return registered_niah(model, prompts)


def _overall(grid: pd.DataFrame) -> float:
    """Accuracy over all trials of a `niah_grid` frame."""
    return float((grid["accuracy"] * grid["n_trials"]).sum() / grid["n_trials"].sum())


def _applies(model) -> str | None:
    from workbench.tasks import supports

    if not model.is_causal:
        return "retrieval heads are defined on generation; this model is an encoder"
    reason = supports(model, "passkey")
    if reason:
        return f"{reason}: call wb.retrieval_scores(model, trials) with needle trials of yours"
    return None


def _passkey_sets(model, prompts) -> dict[str, list[str]]:
    rows = _scoring_rows(model)
    return {"passkey": [r["prompt"] for r in rows]}


def _niah_sets(model, prompts) -> dict[str, list[str]]:
    from workbench.analyzers.niah import held_out_trials

    return {f"passkey, seed {HELD_OUT_SEED} (held out from the scoring trials)":
            [r["prompt"] for r in held_out_trials(model)]}


_WU = "Wu et al. 2024, Retrieval Head Mechanistically Explains Long-Context Factuality"
register(Analyzer("retrieval_heads", passkey_retrieval, "Retrieval heads (needle-in-a-haystack copying)",
                  mode="stream", applies=_applies, figures=lambda frame: [retrieval_grid(frame)], sources=(_WU,),
                  family="retrieval", findings=findings.retrieval, example="passkey", prompts=_passkey_sets,
                  summary=summaries.retrieval,
                  params=keyword_defaults(retrieval_scores, trials="passkey suite", max_context=DEMO_MAX_CONTEXT)))
# the niah and niah_curve tables register in workbench.analyzers.niah (one labelled set)
