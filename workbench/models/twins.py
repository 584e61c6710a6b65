"""Twins: second HF model objects over the same parameter tensors, so the caller's model is never
changed (DESIGN.md "Models").

Booting a TransformerLens bridge rewires the modules of the model it wraps, and
``set_attn_implementation``, ``.eval()`` and ``.to()`` act on the object they are called on. So
the bridge boots on one twin and the handle keeps another; both are rebuilt from a copy of the
config on the meta device and then given the original's tensors (no memory copied). A model
dispatched by Accelerate (``hf_device_map``) keeps its placement: each twin gets copies of the
dispatch hooks, which read the same offloaded weights.
"""

from __future__ import annotations

import copy

import torch


def twin(model: torch.nn.Module, *, new_parameters: bool = False) -> torch.nn.Module:
    """A model of the same class and config whose modules hold ``model``'s tensors.

    Args:
        model: a ``transformers`` model.
        new_parameters: give the twin its own ``Parameter`` objects (over the same storage), so
            that ``.to()`` on the twin, or gradients through it, leave ``model``'s untouched.
            Otherwise the twin shares ``model``'s ``Parameter`` objects (tied weights stay tied).
    Returns:
        The twin, in eval mode; ``model`` itself is not modified.
    """
    try:
        with torch.device("meta"):
            new = type(model)(copy.deepcopy(model.config))
        _assign(model, new, new_parameters)
    except (TypeError, AttributeError, KeyError, RuntimeError):
        # A model not rebuildable from its config (custom wrappers, edited modules): a deep copy
        # costs memory but is exact and leaves the original alone.
        new = copy.deepcopy(model)
    if hasattr(model, "generation_config"):
        new.generation_config = copy.deepcopy(model.generation_config)
    device_map = getattr(model, "hf_device_map", None)
    if device_map:
        _copy_dispatch(model, new)
        new.hf_device_map = dict(device_map)
    return new.eval()


def _assign(model, new, new_parameters: bool) -> None:
    """Put every parameter and buffer of ``model`` into the same place of ``new``."""
    made: dict[int, torch.nn.Parameter] = {}  # one new Parameter per original one keeps ties
    for name, module in model.named_modules(remove_duplicate=False):
        target = new.get_submodule(name)
        if type(target) is not type(module):
            raise TypeError(f"module {name!r} is {type(module).__name__} in the model, {type(target).__name__} rebuilt")
        for key, param in module._parameters.items():
            if param is not None and new_parameters:
                if id(param) not in made:
                    made[id(param)] = torch.nn.Parameter(param.data, requires_grad=param.requires_grad)
                param = made[id(param)]
            target._parameters[key] = param
        for key, buffer in module._buffers.items():
            target._buffers[key] = buffer
    left = [n for n, t in [*new.named_parameters(), *new.named_buffers()] if t.is_meta and not _is_meta_in(model, n)]
    if left:
        raise RuntimeError(f"twin left tensors unassigned: {left[:3]}")


def _is_meta_in(model, name: str) -> bool:
    owner, _, attr = name.rpartition(".")
    return getattr(model.get_submodule(owner), attr).is_meta


def _copy_dispatch(model, new) -> None:
    """Give ``new`` copies of Accelerate's hooks on ``model`` (same weights map, own state)."""
    from accelerate.hooks import add_hook_to_module

    for name, module in model.named_modules():
        hook = getattr(module, "_hf_hook", None)
        if hook is not None:
            add_hook_to_module(new.get_submodule(name), _clone_hook(hook))


def _clone_hook(hook):
    from accelerate.hooks import SequentialHook

    if isinstance(hook, SequentialHook):
        return SequentialHook(*[_clone_hook(h) for h in hook.hooks])
    clone = copy.copy(hook)
    for key, value in vars(hook).items():  # per-forward bookkeeping must not be shared
        if key not in ("weights_map", "tied_params_map") and isinstance(value, (dict, set, list)):
            setattr(clone, key, copy.copy(value))
    return clone


def place(model, *, device: torch.device | None, dtype: torch.dtype | None):
    """Move or cast a twin (only tensors whose device or dtype changes are copied)."""
    if dtype is not None and any(p.dtype != dtype for p in model.parameters() if p.is_floating_point()):
        model = model.to(dtype)
    if device is not None and any(p.device != device for p in model.parameters()):
        model = model.to(device)
    return model


def dispatch(model, placement: dict):
    """Spread an in-memory twin over devices and disk with Accelerate (``device_map`` etc.)."""
    from accelerate import dispatch_model, infer_auto_device_map

    from workbench.errors import WorkbenchError

    device_map = placement["device_map"]
    if isinstance(device_map, str):
        device_map = infer_auto_device_map(model, max_memory=placement.get("max_memory"),
                                           no_split_module_classes=getattr(model, "_no_split_modules", None))
    if "disk" in device_map.values() and not placement.get("offload_folder"):
        raise WorkbenchError("device_map puts modules of an in-memory model on 'disk': give offload_folder= "
                             "(a directory for their weights)")
    try:
        dispatch_model(model, device_map=device_map, offload_dir=placement.get("offload_folder"))
    except (ValueError, KeyError, RuntimeError) as exc:
        raise WorkbenchError(f"Accelerate cannot place the model with device_map={device_map!r}: "
                             f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from exc
    model.hf_device_map = dict(device_map)
    return model
