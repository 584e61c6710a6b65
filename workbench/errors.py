"""One exception type for every bad input the workbench rejects.

Messages name the value that was given and what was expected; the CLI prints them as one line
(no traceback). The class lives at the bottom layer (`kernels.errors`) so that `kernels` and
`probes` can raise it without importing `workbench`; this is the same class, re-exported.
"""

from kernels.errors import WorkbenchError

__all__ = ["WorkbenchError", "find_cause"]


def find_cause(exc: BaseException | None, kind: type[BaseException]) -> BaseException | None:
    """The first exception of type ``kind`` in ``exc``'s chain: ``exc`` itself, then what led to it
    (the ``cause`` that Ray's wrappers carry, ``__cause__``, ``__context__``); None when there is none."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, kind):
            return exc
        seen.add(id(exc))
        wrapped = getattr(exc, "cause", None)
        exc = wrapped if isinstance(wrapped, BaseException) else exc.__cause__ or exc.__context__
    return None
