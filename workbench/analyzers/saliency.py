"""Attention vs saliency: do the tokens a head attends to match the tokens that matter?

Token attributions come from Captum on the input embeddings (``inputs_embeds`` of
``model.hf_model``), for one scalar target per prompt:
- causal LMs: the logit of the model's predicted next token at the last position; the
  attention compared is the last query row (the row that makes that prediction);
- encoders (MiniLM/BERT, whose MLM head may be untrained): the final hidden state at [CLS]
  (position 0) projected on its direction for the unperturbed input (its norm there; a plain
  norm would be almost constant after BERT's final LayerNorm); the attention compared is the
  [CLS] query row.
Baselines (integrated gradients, feature ablation) are the zero embedding at content tokens and
the real embedding at special tokens (BOS/[CLS]/[SEP] stay fixed, so they get no attribution).
Attention views (Abnar & Zuidema 2020): each head, the mean over a layer's heads, the mean over
all heads, and rollout with A = 0.5 W + 0.5 I. Special tokens are left out of both vectors by
default: attention parks on them as a no-op (Clark et al. 2019), which says nothing about content.
Correlations (Pearson, Spearman, Kendall τ as in Jain & Wallace 2019, and top-k overlap) are
computed per prompt and then averaged over prompts (NaN, from a constant vector, is skipped).
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import torch

from workbench.analyzers import Analyzer, keyword_defaults, register
from workbench.checks import choice, positive_int
from workbench import findings
from workbench.figures import correlation_grid
from workbench.findings import summaries
from workbench.errors import WorkbenchError

METHODS = ("integrated_gradients", "saliency", "input_x_gradient", "feature_ablation")
TOPK = 5
METRICS = ("pearson", "spearman", "kendall", "topk_overlap")


def rollout(patterns: torch.Tensor) -> torch.Tensor:
    """Attention rollout (Abnar & Zuidema 2020): ``R = Â_L ⋯ Â_1`` with ``Â = 0.5 W + 0.5 I``.

    Args:
        patterns: ``[layer, head, query, key]`` (heads are averaged into W) or ``[layer, query, key]``.
    Returns:
        ``[query, key]``: how much each input token flows into each position of the last layer.
    """
    if patterns.ndim == 4:
        patterns = patterns.mean(1)  # (layer, query, key)
    if patterns.ndim != 3 or patterns.shape[-1] != patterns.shape[-2]:
        raise WorkbenchError(f"rollout needs patterns [layer, (head,) query, key] with query = key; got {tuple(patterns.shape)}")
    eye = torch.eye(patterns.shape[-1], dtype=patterns.dtype)
    out = eye
    for w in patterns:  # first layer first
        out = (0.5 * w + 0.5 * eye) @ out
    return out


# -- attributions -------------------------------------------------------------------------
def _target(model, ids: torch.Tensor):
    """``(forward(embeds) -> Tensor, captum target, description, query position)``."""
    hf = model.hf_model
    if model.is_causal:
        with torch.no_grad():
            predicted = int(hf(input_ids=ids).logits[0, -1].argmax())

        def forward(embeds):
            return hf(inputs_embeds=embeds).logits[:, -1]  # (batch, vocab)

        token = model.tokenizer.convert_ids_to_tokens([predicted])[0]
        return forward, predicted, f"logit of the predicted next token {token!r}", ids.shape[1] - 1

    def cls_state(**inputs):
        return hf(**inputs, output_hidden_states=True).hidden_states[-1][:, 0]  # (batch, d_model)

    with torch.no_grad():
        direction = torch.nn.functional.normalize(cls_state(input_ids=ids)[0], dim=0)

    def forward(embeds):
        return cls_state(inputs_embeds=embeds) @ direction  # (batch,)

    return forward, None, "final [CLS] hidden state projected on its unperturbed direction", 0


def _attribute(model, ids: torch.Tensor, method: str, n_steps: int):
    """Per-token attributions ``(magnitude [pos], signed [pos])``, target facts, IG delta."""
    import captum.attr as ca

    forward, target, what, query = _target(model, ids)
    embeds = model.hf_model.get_input_embeddings()(ids).detach().requires_grad_()  # (1, pos, d_model)
    special = torch.tensor([int(t) in set(model.tokenizer.all_special_ids) for t in ids[0]])
    baseline = torch.where(special[None, :, None], embeds, torch.zeros_like(embeds)).detach()
    delta = None
    if method == "integrated_gradients":
        attr, delta = ca.IntegratedGradients(forward).attribute(
            embeds, baselines=baseline, target=target, n_steps=n_steps, internal_batch_size=n_steps,
            return_convergence_delta=True)
        delta = float(delta.abs().max())
    elif method == "saliency":
        attr = ca.Saliency(forward).attribute(embeds, target=target, abs=False)
    elif method == "input_x_gradient":
        attr = ca.InputXGradient(forward).attribute(embeds, target=target)
    else:
        mask = torch.arange(ids.shape[1])[None, :, None].expand_as(embeds)  # one feature per token
        attr = ca.FeatureAblation(forward).attribute(embeds, baselines=baseline, target=target, feature_mask=mask)
        per_token = attr[0, :, 0].detach()  # the group's Δ target, repeated over d_model
        return per_token.abs(), per_token, (target, what, query), None
    attr = attr[0].detach()  # (pos, d_model)
    return attr.norm(dim=-1), attr.sum(-1), (target, what, query), delta


def _attention_views(model, ids: torch.Tensor, query: int) -> list[tuple[str, int, int, torch.Tensor]]:
    """``(view, layer, head, attention over keys [pos])`` of the query row, for every view."""
    from workbench.capture import capture_patterns

    patterns = capture_patterns(model, ids)  # {layer: (1, head, query, key)}
    stack = torch.stack([patterns[layer][0] for layer in range(model.n_layers)])  # (layer, head, q, k)
    views = [("head", l, h, stack[l, h, query]) for l in range(model.n_layers) for h in range(model.n_heads)]
    views += [("layer_mean", l, -1, stack[l, :, query].mean(0)) for l in range(model.n_layers)]
    views += [("all_mean", -1, -1, stack[:, :, query].mean((0, 1))),
              ("rollout", -1, -1, rollout(stack)[query])]
    return views


def token_attributions(model, prompt: str, method: str = "integrated_gradients", *, n_steps: int = 50,
                       exclude_special: bool = True) -> pd.DataFrame:
    """Token attributions and attention of one prompt, the vectors `saliency_alignment` compares.

    Args:
        model: a `ModelHandle` (causal or encoder; see the module docstring for the target).
        prompt: one string.
        method: ``"integrated_gradients"`` (Sundararajan et al. 2017, ``n_steps`` Gauss-Legendre
            steps), ``"saliency"`` (gradient), ``"input_x_gradient"``, or ``"feature_ablation"``
            (each token's embedding replaced by the baseline).
        exclude_special: leave special tokens out (they are also fixed in the baseline).
    Returns:
        Long frame ``position, token, attribution, attribution_signed, view, layer, head,
        attention``: one row per (token, attention view). ``attribution`` is the L2 norm over
        embedding dimensions (feature ablation: |Δ target|); ``attribution_signed`` the sum
        over dimensions (IG: these sum to target(x) − target(baseline)). ``frame.attrs``: target
        description and id, query position, and IG's ``convergence_delta`` (Captum).
    """
    choice("method", method, METHODS)
    n_steps = positive_int("n_steps", n_steps)
    if not isinstance(prompt, str):
        raise WorkbenchError(f"prompt must be one string; got {type(prompt).__name__}")
    ids, _ = model.to_tokens([prompt])
    magnitude, signed, (target, what, query), delta = _attribute(model, ids, method, n_steps)
    tokens = model.to_str_tokens(ids[0])
    special = set(model.tokenizer.all_special_ids)
    keep = [p for p in range(ids.shape[1]) if not (exclude_special and int(ids[0, p]) in special)]
    if len(keep) < 2:
        raise WorkbenchError(f"prompt {prompt!r} has {len(keep)} non-special token(s); comparing "
                             "attention with attributions needs at least 2")
    base = pd.DataFrame({"position": keep, "token": [tokens[p] for p in keep],
                         "attribution": magnitude[keep].numpy(), "attribution_signed": signed[keep].numpy()})
    parts = [base.assign(view=view, layer=layer, head=head, attention=attn[keep].numpy())
             for view, layer, head, attn in _attention_views(model, ids, query)]
    frame = pd.concat(parts, ignore_index=True)
    frame.attrs.update(method=method, target=what, target_id=target, query_position=query,
                       convergence_delta=delta)
    return frame


# -- alignment ----------------------------------------------------------------------------
def correlations(attribution: np.ndarray, attention: np.ndarray, *, topk: int = TOPK) -> dict:
    """Pearson, Spearman, Kendall τ (scipy) and top-k overlap of two vectors over the same tokens.

    top-k overlap = |top-k(attribution) ∩ top-k(attention)| / k with k = min(topk, length).
    """
    from scipy.stats import kendalltau, pearsonr, spearmanr

    k = min(topk, len(attribution))
    top_a = set(np.argsort(-attribution, kind="stable")[:k])
    top_b = set(np.argsort(-attention, kind="stable")[:k])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a constant vector gives NaN, which averaging skips
        return {"pearson": float(pearsonr(attribution, attention)[0]),
                "spearman": float(spearmanr(attribution, attention)[0]),
                "kendall": float(kendalltau(attribution, attention)[0]),
                "topk_overlap": len(top_a & top_b) / k}


def saliency_alignment(model, prompts, method: str = "integrated_gradients", *, topk: int = TOPK,
                       n_steps: int = 50, exclude_special: bool = True) -> pd.DataFrame:
    """How well attention agrees with Captum attributions, per head and per aggregate view.

    Args:
        prompts: strings (one target per prompt, see the module docstring).
        method: one of ``integrated_gradients``, ``saliency``, ``input_x_gradient``,
            ``feature_ablation`` (see `token_attributions`).
        topk: k of the top-k overlap (default 5).
    Returns:
        DataFrame ``view, layer, head, pearson, spearman, kendall, topk_overlap, n_prompts``;
        view ``"head"`` has one row per head, ``"layer_mean"`` has head = -1, ``"all_mean"`` and
        ``"rollout"`` have layer = head = -1. Each metric is computed per prompt, then averaged
        over prompts (Jain & Wallace 2019; Abnar & Zuidema 2020).
    """
    choice("method", method, METHODS)
    if isinstance(prompts, str):
        prompts = [prompts]
    prompts = list(prompts)
    if not prompts:
        raise WorkbenchError("prompts is empty: expected at least one prompt")
    topk, n_steps = positive_int("topk", topk), positive_int("n_steps", n_steps)
    rows = []
    for prompt in prompts:
        frame = token_attributions(model, prompt, method, n_steps=n_steps, exclude_special=exclude_special)
        for (view, layer, head), part in frame.groupby(["view", "layer", "head"], sort=False):
            rows.append({"view": view, "layer": layer, "head": head,
                         **correlations(part["attribution"].to_numpy(), part["attention"].to_numpy(), topk=topk)})
    per_prompt = pd.DataFrame(rows)
    out = per_prompt.groupby(["view", "layer", "head"], sort=False, as_index=False)[list(METRICS)].mean()
    out["n_prompts"] = len(prompts)
    return out


# -- registry -----------------------------------------------------------------------------
REGISTERED_PROMPTS = 8   # prompts in the registered analysis (fast on 2 CPU cores)
REGISTERED_STEPS = 32    # IG steps there


def registered_saliency(model, prompts) -> pd.DataFrame:
    """The registered analysis: integrated gradients on the first `REGISTERED_PROMPTS` prompts."""
    return saliency_alignment(model, list(prompts)[:REGISTERED_PROMPTS], "integrated_gradients",
                              n_steps=REGISTERED_STEPS)


def _saliency_sets(model, prompts) -> dict[str, list[str]]:
    return {f"run (first {REGISTERED_PROMPTS})": list(prompts)[:REGISTERED_PROMPTS]}


register(Analyzer(
    "saliency_alignment", registered_saliency, "Attention vs saliency (integrated gradients)", mode="exact",
    figures=lambda frame: [correlation_grid(frame, metric) for metric in ("spearman", "kendall")],
    family="saliency", findings=findings.saliency, prompts=_saliency_sets, summary=summaries.saliency,
    params=lambda prompts: keyword_defaults(
        saliency_alignment, n_steps=REGISTERED_STEPS, n_prompts=min(len(prompts), REGISTERED_PROMPTS)),
    sources=("Jain & Wallace 2019, Attention is not Explanation",
             "Abnar & Zuidema 2020, Quantifying Attention Flow in Transformers (rollout)",
             "Sundararajan et al. 2017, Axiomatic Attribution for Deep Networks (Captum IG)"),
))
