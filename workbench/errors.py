"""One exception type for every bad input the workbench rejects.

Messages name the value that was given and what was expected; the CLI prints them as one line
(no traceback). The class lives at the bottom layer (`kernels.errors`) so that `kernels` and
`probes` can raise it without importing `workbench`; this is the same class, re-exported.
"""

from kernels.errors import WorkbenchError

__all__ = ["WorkbenchError"]
