"""`ModelHandle`: a loaded model, its bridge, its plain HF twin, tokenizer and shape facts."""

from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

from workbench.checks import integer
from workbench.errors import WorkbenchError


@dataclass
class ModelHandle:
    """A loaded model: the TransformerLens bridge, the HF model under it, and its shape facts.

    Attributes:
        bridge: ``TransformerBridge`` with TransformerLens hook names (``blocks.{L}.attn.hook_pattern``).
        hf_model: a plain Hugging Face model (eager attention) sharing every parameter tensor
            with the bridge's: booting a bridge rewires the modules of the model it wraps, so
            this twin is the one that runs HF code paths unchanged (generation, the streaming
            attention function). It is never the caller's own object.
        tokenizer: the Hugging Face tokenizer; prompts are tokenized with its own special tokens.
        name, source, architecture: what was loaded and from where.
        n_layers, n_heads, n_kv_heads, d_head, n_ctx: shape facts (n_ctx = max positions).
        is_causal: False for encoders (MiniLM/BERT): every query sees every key.
        meta: provenance (``model_type``, ``path``, ``device_map`` where dispatched, ...).
    """

    bridge: Any
    hf_model: Any
    tokenizer: Any
    name: str
    source: str
    architecture: str
    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_head: int
    n_ctx: int
    is_causal: bool
    meta: dict = field(default_factory=dict)

    @property
    def device(self) -> torch.device:
        """Where inputs go: the first parameter's device, or the bridge's input device when
        Accelerate offloaded it (meta parameters)."""
        first = next(self.hf_model.parameters()).device
        return torch.device(self.bridge.cfg.device) if first.type == "meta" else first

    def __repr__(self) -> str:
        return (
            f"ModelHandle(name={self.name!r}, architecture={self.architecture!r}, "
            f"n_layers={self.n_layers}, n_heads={self.n_heads}, n_kv_heads={self.n_kv_heads}, "
            f"d_head={self.d_head}, n_ctx={self.n_ctx}, causal={self.is_causal})"
        )

    # -- tokens -------------------------------------------------------------------------
    def to_tokens(self, prompts: str | Sequence[str] | torch.Tensor | np.ndarray | Sequence[Sequence[int]]):
        """Tokenize prompts (or validate token ids) into a right-padded batch.

        Args:
            prompts: a string, a list of strings, an integer tensor or numpy array
                ``[batch, pos]`` (or ``[pos]``), or a list of token-id lists (Python or numpy
                integers).
        Returns:
            ``(input_ids [batch, pos], attention_mask [batch, pos])``, both int64 on the model's
            device; attention_mask is 1 for real tokens.
        Raises:
            WorkbenchError: empty prompts, float/bool token ids (never truncated), ids outside
                the vocabulary, text mixed with ids, or a prompt longer than n_ctx.
        """
        if isinstance(prompts, str):
            prompts = [prompts]
        if isinstance(prompts, (torch.Tensor, np.ndarray)):
            ids = _id_tensor(prompts, "token ids")
            if ids.ndim == 1:
                ids = ids[None]
            if ids.ndim != 2 or ids.shape[0] == 0 or ids.shape[1] == 0:
                raise WorkbenchError(
                    f"token ids must have shape [batch, pos] with batch, pos >= 1; got {tuple(ids.shape)}"
                )
            mask = torch.ones_like(ids)
        else:
            prompts = list(prompts)
            if not prompts:
                raise WorkbenchError("prompts is empty: expected at least one prompt (a string or token ids)")
            kinds = {isinstance(p, str) for p in prompts}
            if kinds == {True}:
                for i, p in enumerate(prompts):
                    if not p.strip():
                        raise WorkbenchError(f"prompt {i} is empty: expected non-empty text")
                enc = self.tokenizer(list(prompts), return_tensors="pt", padding=True)
                ids, mask = enc["input_ids"], enc["attention_mask"]
            elif kinds == {True, False}:
                raise WorkbenchError("prompts mixes text and token ids: expected all strings or all token-id lists")
            else:
                rows = [_id_row(i, p) for i, p in enumerate(prompts)]
                width = max(len(r) for r in rows)
                pad = self.tokenizer.pad_token_id or 0
                ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows], dtype=torch.long)
                mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows], dtype=torch.long)
        vocab = self.hf_model.config.vocab_size
        if int(ids.max()) >= vocab or int(ids.min()) < 0:
            raise WorkbenchError(f"token ids must lie in [0, {vocab}); got range [{int(ids.min())}, {int(ids.max())}]")
        lengths = mask.sum(-1)
        too_long = (lengths > self.n_ctx).nonzero().flatten().tolist()
        if too_long:
            i = too_long[0]
            raise WorkbenchError(
                f"prompt {i} is {int(lengths[i])} tokens long; {self.name} has a context of {self.n_ctx} tokens"
            )
        return ids.to(self.device), mask.to(self.device)

    def to_str_tokens(self, prompt: str | Sequence[int] | torch.Tensor) -> list[str]:
        """The tokens of one prompt as strings (special tokens included, as the model sees them)."""
        if isinstance(prompt, str):
            ids = self.tokenizer(prompt)["input_ids"]
        else:
            ids = _id_row(0, prompt)
        return self.tokenizer.convert_ids_to_tokens(ids)

    def check_layer(self, layer: int) -> int:
        layer = integer("layer", layer)  # numpy ints pass; bools, floats and strings do not
        if not 0 <= layer < self.n_layers:
            raise WorkbenchError(f"layer {layer!r} is out of range: {self.name} has layers 0..{self.n_layers - 1}")
        return layer

    def check_head(self, head: int) -> int:
        head = integer("head", head)
        if not 0 <= head < self.n_heads:
            raise WorkbenchError(f"head {head!r} is out of range: {self.name} has heads 0..{self.n_heads - 1}")
        return head


def _is_int(value) -> bool:
    try:
        operator.index(value)
    except TypeError:
        return False
    return True


def _id_tensor(value, what: str) -> torch.Tensor:
    """An int64 tensor from an integer tensor or numpy array; floats and bools are refused."""
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in "iu":
            raise WorkbenchError(f"{what} must be integers; got a numpy array of {value.dtype} (never truncated)")
        return torch.from_numpy(value.astype(np.int64, copy=False))
    if value.dtype.is_floating_point or value.dtype.is_complex or value.dtype == torch.bool:
        raise WorkbenchError(f"{what} must be integers; got a tensor of {value.dtype} (never truncated)")
    return value.long()


def _id_row(i: int, row) -> list[int]:
    """One prompt's token ids as Python ints (Python or numpy integers; floats are refused)."""
    if isinstance(row, (torch.Tensor, np.ndarray)):
        values = _id_tensor(row, f"token ids of prompt {i}").flatten().tolist()
    elif isinstance(row, (list, tuple)):
        values = []
        for j, v in enumerate(row):
            if isinstance(v, bool) or not _is_int(v):
                raise WorkbenchError(f"token id at prompt {i}, position {j} must be an int; got {v!r} "
                                     f"({type(v).__name__}; never truncated)")
            values.append(operator.index(v))
    else:
        raise WorkbenchError(f"prompt {i} must be text or a list of token ids; got {type(row).__name__}")
    if not values:
        raise WorkbenchError("a token-id prompt is empty: expected at least one token")
    return values
