"""DuoAttention (Xiao et al. 2024, "DuoAttention: Efficient Long-Context LLM Inference with
Retrieval and Streaming Heads"): which KV heads need the whole context, learned by distillation.

Every KV head gets a gate α ∈ [0, 1] that mixes its query heads' full causal attention with
streaming attention (the first ``sink`` keys plus the ``recent`` keys up to the query):

    out = α · attn_full + (1 − α) · attn_streaming.

The gates, and nothing else, are trained on passkey (needle-in-a-haystack) trials with

    L = L_distill + λ · mean|α|,   L_distill = mean over answer positions of mean_d (h_full − h_mixed)²

where h are the final hidden states (after the last norm) at the positions that predict the
answer tokens, h_full from the unmodified model. AdamW (lr 0.02, no weight decay) with
DuoAttention's schedule (linear warm-up over the first fifth of the steps from 0.1, linear decay
over the last fifth to 0.1), α clamped to [0, 1] before every step, initial α = 1, λ = 0.05, as in
``mit-han-lab/duo-attention`` (``duo_attn/train.py``). A KV head is a retrieval head if α ≥ 0.5
(their deployment threshold); the others can keep only ``sink + recent`` tokens in the KV cache.

Sink and recent sizes: DuoAttention uses 64 and 256 with training contexts of 1,000–32,000
tokens, a window of 320 tokens, 32% of its shortest context. For shorter suites both are scaled
by ``min(1, N_min / 1000)`` (N_min: the shortest training trial in tokens), so the window keeps
the same share of the shortest context: 8 and 33 at 128 tokens (the demo), 16 and 66 at 256.

The training runs the model's own HF forward with a custom attention function
(``transformers.AttentionInterface``); the model's weights get no gradient and are not changed.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterator

import numpy as np
import pandas as pd
import torch

from workbench import checks
from workbench.errors import WorkbenchError

if TYPE_CHECKING:
    from workbench.analyzers.retrieval import TrialBatch

IMPLEMENTATION = "workbench_duo"
#: DuoAttention's defaults (mit-han-lab/duo-attention, duo_attn/utils.py and the released patterns).
SINK, RECENT = 64, 256
REFERENCE_CONTEXT = 1000  # their shortest training context: the sizes above are for contexts >= this
LR, REG, THRESHOLD, INITIAL = 0.02, 0.05, 0.5, 1.0
_ACTIVE: list["_Gates"] = []


@dataclass
class _Gates:
    """The gates in use: ``values [n_layers, n_kv_heads]`` (may require grad), the window sizes."""

    values: torch.Tensor
    sink: int
    recent: int
    masks: dict = field(default_factory=dict)  # n -> (causal [n, n], streaming [n, n]) bool

    def mask_pair(self, n: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        if n not in self.masks:
            q = torch.arange(n, device=device)[:, None]
            k = torch.arange(n, device=device)[None, :]
            causal = k <= q  # (query, key)
            stream = causal & ((k < self.sink) | (k > q - self.recent))
            self.masks[n] = (causal, stream)
        return self.masks[n]


def streaming_mask(n: int, sink: int, recent: int) -> torch.Tensor:
    """``[n, n]`` bool: key k is visible to query q under streaming attention (k ≤ q, and k < sink
    or q − k < recent), DuoAttention's ``generate_streaming_mask``."""
    return _Gates(torch.ones(1, 1), sink, recent).mask_pair(n, "cpu")[1]


def _duo_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):  # noqa: ARG001
    """The registered attention function: ``α · full + (1 − α) · streaming`` per KV head.

    query ``[B, Hq, N, d]``, key and value ``[B, Hkv, N, d]`` (no padding: equal-length batches).
    Both attentions are PyTorch's fused SDPA (causal, and causal restricted to the streaming
    mask); a gate of exactly 1 (or 0) everywhere, without gradients, skips the other.
    """
    gates = _ACTIVE[-1]
    n = query.shape[2]
    if key.shape[2] != n:
        raise WorkbenchError("DuoAttention gates run on whole sequences (no KV cache): query and key lengths differ")
    group = query.shape[1] // key.shape[1]
    alpha = gates.values[module.layer_idx].to(query.dtype)  # (Hkv,)
    fixed = not alpha.requires_grad
    sdpa = torch.nn.functional.scaled_dot_product_attention
    if fixed and bool((alpha == 0).all()):
        out = sdpa(query, key, value, attn_mask=gates.mask_pair(n, query.device)[1], scale=scaling, enable_gqa=group > 1)
    else:
        out = sdpa(query, key, value, is_causal=True, scale=scaling, enable_gqa=group > 1)  # (B, Hq, N, d)
        if not (fixed and bool((alpha == 1).all())):
            stream = sdpa(query, key, value, attn_mask=gates.mask_pair(n, query.device)[1], scale=scaling,
                          enable_gqa=group > 1)  # (B, Hq, N, d)
            a = alpha.repeat_interleave(group)[None, :, None, None]  # (1, Hq, 1, 1): a KV head's query heads
            out = a * out + (1 - a) * stream
    return out.transpose(1, 2).contiguous(), None  # (B, N, Hq, d)


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(IMPLEMENTATION, _duo_attention)
    AttentionMaskInterface.register(IMPLEMENTATION, sdpa_mask)


@contextmanager
def duo_gates(model, gates: torch.Tensor, *, sink: int, recent: int) -> Iterator[None]:
    """Run ``model.hf_model``'s forwards inside the block with DuoAttention gates
    ``[n_layers, n_kv_heads]`` (1 = full attention, 0 = streaming). Whole sequences only (no KV
    cache, no padding). The attention implementation is restored on exit."""
    gates = torch.as_tensor(gates, dtype=torch.float32)
    if tuple(gates.shape) != (model.n_layers, model.n_kv_heads):
        raise WorkbenchError(f"gates must have shape [n_layers, n_kv_heads] = {[model.n_layers, model.n_kv_heads]}; "
                             f"got {list(gates.shape)}")
    _register()
    hf = model.hf_model
    previous = hf.config._attn_implementation
    _ACTIVE.append(_Gates(gates, sink, recent))
    try:
        hf.set_attn_implementation(IMPLEMENTATION)
        yield
    finally:
        _ACTIVE.pop()
        hf.set_attn_implementation(previous)


# -- trials -------------------------------------------------------------------------------
def _answer_hidden(model, group: TrialBatch) -> torch.Tensor:
    """Final hidden states at the positions that predict the answer tokens: ``[batch, answer, d_model]``."""
    hidden = model.hf_model.base_model(input_ids=group.ids, use_cache=False).last_hidden_state
    return hidden[:, group.prompt_len - 1:group.prompt_len + group.answer_len - 1]


def _answered(model, group: TrialBatch) -> torch.Tensor:
    """Greedy exact match of each trial's answer, teacher forced: ``[batch]`` bool."""
    p, a = group.prompt_len, group.answer_len
    logits = model.hf_model(input_ids=group.ids, use_cache=False).logits[:, p - 1:p + a - 1]  # (batch, a, vocab)
    return (logits.argmax(-1) == group.ids[:, p:]).all(-1)


def window_sizes(n_min: int, sink: int | None = None, recent: int | None = None) -> tuple[int, int, float]:
    """``(sink, recent, scale)``: DuoAttention's 64 / 256 scaled by ``min(1, n_min / 1000)``
    unless given (see the module docstring)."""
    scale = min(1.0, n_min / REFERENCE_CONTEXT)
    sink = max(1, round(SINK * scale)) if sink is None else checks.positive_int("sink", sink)
    recent = max(4, round(RECENT * scale)) if recent is None else checks.positive_int("recent", recent)
    return sink, recent, scale


def _lr_factor(step: int, steps: int) -> float:
    """DuoAttention's schedule: min(1, max((s+1)/(S/5), 0.1), max((S−s)/(S/5), 0.1))."""
    fifth = max(1, steps // 5)
    return min(1.0, max((step + 1) / fifth, 0.1), max((steps - step) / fifth, 0.1))


def _passkey_trials(model, trials):
    """Passkey trials: given, or the model's default suite (the demo's bundled one; for any other
    causal LM the passkey suite generated for its tokenizer)."""
    from workbench.analyzers.retrieval import read_trials

    return read_trials(trials, model=model)


# -- training -----------------------------------------------------------------------------
def training_trials(lengths: list[int], min_context: int | None, max_context: int | None,
                    holdout: bool) -> list[int]:
    """Indices of the trials the gates train on: those within ``[min_context, max_context]``
    tokens, and of those every other one (in the given order) when ``holdout`` keeps the rest
    for evaluation (`workbench.analyzers.duo_deploy.duo_effect`)."""
    eligible = [i for i, n in enumerate(lengths) if (min_context is None or n >= min_context)
                and (max_context is None or n <= max_context)]
    if not eligible:
        raise WorkbenchError(f"no passkey trial has between {min_context} and {max_context} tokens (they have "
                             f"{min(lengths)}..{max(lengths)}); change min_context / max_context or give other trials")
    return eligible[::2] if holdout and len(eligible) > 1 else eligible


def train_gates(model, trials=None, *, steps: int = 100, min_context: int | None = None,
                max_context: int | None = 1024, holdout: bool = True, sink: int | None = None,
                recent: int | None = None, lr: float = LR, reg: float = REG, batch_size: int = 2,
                seed: int = 0) -> tuple[torch.Tensor, dict]:
    """Train DuoAttention's gates; returns ``(gates [n_layers, n_kv_heads], facts)``.

    See `duo_attention` for the arguments. ``facts``: sink, recent, scale, n_train, steps,
    distill_loss and reg_loss of the last step, the training trials' indices.
    """
    from workbench.analyzers.retrieval import encode_trials, trial_batches

    if not model.is_causal:
        raise WorkbenchError(f"DuoAttention gates are defined for causal LMs with a KV cache; {model.name} is an encoder")
    steps = checks.positive_int("steps", steps)
    batch_size = checks.positive_int("batch_size", batch_size)
    lr, reg = checks.positive("lr", lr), checks.number("reg", reg, low=0.0)
    rows = _passkey_trials(model, trials)
    encoded = encode_trials(model, rows)
    lengths = [len(t.prompt) for t in encoded]  # context = prompt tokens (as context_length counts them)
    min_context = None if min_context is None else checks.positive_int("min_context", min_context)
    max_context = None if max_context is None else checks.positive_int("max_context", max_context)
    chosen = training_trials(lengths, min_context, max_context, holdout)
    train = [encoded[i] for i in chosen]
    sink, recent, scale = window_sizes(min(len(t.prompt) for t in train), sink, recent)
    groups = trial_batches(model, train, batch_size)
    with torch.no_grad(), duo_gates(model, torch.ones(model.n_layers, model.n_kv_heads), sink=sink, recent=recent):
        targets = [_answer_hidden(model, g).float() for g in groups]  # full attention: the teacher
    gates = torch.full((model.n_layers, model.n_kv_heads), INITIAL, requires_grad=True)
    optimizer = torch.optim.AdamW([gates], lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _lr_factor(s, steps))
    order = torch.randperm(len(groups), generator=torch.Generator().manual_seed(seed)).tolist()
    distill = reg_loss = torch.zeros(())
    for step in range(steps):
        with torch.no_grad():
            gates.clamp_(0.0, 1.0)
        g = order[step % len(order)]
        with duo_gates(model, gates, sink=sink, recent=recent):
            mixed = _answer_hidden(model, groups[g]).float()  # (batch, answer, d_model)
        distill = (targets[g] - mixed).pow(2).mean(-1).mean()
        reg_loss = gates.abs().mean()
        loss = distill + reg * reg_loss
        (grad,) = torch.autograd.grad(loss, gates)  # the model's weights get no gradient
        gates.grad = grad
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
    with torch.no_grad():
        gates.clamp_(0.0, 1.0)
    facts = {"sink": sink, "recent": recent, "scale": scale, "n_train": len(train), "steps": steps,
             "lr": lr, "reg": reg, "distill_loss": float(distill.detach()), "reg_loss": float(reg_loss.detach()),
             "train_trials": chosen, "min_context": min_context, "max_context": max_context,
             "train_tokens": f"{min(lengths[i] for i in chosen)}-{max(lengths[i] for i in chosen)}"}
    return gates.detach().clone(), facts


def wu_kv_heads(model, retrieval: pd.DataFrame) -> pd.DataFrame:
    """Wu et al.'s retrieval heads mapped to KV heads: a KV head is one if any of its query heads
    is (`retrieval_scores` ``is_retrieval``). Columns ``layer, kv_head, wu_retrieval, wu_heads,
    wu_max_score``."""
    group = model.n_heads // model.n_kv_heads
    frame = retrieval.assign(kv_head=retrieval["head"].astype(int) // group)
    rows = []
    for (layer, kv), part in frame.groupby(["layer", "kv_head"]):
        flagged = part[part["is_retrieval"].astype(bool)]
        rows.append({"layer": int(layer), "kv_head": int(kv), "wu_retrieval": bool(len(flagged)),
                     "wu_heads": " ".join(f"L{int(r.layer)}H{int(r.head)}" for r in flagged.itertuples()),
                     "wu_max_score": float(part["retrieval_score"].max())})
    return pd.DataFrame(rows)


def jaccard(a: set, b: set) -> float:
    """|a ∩ b| / |a ∪ b| (1.0 for two empty sets)."""
    return 1.0 if not a and not b else len(a & b) / len(a | b)


def duo_attention(model, trials=None, *, steps: int = 100, min_context: int | None = None,
                  max_context: int | None = 1024, holdout: bool = True, sink: int | None = None,
                  recent: int | None = None, lr: float = LR, reg: float = REG, threshold: float = THRESHOLD,
                  batch_size: int = 2, retrieval: pd.DataFrame | None = None, seed: int = 0) -> pd.DataFrame:
    """DuoAttention's retrieval heads: one trained gate per KV head (Xiao et al. 2024).

    Args:
        model: a causal `ModelHandle`.
        trials: passkey trials (dicts with ``prompt`` and ``answer``, the answer verbatim in the
            prompt, as for `retrieval_scores`), a JSONL path, or None for the model's passkey suite.
        steps: optimizer steps (one batch of equal-length trials each); with the context, bounds
            the CPU time (each step is one forward and one backward over its batch).
        min_context, max_context: train on trials whose prompt has this many tokens (None: no
            bound). DuoAttention trains at long context; short trials make streaming cheap to
            tell apart from full attention only for the heads that look far.
        holdout: train on every other eligible trial and keep the rest for `duo_deploy.duo_effect`
            (``attrs["train_trials"]``).
        sink, recent: streaming window; default DuoAttention's 64 / 256 scaled to the shortest
            training trial (module docstring).
        lr, reg: AdamW learning rate (0.02) and λ of the mean|α| term (0.05), DuoAttention's.
        threshold: retrieval head if α ≥ threshold (0.5, DuoAttention's deployment threshold).
        batch_size: trials per step. seed: the order of the batches.
        retrieval: a `retrieval_scores` frame (Wu et al.): adds ``wu_retrieval``, ``wu_heads`` and
            ``wu_max_score`` per KV head and the Jaccard overlap of the two sets in attrs.
    Returns:
        DataFrame ``layer, kv_head, gate, is_retrieval`` (plus the Wu et al. columns), one row per
        KV head. ``frame.attrs``: sink, recent, scale, steps, n_train, train_trials, train_tokens,
        distill_loss, reg_loss, threshold, n_retrieval, and with ``retrieval`` the jaccard.
    Raises:
        WorkbenchError: an encoder, bad steps/sizes, no trial within ``max_context``.
    """
    threshold = checks.fraction("threshold", threshold)
    gates, facts = train_gates(model, trials, steps=steps, min_context=min_context, max_context=max_context,
                               holdout=holdout, sink=sink, recent=recent, lr=lr, reg=reg,
                               batch_size=batch_size, seed=seed)
    layer, kv = np.meshgrid(np.arange(model.n_layers), np.arange(model.n_kv_heads), indexing="ij")
    frame = pd.DataFrame({"layer": layer.ravel(), "kv_head": kv.ravel(), "gate": gates.flatten().double().numpy()})
    frame["is_retrieval"] = frame["gate"] >= threshold
    attrs = dict(facts, threshold=threshold, n_retrieval=int(frame["is_retrieval"].sum()),
                 source="Xiao et al. 2024, DuoAttention")
    if retrieval is not None:
        frame = frame.merge(wu_kv_heads(model, retrieval), on=["layer", "kv_head"], how="left")
        duo = set(zip(frame.layer[frame.is_retrieval], frame.kv_head[frame.is_retrieval]))
        wu = set(zip(frame.layer[frame.wu_retrieval], frame.kv_head[frame.wu_retrieval]))
        attrs.update(jaccard=jaccard(duo, wu), n_wu_kv=len(wu), wu_threshold=0.1)
    frame.attrs.update(attrs)
    return frame
