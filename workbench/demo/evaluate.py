"""Measure the demo model's bars with plain transformers: accuracy, sink share, retrieval heads.

Greedy exact match is computed teacher-forced: one forward over ``prompt + answer`` and the
argmax at every answer position must equal the answer token. That is equivalent to greedy
decoding of ``len(answer tokens)`` tokens (greedy reproduces the answer iff each step's argmax
is the next answer token), and costs one forward. :func:`greedy_generate` is the literal
``model.generate`` version for spot checks.

Heads are ablated with the workbench's one head-editing mechanism (`workbench.heads`), applied
to the plain HF model: a forward pre-hook on ``model.layers[L].self_attn.o_proj`` zeroes the
head's ``d_head`` slice of the concatenated head outputs (``(B, T, n_heads * d_head)``). Every
other measurement here is plain transformers code, independent of the analyses it checks.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch

from workbench.errors import WorkbenchError

Head = tuple[int, int]  # (layer, head)


def load_demo(model_dir: str | Path = "data/demo", attn: str = "sdpa"):
    """Load the committed demo model and tokenizer with plain transformers (no project code).

    Args:
        attn: ``attn_implementation`` (``"eager"`` is needed for attention weights).
    Returns:
        (model in eval mode, tokenizer).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(model_dir)
    if not (path / "config.json").exists():
        raise WorkbenchError(f"no config.json in {str(path)!r}; expected a HF model directory "
                             "such as data/demo (regenerate with `workbench demo train`)")
    model = AutoModelForCausalLM.from_pretrained(path, attn_implementation=attn, use_safetensors=True)  # never unpickle
    return model.eval(), AutoTokenizer.from_pretrained(path)


def accuracy(model, tok, rows: Iterable[dict]) -> list[bool]:
    """Greedy exact match per row (teacher-forced; see module docstring), by the project's one
    greedy scorer `workbench.tasks.scoring.greedy_match` (batched by length).

    Args:
        rows: dicts with ``prompt`` and ``answer``.
    Returns:
        one bool per row.
    """
    from workbench.tasks.scoring import greedy_match

    return greedy_match(model, tok, list(rows))


@torch.no_grad()
def greedy_generate(model, tok, prompt: str, n_tokens: int) -> list[int]:
    """Greedy-decode ``n_tokens`` after ``prompt`` with ``model.generate``; returns the new ids."""
    ids = tok(prompt, return_tensors="pt").input_ids  # (1, P)
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n_tokens,
                         min_new_tokens=n_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
    return out[0, ids.shape[1]:].tolist()


def suite_accuracy(model, tok, rows: list[dict], by: str | None = None) -> dict:
    """Accuracy of a suite, overall and (if ``by``, e.g. ``"context_length"``) per group.

    Returns:
        ``{"all": acc, "n": n}`` plus ``{"by_<by>": {value: acc}}`` when grouped.
    """
    hits = accuracy(model, tok, rows)
    res: dict = {"all": float(np.mean(hits)), "n": len(hits)}
    if by is not None:
        groups: dict = {}
        for row, hit in zip(rows, hits):
            groups.setdefault(row[by], []).append(hit)
        res[f"by_{by}"] = {str(k): float(np.mean(v)) for k, v in sorted(groups.items())}
    return res


@torch.no_grad()
def sink_scores(model, tok, prompts: list[str], prefix: int = 64) -> np.ndarray:
    """α₀ per head: mean attention to position 0 over queries 1..prefix-1 of each prompt.

    Needs a model loaded with ``attn_implementation="eager"``. Query 0 is left out (it can only
    attend to itself). Sink definition follows Xiao et al. 2023 (StreamingLLM).

    Returns:
        ``(n_layers, n_heads)`` array averaged over prompts.
    """
    total = None
    for prompt in prompts:
        ids = tok(prompt, return_tensors="pt").input_ids[:, :prefix]  # (1, T)
        if ids.shape[1] < 2:
            raise WorkbenchError(f"prompt {prompt[:40]!r} is shorter than 2 tokens")
        att = model(input_ids=ids, output_attentions=True).attentions  # L x (1, H, T, T)
        a0 = torch.stack([a[0, :, 1:, 0].mean(-1) for a in att]).float().numpy()  # (L, H)
        total = a0 if total is None else total + a0
    return total / len(prompts)


def sink_share_past_layer0(alpha0: np.ndarray, threshold: float = 0.3) -> float:
    """Fraction of heads past layer 0 whose α₀ exceeds ``threshold``: the demo's training bar
    (layer 0 sees raw embeddings and is not asked to sink). Not `wb.sink_share`, Gu et al.'s
    Sink^ε over every head of a `sink_scores` frame."""
    return float((alpha0[1:] > threshold).mean())


@contextlib.contextmanager
def ablate_heads(model, heads: Iterable[Head]) -> Iterator[None]:
    """Zero the outputs of ``heads`` (list of ``(layer, head)``) of a plain HF model inside the
    ``with`` block: `workbench.heads.ablate_heads` at the output projection's input (its
    ``d_head`` slice of the concatenated head outputs). Hooks are removed on exit, even when the
    forward raises."""
    from workbench.heads import ablate_heads as ablate

    with ablate(model, heads, site="hf"):
        yield


def _needle_digit_positions(ids: list[int], tok, n: int) -> list[int]:
    """Token positions of the passkey digits in the needle (first "pass key is" + n digits)."""
    words = tok.convert_ids_to_tokens(ids)
    for i in range(len(words) - 3):
        if words[i:i + 3] == ["pass", "key", "is"]:
            return list(range(i + 3, i + 3 + n))
    raise WorkbenchError("prompt has no needle 'pass key is'; expected a passkey suite row")


@torch.no_grad()
def retrieval_scores(model, tok, rows: list[dict]) -> np.ndarray:
    """Retrieval score per head (Wu et al. 2024, "Retrieval Head"): the fraction of answer
    tokens for which the head's top attention, at the position that predicts the token, is on
    the needle position holding that same token. Needs ``attn_implementation="eager"``.

    Returns:
        ``(n_layers, n_heads)`` array in [0, 1].
    """
    from workbench.tasks.scoring import encode

    hits, count = None, 0
    for prompt, answer in encode(tok, rows):  # (prompt ids with specials, answer ids without)
        ids = prompt + answer
        needle = _needle_digit_positions(ids, tok, len(answer))
        att = model(input_ids=torch.tensor([ids]), output_attentions=True).attentions
        queries = [len(prompt) - 1 + i for i in range(len(answer))]
        top = torch.stack([a[0, :, queries].argmax(-1) for a in att])  # (L, H, A)
        h = (top == torch.tensor(needle)).float().sum(-1).numpy()  # (L, H)
        hits = h if hits is None else hits + h
        count += len(answer)
    return hits / count


def retrieval_ablation(model, tok, rows: list[dict], scores: np.ndarray, *,
                       threshold: float = 0.5, max_heads: int = 4, min_drop: float = 50.0,
                       n_draws: int = 5, seed: int = 0) -> dict:
    """Ablate the smallest set of top retrieval heads that breaks retrieval, then as many
    random other heads (``n_draws`` times).

    Candidates are the heads with score >= ``threshold``, best first, at most ``max_heads``
    (at least the best one). The top-k for k = 1, 2, ... are ablated until accuracy drops by
    ``min_drop`` points (else all candidates are kept).

    Args:
        rows: passkey rows to score accuracy on.
        scores: ``(n_layers, n_heads)`` from :func:`retrieval_scores`.
    Returns:
        dict with ``heads`` (list of [layer, head]), ``baseline``, ``ablated`` accuracy,
        ``ablated_by_k`` (accuracy with the top-k candidates ablated), ``random`` (accuracy
        per draw), ``random_median``, ``random_heads`` (per draw), ``drop_points`` and
        ``random_median_drop_points`` (accuracy points, 0-100).
    """
    n_layers, n_heads = scores.shape
    order = np.argsort(-scores, axis=None, kind="stable")
    cands = [divmod(int(i), n_heads) for i in order[:max_heads] if scores.flat[i] >= threshold]
    cands = cands or [divmod(int(order[0]), n_heads)]
    base = float(np.mean(accuracy(model, tok, rows)))
    by_k = []
    for k in range(1, len(cands) + 1):
        with ablate_heads(model, cands[:k]):
            by_k.append(float(np.mean(accuracy(model, tok, rows))))
        if 100 * (base - by_k[-1]) >= min_drop:
            break
    top, ablated = cands[:len(by_k)], by_k[-1]
    rng = np.random.default_rng(seed)
    others = [(l, h) for l in range(n_layers) for h in range(n_heads) if (l, h) not in top]
    rand_acc, rand_heads = [], []
    for _ in range(n_draws):
        pick = [others[i] for i in rng.choice(len(others), len(top), replace=False)]
        with ablate_heads(model, pick):
            rand_acc.append(float(np.mean(accuracy(model, tok, rows))))
        rand_heads.append([list(p) for p in pick])
    med = float(np.median(rand_acc))
    return {"heads": [list(p) for p in top], "baseline": base, "ablated": ablated,
            "ablated_by_k": by_k, "random": rand_acc, "random_median": med,
            "random_heads": rand_heads, "drop_points": round(100 * (base - ablated), 1),
            "random_median_drop_points": round(100 * (base - med), 1)}


def evaluate_demo(model_dir: str | Path = "data/demo", suites_dir: str | Path = "data/suites",
                  seed: int = 0) -> dict:
    """All "must show" measurements of the demo model, from the files on disk.

    Returns:
        dict with ``accuracy`` (per suite; passkey also by context length), ``sink``
        (``alpha0`` grid, ``share``), ``retrieval_scores`` grid and ``ablation``
        (see :func:`retrieval_ablation`).
    """
    from workbench.demo.corpus import load_suite

    model, tok = load_demo(model_dir, attn="eager")
    suites = {n: load_suite(Path(suites_dir) / f"{n}.jsonl")
              for n in ("passkey", "ioi", "colored_objects")}
    acc = {"passkey": suite_accuracy(model, tok, suites["passkey"], by="context_length"),
           "ioi": suite_accuracy(model, tok, suites["ioi"]),
           "colored_objects": suite_accuracy(model, tok, suites["colored_objects"])}
    alpha0 = sink_scores(model, tok, [r["prompt"] for r in suites["passkey"]
                                      if r["context_length"] >= 128][:10])
    short = [r for r in suites["passkey"] if r["context_length"] <= 256]
    scores = retrieval_scores(model, tok, short)
    abl = retrieval_ablation(model, tok, suites["passkey"], scores, seed=seed)
    return {"accuracy": acc,
            "sink": {"alpha0": alpha0.round(3).tolist(), "share": sink_share_past_layer0(alpha0),
                     "threshold": 0.3, "prefix": 64},
            "retrieval_scores": scores.round(3).tolist(), "ablation": abl}
