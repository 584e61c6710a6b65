"""Head importance (gradient, zero- and mean-ablation, integrated gradients) of every attention head.

All three methods act on the head mask ξ of `workbench.heads.head_mask` (the input of each
layer's attention output projection, i.e. TransformerLens ``hook_z``) and measure a loss L:

- with ``answers=`` (one per prompt): the cross-entropy of the answer tokens appended to the
  prompt (teacher forced), i.e. the task loss Michel et al. 2019 prune against. The registered
  analyses use it whenever the prompts come from the bundled suites (the demo's defaults): the
  demo model is trained on the answers of its templated tasks, not on their template tokens;
- causal LMs otherwise: the next-token cross-entropy over every real position of each prompt;
- encoders: masked-LM cross-entropy on a seeded 15% of the non-special tokens replaced by the
  mask token (Devlin et al. 2019). It is only meaningful with a trained MLM head; the bundled
  MiniLM ships without one (its MLM head is random), so the registered analyses skip it.

Ablation, integrated gradients and pruning curves (`workbench.analyzers.pruning`) run many masks over the same prompts through
`workbench.masked.masked_forward`: each forward carries several masks at once (the batch tiled,
one mask per copy, up to ``MAX_ROWS`` sequences), only the logits that carry a target are formed,
and a mask that leaves layers below L untouched runs only layers ≥ L from the cached residual
stream (prefix reuse; Llama-family and GPT-2).

Rankings are global by default (every head against every other). Per-layer L2 normalisation
(Michel et al.) is the option ``normalize_layers=True``: it puts one head of every layer at its
layer's top, so its top-k is spread over layers rather than the heads the loss depends on most.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import torch

from workbench import checks
from workbench.analyzers import Analyzer, keyword_defaults, register
from workbench.errors import WorkbenchError
from workbench.findings import checks as checks_findings
from workbench.heads import ABLATION_MODES, head_mask, head_means
from workbench.masked import MAX_ROWS, masked_forward, sdpa, window_logits
from workbench.prompts import answer_tokens

METHODS = ("gradient", "ablation", "integrated_gradients")
#: Devlin et al. 2019: 15% of the tokens are masked for the MLM objective.
MLM_FRACTION = 0.15
IGNORE = -100


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
    batch_size, seed = checks.positive_int("batch_size", batch_size), checks.integer("seed", seed, low=0)
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


def _window(labels: torch.Tensor) -> tuple[int, int]:
    """The positions ``(lo, hi)`` whose logits carry a loss target (all of them if none)."""
    cols = (labels != IGNORE).any(0).nonzero().flatten()
    return (0, labels.shape[1]) if len(cols) == 0 else (int(cols[0]), int(cols[-1]) + 1)


def _row_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per row: mean loss, correct top-1 predictions and targets, ``[rows, 3]`` (float64)."""
    logits = logits if logits.dtype == torch.float64 else logits.float()
    token_loss = torch.nn.functional.cross_entropy(
        logits.transpose(1, 2), labels, ignore_index=IGNORE, reduction="none")  # (rows, window)
    valid = labels != IGNORE
    counts = valid.sum(-1)
    correct = ((logits.argmax(-1) == labels) & valid).sum(-1)
    mean = (token_loss * valid).sum(-1) / counts.clamp(min=1)
    return torch.stack([mean.double(), correct.double(), counts.double()], -1)


def _reducer(batch: _Batch):
    """``reduce`` for `workbench.masked.masked_forward`: the loss triple of each tiled row."""
    lo, hi = _window(batch.labels)
    labels = batch.labels[:, lo:hi]

    def reduce(logits):  # (copies * batch, window, vocab) -> (copies * batch, 3)
        return _row_losses(logits, labels.repeat(logits.shape[0] // labels.shape[0], 1))

    return reduce, (lo, hi)


def _attention_mask(batch: _Batch) -> torch.Tensor | None:
    return None if bool(batch.mask.all()) else batch.mask


def _masked_totals(model, batches, masks: torch.Tensor, baseline=None, *, reuse_prefix: bool = True):
    """Σ over prompts of the per-prompt loss under each mask ``[k, layer, head]`` -> ``[k]``, and
    the correct predictions and targets under each ``[k]`` (`workbench.masked.masked_forward`:
    several masks per forward, the unchanged prefix reused)."""
    totals = []
    for batch in batches:
        reduce, window = _reducer(batch)
        out = masked_forward(model, batch.ids, _attention_mask(batch), masks, reduce, baseline=baseline,
                             window=window, reuse_prefix=reuse_prefix)  # (k, batch, 3)
        totals.append(out.sum(1))  # (k, 3)
    total = torch.stack(totals).sum(0)
    return total[:, 0], total[:, 1], total[:, 2]


def _losses(model, batch: _Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One forward (head edits active in the caller's block apply): per-prompt mean loss, correct
    top-1 predictions and targets, each ``[batch]``."""
    reduce, window = _reducer(batch)
    out = reduce(window_logits(model, batch.ids, _attention_mask(batch), window))  # (batch, 3)
    return out[:, 0], out[:, 1].long(), out[:, 2].long()


def layer_normalized(score: torch.Tensor) -> torch.Tensor:
    """``[layer, head]`` scores divided by each layer's L2 norm (Michel et al. 2019; a layer of
    zeros stays zero)."""
    norms = score.norm(dim=-1, keepdim=True)
    return torch.where(norms > 0, score / norms, score)


def _frame(model, raw: torch.Tensor, normalize_layers: bool, min_max: bool, attrs: dict) -> pd.DataFrame:
    score = raw.double().clone()  # (layer, head)
    if normalize_layers:
        score = layer_normalized(score)
    if min_max:
        low, high = score.min(), score.max()
        score = (score - low) / (high - low) if high > low else torch.zeros_like(score)
    layer, head = torch.meshgrid(torch.arange(model.n_layers), torch.arange(model.n_heads), indexing="ij")
    frame = pd.DataFrame({"layer": layer.flatten().numpy(), "head": head.flatten().numpy(),
                          "importance": score.flatten().numpy(), "raw": raw.double().flatten().numpy()})
    frame.attrs.update(attrs, normalize_layers=bool(normalize_layers), min_max=bool(min_max))
    return frame


# -- the three methods ------------------------------------------------------------------------------
def _gradient(model, batches, base: torch.Tensor) -> torch.Tensor:
    """E_x |∂L(x)/∂ξ| at mask ``base`` ``[layer, head]`` (one mask row per prompt, so the
    expectation is over prompts)."""
    total = torch.zeros(model.n_layers, model.n_heads, dtype=torch.float64)
    n_prompts = 0
    for batch in batches:
        xi = base.expand(batch.ids.shape[0], -1, -1).clone().requires_grad_(True)  # (batch, layer, head)
        with sdpa(model), head_mask(model, xi, site="hf"):
            losses = _losses(model, batch)[0]
        (grad,) = torch.autograd.grad(losses.sum(), xi)
        total += grad.abs().double().sum(0).cpu()
        n_prompts += losses.shape[0]
    return total / n_prompts


@torch.no_grad()
def _mean_loss(model, batches, mask=None, baseline=None) -> float:
    masks = torch.ones(1, model.n_layers, model.n_heads) if mask is None else mask[None]
    loss = _masked_totals(model, batches, masks, baseline)[0]
    return float(loss[0]) / sum(b.ids.shape[0] for b in batches)


def single_head_masks(model) -> torch.Tensor:
    """``[n_layers * n_heads + 1, n_layers, n_heads]``: one head off in each (layer-major), the last none."""
    n_heads = model.n_layers * model.n_heads
    masks = torch.ones(n_heads + 1, model.n_layers, model.n_heads)
    masks[torch.arange(n_heads), torch.arange(n_heads) // model.n_heads, torch.arange(n_heads) % model.n_heads] = 0.0
    return masks


def reference_means(model, prompts, reference, batch_size: int) -> torch.Tensor:
    """`head_means` over ``reference``, which must share no prompt with the scored ``prompts``
    (a mean over the prompts being scored would leak them into the ablation)."""
    if reference is None:
        raise WorkbenchError('ablation="mean" needs reference= prompts: the reference distribution whose mean head '
                             "outputs replace an ablated head (never the prompts being scored)")
    if isinstance(reference, str):
        reference = [reference]
    reference = list(reference)
    scored = {p for p in ([prompts] if isinstance(prompts, str) else prompts) if isinstance(p, str)}
    shared = [r for r in reference if isinstance(r, str) and r in scored]
    if shared:
        raise WorkbenchError(f"reference= shares {len(shared)} prompt(s) with the scored prompts (e.g. "
                             f"{shared[0][:60]!r}); mean ablation needs means from other prompts")
    return head_means(model, reference, batch_size=batch_size)


def _ablation(model, batches, means, reuse_prefix: bool = True) -> torch.Tensor:
    """Δ mean loss when each head alone is zeroed (``means`` None) or mean-replaced."""
    with torch.no_grad():
        totals = _masked_totals(model, batches, single_head_masks(model), means, reuse_prefix=reuse_prefix)[0]
    n_prompts = sum(b.ids.shape[0] for b in batches)
    return ((totals[:-1] - totals[-1]) / n_prompts).view(model.n_layers, model.n_heads)


def _integrated_gradients(model, batches, n_steps: int) -> torch.Tensor:
    """−IG of the mean loss over ξ from 0 (all heads off) to 1 (Captum); all steps of a batch of
    prompts share forwards (`internal_batch_size`, the prompts tiled once per step)."""
    from captum.attr import IntegratedGradients

    n_prompts = sum(b.ids.shape[0] for b in batches)

    def forward(masks):  # (steps, layer, head) -> (steps,) mean loss under each mask
        return _masked_totals(model, batches, masks)[0] / n_prompts

    ones = torch.ones(1, model.n_layers, model.n_heads)
    widest = max(b.ids.shape[0] for b in batches)
    attributions = IntegratedGradients(forward).attribute(ones, baselines=torch.zeros_like(ones), n_steps=n_steps,
                                                          internal_batch_size=max(1, MAX_ROWS // widest))
    return -attributions[0].detach().double()  # positive: the head lowers the loss


def head_importance(model, prompts, method: str = "gradient", *, answers=None, normalize_layers: bool = False,
                    min_max: bool | None = None, ablation: str = "zero", reference=None, n_steps: int = 16,
                    batch_size: int = 8, seed: int = 0, reuse_prefix: bool = True) -> pd.DataFrame:
    """How much the model's loss depends on each attention head, ranked over all heads.

    Methods (all on the head mask ξ of `workbench.heads.head_mask`):

    - ``"gradient"``: I_h = E_x |∂L(x)/∂ξ_h| at ξ = 1 (Michel et al. 2019, "Are Sixteen Heads
      Really Better than One?"), min–max scaled over all heads (Li et al. 2023's pruning-metric
      comparison; the order is the raw gradient's).
    - ``"ablation"``: Δloss when the head alone is zeroed (``ablation="zero"``) or replaced by its
      mean output over ``reference`` prompts (``"mean"``, Wang et al. 2022; never the scored
      prompts). Batched, with the unchanged prefix reused (`workbench.masked`).
    - ``"integrated_gradients"``: Captum's `IntegratedGradients` of the mean loss over ξ from 0
      to 1 (Sundararajan et al. 2017), sign flipped so that a head that lowers the loss scores > 0;
      the scores sum to L(no heads) − L(all heads). Steps are batched.

    The ranking is global by default: per-layer normalisation (``normalize_layers=True``,
    Michel et al.'s) gives every layer a head at the top of its layer, so its top-k is one head
    per layer, not the k heads the loss depends on most.

    Args:
        model: a `ModelHandle`.
        prompts: strings or token ids.
        method: one of ``"gradient"``, ``"ablation"``, ``"integrated_gradients"``.
        answers: one answer string per prompt: the loss is then the answer tokens' cross-entropy
            after the prompt (task loss). Default: next-token loss over the prompt (causal) or
            masked-LM loss on a seeded 15% of tokens (encoders); see the module docstring.
        normalize_layers: divide each layer's scores by their L2 norm (Michel et al.); default False.
        min_max: rescale all scores to [0, 1]. Default: True for ``"gradient"``, False otherwise
            (keeps Δloss in nats).
        ablation: ``"zero"`` or ``"mean"`` for the ablation method.
        reference: prompts whose mean head outputs a mean-ablated head takes (needed for
            ``ablation="mean"``; must share no prompt with ``prompts``).
        n_steps: integration steps for integrated gradients (Gauss–Legendre, Captum's default rule).
        batch_size: prompts per forward. seed: the masked-LM draw (encoders).
        reuse_prefix: reuse the clean prefix in ablation (False: full forwards; same numbers).
    Returns:
        DataFrame ``layer, head, importance, raw``: ``importance`` after the normalisations,
        ``raw`` before them (mean |gradient|, Δloss in nats, or −attribution in nats).
        ``frame.attrs``: method, ablation, n_prompts, n_reference, normalize_layers, min_max.
    Raises:
        WorkbenchError: unknown method or ablation mode, empty prompts, bad n_steps, a mean
            ablation without reference prompts or with reference prompts among the scored ones.
    """
    method = checks.choice("importance method", method, METHODS)
    n_steps = checks.integer("n_steps", n_steps, low=2)
    ablation = checks.choice("ablation mode", ablation, ABLATION_MODES)
    batches = _batches(model, prompts, batch_size, seed, answers)
    attrs = {"method": method, "n_prompts": sum(b.ids.shape[0] for b in batches), "loss": _loss_name(model, answers)}
    if method == "gradient":
        raw = _gradient(model, batches, torch.ones(1, model.n_layers, model.n_heads))
    elif method == "ablation":
        means = reference_means(model, prompts, reference, batch_size) if ablation == "mean" else None
        attrs.update(ablation=ablation, n_reference=0 if reference is None else len(list(reference)))
        raw = _ablation(model, batches, means, reuse_prefix)
    else:
        raw = _integrated_gradients(model, batches, n_steps)
        attrs["n_steps"] = n_steps
    return _frame(model, raw, normalize_layers, method == "gradient" if min_max is None else min_max, attrs)


def _loss_name(model, answers) -> str:
    if answers is not None:
        return "answer cross-entropy (teacher forced)"
    return "next-token cross-entropy" if model.is_causal else "masked-LM cross-entropy (15% of tokens)"


# -- registry ---------------------------------------------------------------------------------------
def suite_answers(prompts) -> list[str] | None:
    """The answers of prompts taken from the bundled suites (``data/suites/*.jsonl``), or None
    unless every prompt is found there (then the registered analyses use the task loss): the
    fit rows of `workbench.analyzers.rankings.demo_splits`."""
    from workbench.analyzers.rankings import demo_splits

    found = demo_splits(prompts)
    return None if found is None else found["fit"]["answers"]


def _registered_importance(model, prompts) -> pd.DataFrame:
    """The registered analysis: the gradient ranking of `workbench.analyzers.rankings`
    (global, on the fit prompts with the task loss for suite prompts; the ranking the causal
    checks test)."""
    from workbench.analyzers.rankings import importance_rankings, method_frame

    rankings = importance_rankings(model, prompts)
    frame = method_frame(rankings, "gradient")
    frame.attrs.update(rankings.attrs, method="gradient", normalize_layers=False, min_max=True)
    return frame


def _skip_untrained_mlm(model) -> str | None:
    if model.source == "minilm":
        return ("the bundled MiniLM has no trained MLM head, so there is no loss whose change measures a head; "
                "head importance needs a causal LM or an encoder with a trained MLM head")
    return None


def _importance_figures(frame):
    from workbench.figures import head_grid, importance_ranking

    return [importance_ranking(frame, "raw", top=30, direction="abs",
                               title="Top heads by gradient importance E|∂L/∂ξ| (global ranking)"),
            head_grid(frame, "importance", title="Head importance (gradient E|∂L/∂ξ|, min-max over all heads)")]


def _params(prompts) -> dict:
    return keyword_defaults(head_importance, answers=suite_answers(prompts) is not None, normalize_layers=False,
                            min_max=True)


register(Analyzer("head_importance", _registered_importance, "Head importance (gradient, global ranking)",
                  mode="exact", applies=_skip_untrained_mlm, figures=_importance_figures, family="importance",
                  findings=checks_findings.importance, example="prompt",
                  params=_params,
                  sources=("Michel et al. 2019, Are Sixteen Heads Really Better than One? (|∂L/∂ξ|; per-layer L2 "
                           "normalisation is the option normalize_layers=True)",
                           "Li et al. 2023, pruning-based head importance metrics (min-max)")))
# pruning curves: workbench.analyzers.pruning; registered under every method's ranking in .rankings
