"""Exact capture: record activations at TransformerLens hook names on a bridge.

Hooks are added inside a context manager and removed in ``finally``, so a forward that raises
leaves the model exactly as it was (the TransformerLens / Captum habit).
"""

from __future__ import annotations

import fnmatch
from contextlib import contextmanager
from typing import Callable, Iterable, Iterator, Mapping

import torch

from kernels.errors import WorkbenchError

NameFilter = str | Iterable[str] | Callable[[str], bool]


def hook_names(bridge, names: NameFilter) -> list[str]:
    """Resolve a name filter (exact names, glob patterns like ``blocks.*.attn.hook_pattern``,
    or a predicate) to the bridge's hook names, in the bridge's registration order.

    Raises:
        WorkbenchError: a name or pattern that matches no hook point.
    """
    available = list(bridge.hook_dict.keys())
    if callable(names):
        return [n for n in available if names(n)]
    patterns = [names] if isinstance(names, str) else list(names)
    chosen: list[str] = []
    for pattern in patterns:
        hits = [n for n in available if fnmatch.fnmatchcase(n, pattern)]
        if not hits:
            example = ", ".join(available[:3])
            raise WorkbenchError(f"hook name {pattern!r} matches no hook point; expected names like {example}")
        chosen.extend(h for h in hits if h not in chosen)
    order = {n: i for i, n in enumerate(available)}
    return sorted(chosen, key=order.__getitem__)


@contextmanager
def record(bridge, names: NameFilter, *, detach: bool = True, to_cpu: bool = False) -> Iterator[dict[str, torch.Tensor]]:
    """Record the activations at the given hook names during forwards run inside the block.

    Args:
        bridge: a TransformerLens ``TransformerBridge`` (``ModelHandle.bridge``).
        names: exact hook names, glob patterns, or a predicate on names.
        detach: store detached tensors (no autograd graph kept alive).
        to_cpu: move stored tensors to the CPU.
    Yields:
        A dict filled during the forward: hook name -> activation (the last forward wins).

    Example:
        >>> with record(model.bridge, "blocks.*.attn.hook_pattern") as store:
        ...     model.bridge(tokens)
        >>> store["blocks.0.attn.hook_pattern"].shape  # (batch, head, query, key)
    """
    store: dict[str, torch.Tensor] = {}

    def make_hook(name: str):
        def hook(activation, hook=None):  # noqa: ARG001 - TransformerLens passes the hook point
            value = activation.detach() if detach else activation
            store[name] = value.cpu() if to_cpu else value
            return activation

        return hook

    with attach(bridge, {name: make_hook(name) for name in hook_names(bridge, names)}):
        yield store


@contextmanager
def attach(bridge=None, hooks: Mapping[str, Callable] | None = None, *,
           pre_hooks: Iterable[tuple[torch.nn.Module, Callable]] = (),
           post_hooks: Iterable[tuple[torch.nn.Module, Callable]] = ()) -> Iterator[None]:
    """The one way the workbench attaches hooks: all are removed on exit, also when the forward
    (or attaching a later hook) raises.

    Args:
        bridge: a ``TransformerBridge`` for ``hooks``.
        hooks: ``{hook name: fn(activation, hook=None) -> activation | None}`` on the bridge's
            hook points (exact names; see `hook_names` for patterns).
        pre_hooks: ``(module, fn(module, args) -> args | None)`` torch forward pre-hooks, for
            plain Hugging Face modules.
        post_hooks: ``(module, fn(module, args, output) -> output | None)`` torch forward hooks
            (replace or record a module's output).
    Raises:
        WorkbenchError: a hook name that is not a hook point of the bridge.
    """
    added: list[tuple[object, object]] = []
    handles: list[torch.utils.hooks.RemovableHandle] = []
    try:
        for name, fn in (hooks or {}).items():
            if bridge is None or name not in bridge.hook_dict:
                raise WorkbenchError(f"hook name {name!r} is not a hook point of this bridge")
            point = bridge.hook_dict[name]
            added.append((point, point.add_hook(fn)))
        for module, fn in pre_hooks:
            handles.append(module.register_forward_pre_hook(fn))
        for module, fn in post_hooks:
            handles.append(module.register_forward_hook(fn))
        yield
    finally:
        for point, handle in added:
            handle.hook.remove()
            point.fwd_hooks = [h for h in point.fwd_hooks if h is not handle]
        for handle in handles:
            handle.remove()


def active_hook_count(bridge) -> int:
    """How many forward hooks are attached to the bridge's hook points (0 on a clean model)."""
    return sum(len(point.fwd_hooks) for point in bridge.hook_dict.values())
