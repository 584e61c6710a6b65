"""An inner progress bar for long analyses: it counts the forward passes of the running analysis.

Analyses are plain functions ``fn(model, prompts)``, so no analysis is edited for it: a forward
pre-hook on the model's two entry points (the TransformerLens bridge and the plain HF twin,
`workbench.models.ModelHandle`) ticks a tqdm bar, and every hook is removed on exit.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Iterator

from tqdm.auto import tqdm


@contextmanager
def forward_bar(model, desc: str, *, enable: bool | None = None, position: int = 1) -> Iterator[tqdm]:
    """A tqdm bar (no total: analyses do not say in advance) ticking once per forward of ``model``
    inside the block; closed and unhooked on exit, also when the analysis raises. By default
    (``enable=None``) the bar shows only on a terminal: in a notebook or a log every tick would
    be a line of its own."""
    show = sys.stderr.isatty() if enable is None else enable
    bar = tqdm(desc=f"  {desc}", unit="forward", leave=False, position=position, disable=not show, mininterval=0.5)
    handles = []

    def tick(module, args):  # a pre-hook that returns something would replace the inputs
        bar.update(1)

    try:
        for module in (getattr(model, "bridge", None), getattr(model, "hf_model", None)):
            if module is not None and hasattr(module, "register_forward_pre_hook"):
                handles.append(module.register_forward_pre_hook(tick))
        yield bar
    finally:
        for handle in handles:
            handle.remove()
        bar.close()
