"""Constants and the interpreter shim shared by the head_stats Triton kernels (imported first)."""

from __future__ import annotations

import os

LOG2E = 1.4426950408889634
LN2 = 0.6931471805599453
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"  # as @triton.jit saw it below


def _rewrap_language_for_interpreter() -> None:
    """Make triton.language's own jit helpers (tl.sum, tl.zeros, ...) interpretable.

    @triton.jit reads TRITON_INTERPRET when it decorates; if triton was imported before the
    variable was set (transformers imports it, for one), those helpers are compiled-mode
    JITFunctions that the interpreter cannot call ("Cannot call @triton.jit'd outside of the
    scope of a kernel"). Only runs in interpreter mode, where nothing is compiled anyway.
    """
    import sys

    from triton.runtime.interpreter import InterpretedFunction
    from triton.runtime.jit import JITFunction

    for name, mod in list(sys.modules.items()):
        if name.startswith("triton.language") and mod is not None:
            for attr, obj in list(vars(mod).items()):
                if type(obj) is JITFunction:
                    setattr(mod, attr, InterpretedFunction(obj.fn))


if INTERPRET:
    _rewrap_language_for_interpreter()
