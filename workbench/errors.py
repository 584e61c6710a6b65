"""One exception type for every bad input the workbench rejects.

Messages name the value that was given and what was expected; the CLI prints them as one line
(no traceback).
"""


class WorkbenchError(ValueError):
    """A bad input or a state the workbench cannot work with (message says what and why)."""
