"""Where the workbench keeps what it builds once per machine (the dequantized SmolLM2 weights,
the compiled native statistics loop): one root, in `kernels` because `kernels` imports nothing
from `workbench`."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """``$WORKBENCH_CACHE``, else ``$XDG_CACHE_HOME/attention-workbench``, else ``~/.cache/attention-workbench``."""
    if os.environ.get("WORKBENCH_CACHE"):
        return Path(os.environ["WORKBENCH_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "attention-workbench"
