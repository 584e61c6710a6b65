"""The one exception type for bad input, defined at the bottom layer.

`kernels` and `probes` raise it without importing anything above them; `workbench.errors`
re-exports this very class as `WorkbenchError`, so ``except wb.WorkbenchError`` catches kernel and
capture errors too. Messages name the value that was given and what was expected; the CLI prints
them as one line (no traceback).
"""


class WorkbenchError(ValueError):
    """A bad input or a state the workbench cannot work with (message says what and why)."""
