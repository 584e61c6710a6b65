"""Many head masks over the same prompts, fast: batched forwards that reuse the unchanged prefix.

Ablation importance, pruning curves, causal checks and integrated gradients all ask one question
many times: what does the model compute on these prompts under head mask ξ_1, ξ_2, …, ξ_k
(``[k, n_layers, n_heads]``, the mask of `workbench.heads.head_mask`)? Two things make that cheap:

- **Batching**: the prompts are tiled, one copy per mask, and one forward carries several masks
  (``z' = base + ξ_row (z − base)`` per batch row, `workbench.heads.HeadEdit`), up to
  ``max_rows`` sequences.
- **Prefix reuse**: a mask that is 1 in every layer below L leaves layers 0..L−1 unchanged, so
  their output (the residual stream entering layer L) is taken from one clean forward, and only
  layers ≥ L run. Ablating one head of layer L costs (n_layers − L) / n_layers of the decoder.
  Masks are sorted by their first edited layer and packed ``max_rows`` sequences a forward, each
  forward starting at the lowest first layer of its masks (as few forwards as without reuse).
  This works where the HF base model runs its decoder layers as one loop over a ``ModuleList``
  (Llama-family: ``model.layers``; GPT-2: ``transformer.h``): the list is shortened to layers
  L.. for the forward and the cached residual replaces the first kept layer's input. Other
  architectures (and masks that need gradients) run full forwards.

Only the logits of a window of positions are formed (``window``): the vocabulary projection is a
large part of a small model's forward (SmolLM2-135M: 49,152 × 576, about eight decoder layers).
No attention weights are needed, so the forwards run with PyTorch's fused SDPA attention (`sdpa`),
whose backward is also cheaper than the eager softmax's.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

import torch

from workbench.heads import HeadEdit, edit_heads
from workbench.tasks.scoring import sdpa as scoring_sdpa

#: Most sequences in one forward when several head masks share it.
MAX_ROWS = 64
#: ``model_type``s whose base model loops over a decoder ``ModuleList`` that can be shortened.
PREFIX_TYPES = {"llama": ("model", "layers"), "mistral": ("model", "layers"), "qwen2": ("model", "layers"),
                "qwen3": ("model", "layers"), "gpt2": ("transformer", "h")}

#: ``reduce(logits [rows, window, vocab]) -> Tensor [rows, ...]``: what is kept of a forward.
Reduce = Callable[[torch.Tensor], torch.Tensor]


@contextmanager
def sdpa(model) -> Iterator[None]:
    """`workbench.tasks.scoring.sdpa` for a `ModelHandle`: ``model.hf_model`` with SDPA attention
    inside the block, its implementation restored after."""
    with scoring_sdpa(model.hf_model):
        yield


def supports_prefix(model) -> bool:
    """Whether prefix reuse applies to ``model`` (a `ModelHandle`): a Llama-family or GPT-2 HF model."""
    return _layer_list(model.hf_model) is not None


def _layer_list(hf) -> tuple[torch.nn.Module, str] | None:
    """``(the base model, the name of its decoder ModuleList)``, or None where prefix reuse does not apply."""
    where = PREFIX_TYPES.get(getattr(hf.config, "model_type", None))
    if where is None:
        return None
    base = getattr(hf, where[0], None)
    layers = getattr(base, where[1], None)
    if not isinstance(layers, torch.nn.ModuleList) or not hasattr(hf, "lm_head"):
        return None
    return base, where[1]


def first_edited_layer(masks: torch.Tensor) -> torch.Tensor:
    """The lowest layer where each mask ``[k, layer, head]`` is not 1 (n_layers if none): ``[k]``."""
    edited = (masks != 1).any(-1)  # (k, layer)
    n_layers = masks.shape[1]
    index = torch.arange(n_layers).expand_as(edited)
    return torch.where(edited, index, n_layers).min(-1).values


@contextmanager
def _from_layer(hf, start: int, resid: torch.Tensor) -> Iterator[None]:
    """Run only decoder layers ``start..`` of ``hf``'s base model, with ``resid [rows, pos, d_model]``
    as the input of layer ``start`` (the embeddings are still computed, and discarded)."""
    base, name = _layer_list(hf)
    full = getattr(base, name)

    def replace(module, args, kwargs):  # noqa: ARG001
        if args:
            return (resid, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": resid}

    setattr(base, name, torch.nn.ModuleList(list(full)[start:]))
    handle = full[start].register_forward_pre_hook(replace, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()
        setattr(base, name, full)


def _clean_pass(model, ids: torch.Tensor, attention_mask: torch.Tensor | None, window: tuple[int, int]):
    """One clean forward: the residual stream entering every decoder layer (``n_layers x [batch,
    pos, d_model]``) and the logits of the window ``[batch, hi - lo, vocab]``."""
    hf = model.hf_model
    base, name = _layer_list(hf)
    store: dict[int, torch.Tensor] = {}
    handles = []
    for i, layer in enumerate(getattr(base, name)):
        def grab(module, args, kwargs, i=i):  # noqa: ARG001
            store[i] = (args[0] if args else kwargs["hidden_states"]).detach()
        handles.append(layer.register_forward_pre_hook(grab, with_kwargs=True))
    try:
        with torch.no_grad():
            logits = window_logits(model, ids, attention_mask, window)
    finally:
        for h in handles:
            h.remove()
    return [store[i] for i in range(len(store))], logits


def window_logits(model, ids, attention_mask, window: tuple[int, int]) -> torch.Tensor:
    """Logits ``[rows, hi - lo, vocab]`` of positions ``lo..hi-1`` (the vocabulary projection only there)."""
    hf = model.hf_model
    lo, hi = window
    found = _layer_list(hf)
    if found is None:
        return hf(input_ids=ids, attention_mask=attention_mask).logits[:, lo:hi]
    hidden = found[0](input_ids=ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
    return hf.lm_head(hidden[:, lo:hi])  # (rows, window, vocab)


def masked_forward(model, ids: torch.Tensor, attention_mask: torch.Tensor | None, masks: torch.Tensor,
                   reduce: Reduce, *, baseline=None, window: tuple[int, int] | None = None,
                   reuse_prefix: bool = True, max_rows: int = MAX_ROWS) -> torch.Tensor:
    """``reduce`` of the logits of ``ids`` under each head mask, several masks per forward.

    Args:
        model: a `ModelHandle` (its plain HF model runs; edits at the output projections).
        ids: ``[batch, pos]`` token ids; attention_mask ``[batch, pos]`` (None: no padding).
        masks: ξ ``[k, n_layers, n_heads]``; may require grad (then no prefix is reused).
        reduce: ``reduce(logits [rows, window, vocab]) -> [rows, ...]`` (rows = masks × batch,
            mask-major: row ``j * batch + b`` is prompt b under mask j).
        baseline: what a masked head moves to (`workbench.heads.HeadEdit.base`): None (zero) or
            means ``[n_layers, (pos,) n_heads, d_head]``.
        window: ``(lo, hi)``, the positions whose logits ``reduce`` needs (default: all).
        reuse_prefix: reuse the clean prefix below each mask's first edited layer (see the
            module docstring); False runs every mask through the whole model (the reference).
        max_rows: most sequences in one forward.
    Returns:
        ``[k, batch, ...]``: reduce's output for every (mask, prompt).
    """
    window = (0, ids.shape[1]) if window is None else window
    with sdpa(model):
        return _run(model, ids, attention_mask, masks, reduce, baseline=baseline, window=window,
                    reuse_prefix=reuse_prefix, per=max(1, max_rows // ids.shape[0]))


def _run(model, ids, attention_mask, masks, reduce, *, baseline, window, reuse_prefix: bool, per: int) -> torch.Tensor:
    """`masked_forward`'s body: plan the forwards (prefix reuse or not), run them, gather."""
    batch, k = ids.shape[0], masks.shape[0]
    out: list[torch.Tensor | None] = [None] * k
    hf = model.hf_model
    reuse = reuse_prefix and not masks.requires_grad and _layer_list(hf) is not None
    if reuse:
        starts = first_edited_layer(masks.detach())
        resid, clean_logits = _clean_pass(model, ids, attention_mask, window)
        clean = [j for j in range(k) if int(starts[j]) == model.n_layers]
        for j in clean:  # no head edited: the clean pass's output
            out[j] = reduce(clean_logits)
        edited = sorted((j for j in range(k) if int(starts[j]) < model.n_layers), key=lambda j: (int(starts[j]), j))
        # chunks of masks sorted by their first edited layer; a chunk starts at its lowest one
        chunks = [edited[i:i + per] for i in range(0, len(edited), per)]
        plan = [(int(starts[chunk[0]]), chunk) for chunk in chunks]
    else:
        plan = [(0, list(range(k))[i:i + per]) for i in range(0, k, per)]
    for start, chosen in plan:
        n = len(chosen)
        rows_ids = ids.repeat(n, 1)  # (n * batch, pos)
        rows_mask = None if attention_mask is None else attention_mask.repeat(n, 1)
        scale = masks[chosen].repeat_interleave(batch, 0)  # (n * batch, layer, head)
        with edit_heads(model, HeadEdit(scale, baseline), site="hf"):
            if start > 0:
                with _from_layer(hf, start, resid[start].repeat(n, 1, 1)):
                    value = reduce(window_logits(model, rows_ids, rows_mask, window))
            else:
                value = reduce(window_logits(model, rows_ids, rows_mask, window))
        for j, part in zip(chosen, value.view(n, batch, *value.shape[1:])):
            out[j] = part
    return torch.stack(out)
