"""The loading options of `load_model`, checked before anything is read: device, dtype, and
Accelerate's placement (``device_map``, ``max_memory``, ``offload_folder``).

Every bad value ends in one `WorkbenchError` naming it and what is expected.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import torch

from workbench.errors import WorkbenchError

#: dtype names accepted as strings (``dtype="float16"``), besides ``torch.float16`` itself.
DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float64": torch.float64, "fp64": torch.float64, "double": torch.float64,
}

#: Accelerate's named placement strategies (``device_map="auto"``).
DEVICE_MAP_STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")

_MEMORY = re.compile(r"^\s*\d+(\.\d+)?\s*([KMGT]i?B)?\s*$", re.IGNORECASE)


def parse_dtype(dtype: Any) -> torch.dtype | None:
    """``None``/``"auto"`` (the weights' own dtype), a floating ``torch.dtype``, or one of `DTYPES`."""
    if dtype is None or (isinstance(dtype, str) and dtype.strip().lower() == "auto"):
        return None
    if isinstance(dtype, torch.dtype):
        if not dtype.is_floating_point:
            raise WorkbenchError(f"dtype {dtype} is not a floating-point dtype: expected one of "
                                 "torch.float32, torch.float16, torch.bfloat16, torch.float64")
        return dtype
    if isinstance(dtype, str):
        key = dtype.strip().lower().removeprefix("torch.")
        if key in DTYPES:
            return DTYPES[key]
    raise WorkbenchError(f"unknown dtype {dtype!r}: expected a torch.dtype or one of {sorted(DTYPES)} (or 'auto')")


def parse_device(device: Any, *, name: str = "device") -> torch.device | None:
    """``None`` (where the weights are: the CPU for loaded sources) or a device that exists here."""
    if device is None:
        return None
    if isinstance(device, bool) or not isinstance(device, (str, int, torch.device)):
        raise WorkbenchError(f"{name} must be a string like 'cpu' or 'cuda:0', or a torch.device; got {device!r}")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise WorkbenchError(f"{name} {device!r} is not a torch device: expected 'cpu', 'cuda', 'cuda:N' or 'mps'") from None
    if dev.type == "cpu":
        return dev
    if dev.type == "meta":
        raise WorkbenchError(f"{name} {device!r} holds no data: expected a real device such as 'cpu'")
    backend = getattr(torch, dev.type, None)
    available = bool(backend is not None and hasattr(backend, "is_available") and backend.is_available())
    if dev.type == "mps":
        available = torch.backends.mps.is_available()
    if not available:
        raise WorkbenchError(f"{name} {device!r} is not available: this torch ({torch.__version__}) sees no "
                             f"{dev.type} device; expected 'cpu'")
    count = backend.device_count() if hasattr(backend, "device_count") else 1
    if dev.index is not None and dev.index >= count:
        raise WorkbenchError(f"{name} {device!r} does not exist: there are {count} {dev.type} device(s) "
                             f"(indices 0..{count - 1})")
    return dev


def parse_placement(device_map: Any, max_memory: Any, offload_folder: Any, device: Any) -> dict:
    """Check Accelerate's placement options; returns the ``from_pretrained`` keywords (may be empty).

    Args:
        device_map: ``None``, one of `DEVICE_MAP_STRATEGIES`, or ``{module name: device}`` where a
            device is ``"cpu"``, ``"disk"``, a CUDA index or ``"cuda:N"``.
        max_memory: ``None`` or ``{device: bytes or "500MB"}``; needs ``device_map``.
        offload_folder: where ``"disk"`` modules' weights go (a directory; created if missing).
        device: must be ``None`` when ``device_map`` is given (they are exclusive).
    """
    if device_map is None:
        for label, value in (("max_memory", max_memory), ("offload_folder", offload_folder)):
            if value is not None:
                raise WorkbenchError(f"{label}= needs device_map= (e.g. device_map='auto'); got {label}={value!r} alone")
        return {}
    if device is not None:
        raise WorkbenchError(f"device={str(device)!r} and device_map= are exclusive: give one "
                             "(device_map places every module itself)")
    if isinstance(device_map, str):
        if device_map not in DEVICE_MAP_STRATEGIES:
            raise WorkbenchError(f"unknown device_map {device_map!r}: expected one of {list(DEVICE_MAP_STRATEGIES)} "
                                 "or a dict {module name: device}")
    elif isinstance(device_map, dict) and device_map:
        for module, where in device_map.items():
            if not isinstance(module, str):
                raise WorkbenchError(f"device_map keys must be module names (strings); got {module!r}")
            if where != "disk":
                parse_device(where, name=f"device_map[{module!r}]")
    else:
        raise WorkbenchError(f"device_map must be one of {list(DEVICE_MAP_STRATEGIES)} or a non-empty dict "
                             f"{{module name: device}}; got {device_map!r}")
    kwargs: dict[str, Any] = {"device_map": device_map}
    if max_memory is not None:
        if not isinstance(max_memory, dict) or not max_memory:
            raise WorkbenchError(f"max_memory must be a non-empty dict {{device: bytes or '500MB'}}; got {max_memory!r}")
        for where, amount in max_memory.items():
            if where != "disk":
                parse_device(where, name=f"max_memory key {where!r}")
            ok = (isinstance(amount, int) and not isinstance(amount, bool) and amount >= 0) or (
                isinstance(amount, str) and _MEMORY.match(amount))
            if not ok:
                raise WorkbenchError(f"max_memory[{where!r}] must be a number of bytes >= 0 or a size like '500MB'; "
                                     f"got {amount!r}")
        kwargs["max_memory"] = dict(max_memory)
    if offload_folder is not None:
        if not isinstance(offload_folder, (str, os.PathLike)) or not str(offload_folder):
            raise WorkbenchError(f"offload_folder must be a directory path; got {offload_folder!r}")
        folder = Path(offload_folder).expanduser()
        if folder.exists() and not folder.is_dir():
            raise WorkbenchError(f"offload_folder {str(folder)!r} is a file: expected a directory")
        folder.mkdir(parents=True, exist_ok=True)
        kwargs["offload_folder"] = str(folder)
    return kwargs
