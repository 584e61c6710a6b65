"""Head importance (gradient, ablation, integrated gradients) and the pruning curve.

All three methods act on the head mask ξ of `workbench.heads.head_mask` (``hook_z``) and
measure a loss L:

- with ``answers=`` (one per prompt): the cross-entropy of the answer tokens appended to the
  prompt (teacher forced), i.e. the task loss Michel et al. 2019 prune against. The registered
  analyses use it whenever the prompts come from the bundled suites (the demo's defaults): the
  demo model is trained on the answers of its templated tasks, not on their template tokens;
- causal LMs otherwise: the next-token cross-entropy over every real position of each prompt;
- encoders: masked-LM cross-entropy on a seeded 15% of the non-special tokens replaced by the
  mask token (Devlin et al. 2019). It is only meaningful with a trained MLM head; the bundled
  MiniLM ships without one (its MLM head is random), so the registered analyses skip it.

Ablation and integrated gradients run many masks over the same prompts; each forward carries
several masks at once (the batch tiled, one mask per copy), up to ``MAX_ROWS`` sequences.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd
import torch

from workbench.analyzers import Analyzer, keyword_defaults, register
from workbench import findings
from workbench.figures import head_grid, importance_ranking, pruning_curve_figure
from workbench.findings import summaries
from workbench.capture import run_bridge
from workbench.checks import choice, fraction, integer, positive_int
from workbench.errors import WorkbenchError
from workbench.heads import ABLATION_MODES, head_mask, head_means
from workbench.prompts import answer_tokens

METHODS = ("gradient", "ablation", "integrated_gradients")
#: Devlin et al. 2019: 15% of the tokens are masked for the MLM objective.
MLM_FRACTION = 0.15
IGNORE = -100
#: Most sequences in one forward when several head masks share it (ablation, IG).
MAX_ROWS = 64


@dataclass(frozen=True)
class _Batch:
    ids: torch.Tensor     # (batch, pos) model input (MLM: with mask tokens)
    mask: torch.Tensor    # (batch, pos) 1 for real tokens
    labels: torch.Tensor  # (batch, pos) target id of each position's logits, IGNORE where none


def _with_answers(model, prompts, answers) -> tuple[list[list[int]], list[int]]:
    """Token ids of each prompt followed by its answer's tokens (no special tokens in between),
    and the number of answer tokens of each."""
    if isinstance(prompts, str):
        prompts = [prompts]
    prompts, answers = list(prompts), list(answers)
    if len(answers) != len(prompts):
        raise WorkbenchError(f"answers must give one answer per prompt: {len(prompts)} prompt(s), {len(answers)} answer(s)")
    if not model.is_causal:
        raise WorkbenchError(f"answers= needs a causal model (the answer is appended and predicted); {model.name} is an encoder")
    model.to_tokens(prompts)  # the usual checks (empty prompts, context)
    rows, sizes = [], []
    for i, (prompt, answer) in enumerate(zip(prompts, answers)):
        if not isinstance(answer, str) or not answer.strip():
            raise WorkbenchError(f"answer {i} must be non-empty text; got {answer!r}")
        head = model.tokenizer(prompt)["input_ids"] if isinstance(prompt, str) else [int(t) for t in prompt]
        tail = answer_tokens(model, answer, f"answer {i}")
        rows.append(list(head) + list(tail))
        sizes.append(len(tail))
    return rows, sizes


def _batches(model, prompts, batch_size: int, seed: int, answers=None) -> list[_Batch]:
    """Tokenize, sort by length (less padding), cut into batches, and attach loss targets."""
    batch_size, seed = positive_int("batch_size", batch_size), integer("seed", seed, low=0)
    answer_len = None
    if answers is not None:
        prompts, sizes = _with_answers(model, prompts, answers)
        answer_len = torch.tensor(sizes)
    ids, mask = model.to_tokens(prompts)
    lengths = mask.sum(-1).cpu()
    order = torch.argsort(lengths, descending=True, stable=True).tolist()
    generator = torch.Generator().manual_seed(seed)
    specials = torch.tensor(sorted(set(model.tokenizer.all_special_ids)), dtype=torch.long)
    out = []
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        chunk, chunk_mask = ids[rows], mask[rows]
        width = int(chunk_mask.sum(-1).max())
        chunk, chunk_mask = chunk[:, :width], chunk_mask[:, :width]
        labels = torch.full_like(chunk, IGNORE)
        if model.is_causal:
            labels[:, :-1] = torch.where(chunk_mask[:, 1:].bool(), chunk[:, 1:], IGNORE)  # next token
            if answer_len is not None:  # keep only the logits that predict the answer
                pos = torch.arange(width, device=chunk.device)[None, :]  # (1, pos)
                end = lengths[rows].to(chunk.device)[:, None]  # (batch, 1)
                first = end - 1 - answer_len[rows].to(chunk.device)[:, None]
                labels = torch.where((pos >= first) & (pos < end - 1), labels, IGNORE)
            inputs = chunk
        else:
            candidate = chunk_mask.bool().cpu() & ~torch.isin(chunk.cpu(), specials)  # (batch, pos)
            draw = torch.rand(chunk.shape, generator=generator) < MLM_FRACTION
            for b in range(chunk.shape[0]):  # at least one target per prompt
                if candidate[b].any() and not (draw[b] & candidate[b]).any():
                    draw[b, candidate[b].nonzero()[0, 0]] = True
            chosen = (draw & candidate).to(chunk.device)
            if model.tokenizer.mask_token_id is None:
                raise WorkbenchError(f"{model.name} is an encoder without a mask token: no masked-LM loss to measure")
            labels = torch.where(chosen, chunk, IGNORE)
            inputs = torch.where(chosen, model.tokenizer.mask_token_id, chunk)
        out.append(_Batch(inputs, chunk_mask, labels))
    return out


def _tile(batch: _Batch, k: int) -> _Batch:
    """The batch repeated k times along the batch axis (copy j holds rows j·B .. j·B + B − 1)."""
    return _Batch(batch.ids.repeat(k, 1), batch.mask.repeat(k, 1), batch.labels.repeat(k, 1))


def _masked_totals(model, batches, masks: torch.Tensor, baseline=None):
    """Σ over prompts of the per-prompt loss under each mask ``[k, layer, head]`` -> ``[k]``, and
    the correct predictions and targets under each ``[k]`` (several masks per forward: the batch
    is tiled, one mask per copy)."""
    loss, right, total = [], [], []
    for batch in batches:
        n = batch.ids.shape[0]
        per_forward = max(1, MAX_ROWS // n)
        parts = []
        for start in range(0, masks.shape[0], per_forward):
            chunk = masks[start:start + per_forward]  # (k', layer, head)
            with head_mask(model, chunk.repeat_interleave(n, 0), baseline=baseline):
                out = _losses(model, _tile(batch, chunk.shape[0]))  # 3 x (k' * n,)
            parts.append([x.view(chunk.shape[0], n).sum(1) for x in out])
        for store, i in ((loss, 0), (right, 1), (total, 2)):
            store.append(torch.cat([p[i] for p in parts]))
    return torch.stack(loss).sum(0), torch.stack(right).sum(0), torch.stack(total).sum(0)


def _losses(model, batch: _Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One forward: per-prompt mean loss, correct top-1 predictions and targets, each ``[batch]``."""
    logits = run_bridge(model, batch.ids, batch.mask)  # (batch, pos, vocab)
    logits = logits if logits.dtype == torch.float64 else logits.float()
    token_loss = torch.nn.functional.cross_entropy(
        logits.transpose(1, 2), batch.labels, ignore_index=IGNORE, reduction="none")  # (batch, pos)
    valid = batch.labels != IGNORE
    counts = valid.sum(-1)
    correct = ((logits.argmax(-1) == batch.labels) & valid).sum(-1)
    return (token_loss * valid).sum(-1) / counts.clamp(min=1), correct, counts


def _check_method(method) -> str:
    return choice("importance method", method, METHODS)


def _frame(model, raw: torch.Tensor, normalize_layers: bool, min_max: bool) -> pd.DataFrame:
    score = raw.double().clone()  # (layer, head)
    if normalize_layers:
        norms = score.norm(dim=-1, keepdim=True)
        score = torch.where(norms > 0, score / norms, score)
    if min_max:
        low, high = score.min(), score.max()
        score = (score - low) / (high - low) if high > low else torch.zeros_like(score)
    layer, head = torch.meshgrid(torch.arange(model.n_layers), torch.arange(model.n_heads), indexing="ij")
    return pd.DataFrame({"layer": layer.flatten().numpy(), "head": head.flatten().numpy(),
                         "importance": score.flatten().numpy(), "raw": raw.double().flatten().numpy()})


# -- the three methods ------------------------------------------------------------------------------
def _gradient(model, batches, base: torch.Tensor) -> tuple[torch.Tensor, float, float]:
    """E_x |∂L(x)/∂ξ| at mask ``base`` (one mask row per prompt, so the expectation is over prompts);
    also the loss and accuracy at ``base`` (the same forwards)."""
    total = torch.zeros(model.n_layers, model.n_heads, dtype=torch.float64)
    loss_sum, n_prompts, correct, targets = 0.0, 0, 0, 0
    for batch in batches:
        xi = base.expand(batch.ids.shape[0], -1, -1).clone().requires_grad_(True)  # (batch, layer, head)
        with head_mask(model, xi):
            losses, right, count = _losses(model, batch)
        (grad,) = torch.autograd.grad(losses.sum(), xi)
        total += grad.abs().double().sum(0).cpu()
        loss_sum += float(losses.detach().sum())
        n_prompts += losses.shape[0]
        correct, targets = correct + int(right.sum()), targets + int(count.sum())
    return total / n_prompts, loss_sum / n_prompts, correct / max(targets, 1)


@torch.no_grad()
def _mean_loss(model, batches, mask=None, baseline=None) -> float:
    total, n = 0.0, 0
    for batch in batches:
        if mask is None:
            losses = _losses(model, batch)[0]
        else:
            with head_mask(model, mask, baseline=baseline):
                losses = _losses(model, batch)[0]
        total, n = total + float(losses.sum()), n + losses.shape[0]
    return total / n


def _ablation(model, batches, prompts, mode: str, batch_size: int) -> torch.Tensor:
    """Δ mean loss when each head alone is zeroed or mean-replaced."""
    choice("ablation mode", mode, ABLATION_MODES)
    means = head_means(model, prompts, batch_size=batch_size) if mode == "mean" else None
    n_heads = model.n_layers * model.n_heads
    masks = torch.ones(n_heads + 1, model.n_layers, model.n_heads)  # one head off each; the last: none
    masks[torch.arange(n_heads), torch.arange(n_heads) // model.n_heads, torch.arange(n_heads) % model.n_heads] = 0.0
    with torch.no_grad():
        totals = _masked_totals(model, batches, masks, means)[0].double()
    n_prompts = sum(b.ids.shape[0] for b in batches)
    return ((totals[:-1] - totals[-1]) / n_prompts).view(model.n_layers, model.n_heads)


def _integrated_gradients(model, batches, n_steps: int) -> torch.Tensor:
    """−IG of the mean loss over ξ from 0 (all heads off) to 1 (Captum)."""
    from captum.attr import IntegratedGradients

    n_prompts = sum(b.ids.shape[0] for b in batches)

    def forward(masks):  # (steps, layer, head) -> (steps,) mean loss under each mask
        return _masked_totals(model, batches, masks)[0] / n_prompts

    ones = torch.ones(1, model.n_layers, model.n_heads)
    widest = max(b.ids.shape[0] for b in batches)
    attributions = IntegratedGradients(forward).attribute(ones, baselines=torch.zeros_like(ones), n_steps=n_steps,
                                                          internal_batch_size=max(1, MAX_ROWS // widest))
    return -attributions[0].detach().double()  # positive: the head lowers the loss


def head_importance(model, prompts, method: str = "gradient", *, answers=None, normalize_layers: bool | None = None,
                    min_max: bool | None = None, ablation: str = "zero", n_steps: int = 16, batch_size: int = 8,
                    seed: int = 0) -> pd.DataFrame:
    """How much the model's loss depends on each attention head.

    Methods (all on the head mask ξ of `workbench.heads.head_mask`):

    - ``"gradient"``: I_h = E_x |∂L(x)/∂ξ_h| at ξ = 1 (Michel et al. 2019, "Are Sixteen Heads
      Really Better than One?"), by default normalised per layer by the L2 norm (Michel et al.)
      and then min–max over all heads (Li et al. 2023's pruning-metric comparison).
    - ``"ablation"``: Δloss when the head alone is zeroed (``ablation="zero"``) or replaced by its
      mean output over the prompts (``"mean"``).
    - ``"integrated_gradients"``: Captum's `IntegratedGradients` of the mean loss over ξ from 0
      to 1 (Sundararajan et al. 2017), sign flipped so that a head that lowers the loss scores > 0;
      the scores sum to L(no heads) − L(all heads).

    Args:
        model: a `ModelHandle`.
        prompts: strings or token ids.
        method: one of ``"gradient"``, ``"ablation"``, ``"integrated_gradients"``.
        answers: one answer string per prompt: the loss is then the answer tokens' cross-entropy
            after the prompt (task loss). Default: next-token loss over the prompt (causal) or
            masked-LM loss on a seeded 15% of tokens (encoders); see the module docstring.
        normalize_layers: divide each layer's scores by their L2 norm. Default: True for
            ``"gradient"`` (Michel et al.), False otherwise (keeps Δloss in nats).
        min_max: rescale all scores to [0, 1]. Default: True for ``"gradient"``, False otherwise.
        ablation: ``"zero"`` or ``"mean"`` for the ablation method.
        n_steps: integration steps for integrated gradients (Gauss–Legendre, Captum's default rule).
        batch_size: prompts per forward. seed: the masked-LM draw (encoders).
    Returns:
        DataFrame ``layer, head, importance, raw``: ``importance`` after the normalisations,
        ``raw`` before them (mean |gradient|, Δloss in nats, or −attribution in nats).
    Raises:
        WorkbenchError: unknown method or ablation mode, empty prompts, bad n_steps.
    """
    method = _check_method(method)
    n_steps = integer("n_steps", n_steps, low=2)
    choice("ablation mode", ablation, ABLATION_MODES)
    batches = _batches(model, prompts, batch_size, seed, answers)
    if method == "gradient":
        raw = _gradient(model, batches, torch.ones(1, model.n_layers, model.n_heads))[0]
    elif method == "ablation":
        raw = _ablation(model, batches, prompts, ablation, batch_size)
    else:
        raw = _integrated_gradients(model, batches, n_steps)
    default = method == "gradient"
    return _frame(model, raw, default if normalize_layers is None else normalize_layers,
                  default if min_max is None else min_max)


def pruning_curve(model, prompts, *, answers=None, step: float = 0.1, importance: pd.DataFrame | None = None,
                  recompute: bool = False, batch_size: int = 8, seed: int = 0) -> pd.DataFrame:
    """Loss and accuracy as the least important heads are masked, ``step`` of all heads at a time.

    Heads are zeroed in order of increasing gradient importance (per-layer L2 normalised), the
    least important ``step`` fraction of all heads (10%) at each step, as in Michel et al. 2019's
    pruning experiment. ``recompute=True`` re-estimates the importance with the heads pruned so
    far masked before every step (slower: one backward pass a step). With ``importance`` (a
    `head_importance` frame, any method) the order is that frame's instead.

    Args:
        answers: as in `head_importance` (task loss and answer accuracy).
    Returns:
        DataFrame ``step, n_pruned, fraction_pruned, loss, accuracy, pruned``: one row per step
        from no head to all heads pruned; ``pruned`` lists the heads masked at that step
        (``"L1H3 L0H2"``). Accuracy is top-1 on the loss targets.
    """
    step = fraction("step", step)
    batches = _batches(model, prompts, batch_size, seed, answers)
    n_total = model.n_layers * model.n_heads
    per_step = max(1, math.ceil(step * n_total - 1e-9))
    if importance is not None:
        if not {"layer", "head", "importance"} <= set(importance.columns) or len(importance) != n_total:
            raise WorkbenchError(f"importance must be a head_importance frame with {n_total} rows "
                                 f"(layer, head, importance); got {len(importance)} rows {list(importance.columns)}")
        scores = torch.zeros(model.n_layers, model.n_heads, dtype=torch.float64)
        for row in importance.itertuples():
            scores[int(row.layer), int(row.head)] = float(row.importance)
        recompute = False
    else:
        scores = _gradient(model, batches, torch.ones(1, model.n_layers, model.n_heads))[0]

    def order_of(scores, mask):  # alive heads, least important first (per-layer L2 for gradients)
        if importance is None:
            norms = scores.norm(dim=-1, keepdim=True)
            scores = torch.where(norms > 0, scores / norms, scores)
        alive = (mask > 0).nonzero().tolist()
        return sorted(alive, key=lambda lh: (float(scores[lh[0], lh[1]]), lh[0], lh[1]))

    masks, pruned = [torch.ones(model.n_layers, model.n_heads)], [[]]
    while masks[-1].any():
        mask = masks[-1].clone()
        if recompute:
            scores = _gradient(model, batches, mask[None])[0]
        chosen = [tuple(lh) for lh in order_of(scores, mask)[:per_step]]
        for layer, head in chosen:
            mask[layer, head] = 0.0
        masks.append(mask)
        pruned.append(chosen)
    with torch.no_grad():
        loss, right, total = _masked_totals(model, batches, torch.stack(masks))  # (steps,) each
    n_prompts = sum(b.ids.shape[0] for b in batches)
    return pd.DataFrame({
        "step": range(len(masks)),
        "n_pruned": [int((m == 0).sum()) for m in masks],
        "fraction_pruned": [float((m == 0).float().mean()) for m in masks],
        "loss": (loss.double() / n_prompts).tolist(),
        "accuracy": (right.double() / total.clamp(min=1).double()).tolist(),
        "pruned": [" ".join(f"L{l}H{h}" for l, h in heads) for heads in pruned],
    })


# -- registry ---------------------------------------------------------------------------------------
def suite_answers(prompts) -> list[str] | None:
    """The answers of prompts taken from the bundled suites (``data/suites/*.jsonl``), or None
    unless every prompt is found there (then the registered analyses use the task loss)."""
    from workbench.models import data_dir
    from workbench.prompts import read_jsonl

    if isinstance(prompts, str) or not all(isinstance(p, str) for p in prompts):
        return None
    known = {}
    for path in sorted((data_dir() / "suites").glob("*.jsonl")):
        try:
            known.update({r["prompt"]: r["answer"] for r in read_jsonl(path, ("prompt", "answer"))})
        except WorkbenchError:
            continue
    answers = [known.get(p) for p in prompts]
    return None if not answers or any(a is None for a in answers) else answers


def _registered_importance(model, prompts) -> pd.DataFrame:
    """`head_importance` (gradient) with the task loss when the prompts come from the bundled suites."""
    return head_importance(model, prompts, answers=suite_answers(prompts) if model.is_causal else None)


def _registered_pruning(model, prompts) -> pd.DataFrame:
    """`pruning_curve` with the task loss when the prompts come from the bundled suites."""
    return pruning_curve(model, prompts, answers=suite_answers(prompts) if model.is_causal else None)


def _skip_untrained_mlm(model) -> str | None:
    if model.source == "minilm":
        return ("the bundled MiniLM has no trained MLM head, so there is no loss whose change measures a head; "
                "head importance needs a causal LM or an encoder with a trained MLM head")
    return None


def _importance_figures(frame):
    return [importance_ranking(frame, "raw", direction="abs",
                               title="Heads by gradient importance E|∂L/∂ξ| (global, not normalised)"),
            importance_ranking(frame, title="Heads by importance normalised per layer (Michel et al.), then min-max"),
            head_grid(frame, "importance", title="Head importance (gradient, per-layer L2 + min-max)")]


register(Analyzer("head_importance", _registered_importance, "Head importance (gradient)", mode="exact",
                  applies=_skip_untrained_mlm, figures=_importance_figures, family="importance",
                  findings=findings.importance, example="prompt",
                  params=lambda prompts: keyword_defaults(head_importance, answers=suite_answers(prompts) is not None,
                                                          normalize_layers=True, min_max=True),  # gradient's
                  sources=("Michel et al. 2019, Are Sixteen Heads Really Better than One? (|∂L/∂ξ|, per-layer L2)",
                           "Li et al. 2023, pruning-based head importance metrics (min-max)")))
register(Analyzer("pruning_curve", _registered_pruning, "Pruning curve (least important heads first)", mode="exact",
                  applies=_skip_untrained_mlm, figures=lambda frame: [pruning_curve_figure(frame)],
                  family="importance", findings=findings.pruning, summary=summaries.pruning,
                  params=lambda prompts: keyword_defaults(pruning_curve, answers=suite_answers(prompts) is not None),
                  sources=("Michel et al. 2019, iterative pruning of 10% of heads by gradient importance",)))
