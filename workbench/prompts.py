"""Prompt sets: user files (.jsonl with a ``prompt`` field, or .txt one prompt a line) and the
bundled defaults (the demo's suites for the demo model, a small English set otherwise)."""

from __future__ import annotations

import json
from pathlib import Path

from workbench.errors import WorkbenchError
from workbench.models import data_dir

#: Suites whose first prompts make the demo model's default prompt set.
DEMO_DEFAULT = (("ioi", 8), ("colored_objects", 8), ("passkey", 4))


def read_jsonl(path: str | Path, required: tuple[str, ...] = ("prompt",)) -> list[dict]:
    """Read a JSONL file of objects, checking that each has the ``required`` fields.

    Raises:
        WorkbenchError: missing file, a line that is not a JSON object, a missing field.
    """
    path = Path(path)
    if not path.is_file():
        raise WorkbenchError(f"prompt file {str(path)!r} does not exist")
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise WorkbenchError(f"{path.name} line {number} is not JSON ({exc.msg})") from None
        if not isinstance(row, dict):
            raise WorkbenchError(f"{path.name} line {number} is not a JSON object with a 'prompt' field")
        missing = [f for f in required if f not in row]
        if missing:
            raise WorkbenchError(f"{path.name} line {number} lacks field(s) {missing}; expected {list(required)}")
        rows.append(row)
    if not rows:
        raise WorkbenchError(f"prompt file {str(path)!r} holds no prompts")
    return rows


def load_prompts(path: str | Path | None = None, *, model=None) -> list[str]:
    """Prompts from a file, or the defaults for ``model`` when ``path`` is None."""
    if path is not None:
        path = Path(path)
        if path.suffix == ".jsonl":
            return [str(r["prompt"]) for r in read_jsonl(path)]
        if not path.is_file():
            raise WorkbenchError(f"prompt file {str(path)!r} does not exist")
        lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
        if not lines:
            raise WorkbenchError(f"prompt file {str(path)!r} holds no prompts")
        return lines
    if model is not None and getattr(model, "source", None) == "demo":
        prompts = []
        for suite, n in DEMO_DEFAULT:
            prompts += [r["prompt"] for r in read_jsonl(data_dir() / "suites" / f"{suite}.jsonl")[:n]]
        return prompts
    return load_prompts(data_dir() / "prompts" / "english.txt")
