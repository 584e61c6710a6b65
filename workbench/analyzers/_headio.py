"""Per-head outputs of the plain HF model (``ModelHandle.hf_model``): read, replace, differentiate.

Every supported architecture concatenates its heads' outputs ``z`` (TransformerLens
``hook_z``, ``[batch, pos, head, d_head]`` flattened to ``[batch, pos, head * d_head]``) right
before one output projection per layer: Llama ``self_attn.o_proj``, GPT-2 ``attn.c_proj``,
BERT ``attention.output.dense``. A forward pre-hook on that module sees and may replace ``z``.
Hooks live on ``hf_model`` (generation, accuracy, gradients), not on the bridge.
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from typing import Callable, Iterator

import torch

from workbench.errors import WorkbenchError

# module-name suffixes of the per-layer attention output projection, after "<layer index>."
_OUT_PROJ = re.compile(r"(?:^|\.)(\d+)\.(?:self_attn\.o_proj|attn\.c_proj|attention\.output\.dense|"
                       r"self_attn\.out_proj|attn\.out_proj|attention\.dense)$")

#: ``edit(layer, z) -> z or None`` with ``z [batch, pos, head, d_head]``; None keeps z.
Edit = Callable[[int, torch.Tensor], "torch.Tensor | None"]


def out_projections(model) -> dict[int, torch.nn.Module]:
    """``{layer: the module whose input is that layer's concatenated head outputs}``."""
    found: dict[int, torch.nn.Module] = {}
    for name, module in model.hf_model.named_modules():
        match = _OUT_PROJ.search(name)
        if match:
            found.setdefault(int(match.group(1)), module)
    if sorted(found) != list(range(model.n_layers)):
        raise WorkbenchError(
            f"cannot find one attention output projection per layer in {model.name} "
            f"(found layers {sorted(found)} of {model.n_layers}); supported: Llama o_proj, GPT-2 "
            "attn.c_proj, BERT attention.output.dense"
        )
    return found


@contextmanager
def edit_heads(model, edit: Edit) -> Iterator[None]:
    """Run ``hf_model`` forwards inside the block with ``edit`` applied to every layer's ``z``.

    Hooks are removed on exit, also when the forward raises.
    """
    heads, d_head = model.n_heads, model.d_head

    def make_hook(layer: int):
        def hook(module, args):
            flat = args[0]  # (batch, pos, head * d_head)
            z = flat.view(*flat.shape[:-1], heads, d_head)  # (batch, pos, head, d_head)
            new = edit(layer, z)
            if new is None:
                return None
            return (new.reshape(flat.shape), *args[1:])
        return hook

    handles = []
    try:
        for layer, module in out_projections(model).items():
            handles.append(module.register_forward_pre_hook(make_hook(layer)))
        yield
    finally:
        for handle in handles:
            handle.remove()


def check_heads(model, heads) -> list[tuple[int, int]]:
    """Validate ``heads`` (pairs ``(layer, head)``, or a frame with ``layer, head`` and optionally
    a boolean selection column) and return them as sorted unique int pairs."""
    import pandas as pd

    if isinstance(heads, pd.DataFrame):
        missing = {"layer", "head"} - set(heads.columns)
        if missing:
            raise WorkbenchError(f"a head frame needs columns 'layer' and 'head'; it has {list(heads.columns)}")
        for flag in ("in_circuit", "is_retrieval"):
            if flag in heads.columns:
                heads = heads[heads[flag].astype(bool)]
                break
        heads = list(zip(heads["layer"].astype(int), heads["head"].astype(int)))
    pairs = []
    for item in heads:
        try:
            layer, head = (int(v) for v in item)
        except (TypeError, ValueError):
            raise WorkbenchError(f"a head must be a (layer, head) pair of ints; got {item!r}") from None
        model.check_layer(layer)
        model.check_head(head)
        pairs.append((layer, head))
    return sorted(set(pairs))
