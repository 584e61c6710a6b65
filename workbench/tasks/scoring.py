"""The one greedy scorer: does a causal LM reproduce a row's answer by greedy decoding?

Teacher-forced exact match: one forward over ``prompt + answer``; the row is correct when the
argmax at every answer position is the next answer token. That is exactly greedy decoding of
``len(answer tokens)`` tokens (greedy reproduces the answer iff each step's argmax is the next
answer token), at the cost of one forward. Rows are sorted by length and run in batches under a
token budget, right-padded: in a causal model padding after a row's last token changes none of
its logits, so batching changes no answer. Only the logits of the answer positions are computed
(``logits_to_keep``), which matters for long prompts and large vocabularies.

Used by `workbench.task_suite` (``model_correct``), `workbench.niah_grid` and the demo's own
evaluation (`workbench.demo.evaluate`).
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager

import torch

from workbench.errors import WorkbenchError

MAX_TOKENS = 8192  # tokens (batch x padded width) per scoring forward


def encode(tokenizer, rows: Iterable[dict]) -> list[tuple[list[int], list[int]]]:
    """``(prompt ids with the tokenizer's special tokens, answer ids without)`` per row.

    Raises:
        WorkbenchError: a row without ``prompt``/``answer``, or an answer that has no tokens.
    """
    pairs = []
    for i, row in enumerate(rows):
        if not isinstance(row, dict) or "prompt" not in row or "answer" not in row:
            raise WorkbenchError(f"row {i} must be a dict with 'prompt' and 'answer'; got {row!r:.80}")
        prompt = tokenizer(str(row["prompt"]))["input_ids"]
        answer = tokenizer(str(row["answer"]), add_special_tokens=False)["input_ids"]
        if not prompt or not answer:
            raise WorkbenchError(f"row {i}: the prompt and the answer must both have tokens; got "
                                 f"prompt {row['prompt']!r:.60} and answer {row['answer']!r}")
        pairs.append((prompt, answer))
    return pairs


def _batches(lengths: Sequence[int], max_tokens: int) -> list[list[int]]:
    """Row indices sorted by length, cut into batches of at most ``max_tokens`` padded tokens."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    out: list[list[int]] = []
    for i in order:
        if out and (len(out[-1]) + 1) * lengths[i] <= max_tokens:  # sorted: row i is the widest
            out[-1].append(i)
        else:
            out.append([i])
    return out


@torch.no_grad()
def greedy_match_ids(hf_model, pairs: Sequence[tuple[list[int], list[int]]], *,
                     max_tokens: int = MAX_TOKENS) -> list[bool]:
    """Greedy exact match of token-id pairs.

    Args:
        hf_model: a causal Hugging Face model (``model(input_ids, attention_mask).logits``).
        pairs: ``(prompt ids, answer ids)``, both non-empty.
        max_tokens: batch x padded width per forward (one longer row still runs alone).
    Returns:
        One bool per pair, in the order given.
    """
    keeps = "logits_to_keep" in inspect.signature(hf_model.forward).parameters
    device = next(hf_model.parameters()).device
    lengths = [len(p) + len(a) for p, a in pairs]
    result: list[bool] = [False] * len(pairs)
    for batch in _batches(lengths, max_tokens):
        width = max(lengths[i] for i in batch)
        ids = torch.zeros(len(batch), width, dtype=torch.long)  # (b, width), right-padded
        mask = torch.zeros(len(batch), width, dtype=torch.long)
        for r, i in enumerate(batch):
            ids[r, :lengths[i]] = torch.tensor(pairs[i][0] + pairs[i][1])
            mask[r, :lengths[i]] = 1
        first = min(len(pairs[i][0]) for i in batch) - 1  # earliest position that predicts an answer token
        extra = {"logits_to_keep": width - first} if keeps else {}
        logits = hf_model(input_ids=ids.to(device), attention_mask=mask.to(device), **extra).logits
        offset = width - logits.shape[1]  # logits[:, j] is position offset + j
        for r, i in enumerate(batch):
            prompt, answer = pairs[i]
            start = len(prompt) - 1 - offset
            predicted = logits[r, start:start + len(answer)].argmax(-1).cpu()  # (A,)
            result[i] = bool((predicted == torch.tensor(answer)).all())
    return result


def greedy_match(hf_model, tokenizer, rows: Iterable[dict], *, max_tokens: int = MAX_TOKENS) -> list[bool]:
    """Greedy exact match per row of ``{"prompt", "answer"}`` dicts (see the module docstring).

    Args:
        hf_model: a causal Hugging Face model; ``tokenizer`` its tokenizer. The prompt is
            tokenized with the tokenizer's special tokens, the answer without.
    Returns:
        One bool per row.
    """
    return greedy_match_ids(hf_model, encode(tokenizer, rows), max_tokens=max_tokens)


@contextmanager
def sdpa(hf_model) -> Iterator[None]:
    """Run ``hf_model`` with SDPA attention inside the block (no N x N weights at long context,
    fused kernels; the same outputs as eager to float precision); its attention implementation is
    restored on exit. Models without SDPA support keep theirs. The one switch every causal
    analysis uses (`workbench.masked.sdpa` takes a handle)."""
    previous = hf_model.config._attn_implementation
    if previous == "sdpa":
        yield
        return
    try:
        hf_model.set_attn_implementation("sdpa")
    except (ValueError, ImportError):  # no SDPA for this architecture: run as it is
        yield
        return
    try:
        yield
    finally:
        hf_model.set_attn_implementation(previous)
