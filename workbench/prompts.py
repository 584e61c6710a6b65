"""Prompt sets: user files and the bundled defaults (the demo's suites for the demo model, a
small English set otherwise).

Files are read as a stream of lines, at most `MAX_BYTES` (64 MiB), and must be UTF-8 (a UTF-8
byte-order mark is allowed):

- ``.jsonl``: one JSON object a line with a string ``prompt`` field;
- ``.json``: one JSON array of strings, or of objects with a string ``prompt`` field;
- anything else (``.txt``): one prompt a line; blank lines are skipped.

Every problem is one `WorkbenchError` naming the file, the line (or array item) and what was
expected: a file past the size limit, bytes that are not UTF-8 (Latin-1, UTF-16), a prompt that
is null, a number, a list or empty.
"""

from __future__ import annotations

import codecs
import json
import os
from pathlib import Path
from typing import Iterator

from workbench.checks import positive_int
from workbench.errors import WorkbenchError
from workbench.models import data_dir

#: Suites whose first prompts make the demo model's default prompt set.
DEMO_DEFAULT = (("ioi", 8), ("colored_objects", 8), ("passkey", 4))
#: The largest prompt file read (bytes); ``max_bytes=`` raises it.
MAX_BYTES = 64 * 2**20
#: Fields that hold text wherever they appear in a suite or prompt file.
TEXT_FIELDS = ("prompt", "answer", "corrupted_prompt", "corrupted_answer")
_JSON_TYPES = {type(None): "null", bool: "a boolean", int: "a number", float: "a number", list: "a list",
               dict: "an object"}


def _check_file(path: Path, max_bytes: int) -> None:
    positive_int("max_bytes", max_bytes)
    try:
        if not path.exists():
            raise WorkbenchError(f"prompt file {str(path)!r} does not exist")
        if path.is_dir():
            raise WorkbenchError(f"prompt file {str(path)!r} is a directory: expected a .jsonl, .json or .txt file")
        size = path.stat().st_size
    except OSError as exc:
        raise WorkbenchError(f"prompt file {str(path)!r} cannot be read: {exc.strerror or exc}") from None
    if path.is_file() and size > max_bytes:
        raise WorkbenchError(_too_large(path, max_bytes, f"it has {size / 2**20:.1f} MiB"))


def _too_large(path: Path, max_bytes: int, detail: str) -> str:
    return (f"prompt file {str(path)!r} is larger than the limit of {max_bytes / 2**20:.0f} MiB ({detail}): "
            "split it into several runs, or pass max_bytes= to wb.load_prompts")


def _lines(path: Path, max_bytes: int = MAX_BYTES) -> Iterator[tuple[int, str]]:
    """``(line number, text)`` of a UTF-8 file, read as a stream of at most ``max_bytes``."""
    _check_file(path, max_bytes)
    total = 0
    try:
        handle = open(path, "rb")
    except OSError as exc:
        raise WorkbenchError(f"prompt file {str(path)!r} cannot be read: {exc.strerror or exc}") from None
    with handle:
        for number in range(1, 1 << 62):
            raw = handle.readline(max_bytes - total + 1)  # never more than the budget in memory
            if not raw:
                return
            total += len(raw)
            if total > max_bytes:
                raise WorkbenchError(_too_large(path, max_bytes, f"passed at line {number}"))
            if number == 1:
                for bom, name in ((codecs.BOM_UTF32_LE, "UTF-32"), (codecs.BOM_UTF32_BE, "UTF-32"),
                                  (codecs.BOM_UTF16_LE, "UTF-16"), (codecs.BOM_UTF16_BE, "UTF-16")):
                    if raw.startswith(bom):
                        raise WorkbenchError(f"prompt file {str(path)!r} is {name} (it starts with a {name} "
                                             "byte-order mark): save it as UTF-8")
                raw = raw.removeprefix(codecs.BOM_UTF8)
            if b"\x00" in raw:
                column = raw.index(b"\x00") + 1
                raise WorkbenchError(f"{path.name} line {number} holds NUL bytes (column {column}): the file looks "
                                     "like UTF-16 or binary; save it as UTF-8 text")
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                column = len(raw[:exc.start].decode("utf-8", "replace")) + 1
                raise WorkbenchError(
                    f"{path.name} line {number} is not UTF-8: byte 0x{raw[exc.start]:02x} at column {column} "
                    f"({exc.reason}); the file may be Latin-1 or Windows-1252: save it as UTF-8") from None
            yield number, text.rstrip("\r\n")


def _kind(value) -> str:
    return _JSON_TYPES.get(type(value), type(value).__name__)


def _check_row(row, where: str, required: tuple[str, ...]) -> dict:
    """A row of a suite or prompt file: an object with ``required`` fields, text fields as text."""
    if not isinstance(row, dict):
        raise WorkbenchError(f"{where} is {_kind(row)}: expected a JSON object with field(s) {list(required)}")
    missing = [f for f in required if f not in row]
    if missing:
        raise WorkbenchError(f"{where} lacks field(s) {missing}; expected {list(required)}")
    for field in TEXT_FIELDS:
        if field in row and not isinstance(row[field], str):
            shown = "" if row[field] is None else f" ({json.dumps(row[field])[:40]})"
            raise WorkbenchError(f"{where}: field {field!r} is {_kind(row[field])}{shown}: expected a string")
        if field.endswith("prompt") and field in row and not row[field].strip():
            raise WorkbenchError(f"{where}: field {field!r} is empty: expected non-empty text")
    return row


def read_jsonl(path: str | Path, required: tuple[str, ...] = ("prompt",), *, max_bytes: int = MAX_BYTES) -> list[dict]:
    """Read a JSONL file of objects (or a ``.json`` array of objects), checking that each has the
    ``required`` fields and that ``prompt``/``answer``/``corrupted_*`` fields are strings.

    Raises:
        WorkbenchError: missing or oversized file, bytes that are not UTF-8, a line that is not a
            JSON object, a missing field, a text field that is not text (each with its line).
    """
    path = Path(path)
    if path.suffix == ".json":
        return [_check_row(row, f"{path.name} item {i}", required) for i, row in enumerate(_json_array(path, max_bytes))]
    rows = []
    for number, line in _lines(path, max_bytes):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise WorkbenchError(f"{path.name} line {number} is not JSON ({exc.msg})") from None
        rows.append(_check_row(row, f"{path.name} line {number}", required))
    if not rows:
        raise WorkbenchError(f"prompt file {str(path)!r} holds no prompts")
    return rows


def _json_array(path: Path, max_bytes: int) -> list:
    text = "\n".join(line for _, line in _lines(path, max_bytes))
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise WorkbenchError(f"{path.name} line {exc.lineno} is not JSON ({exc.msg}); a .json prompt file holds "
                             "one array of strings or of objects with 'prompt'") from None
    if not isinstance(data, list):
        raise WorkbenchError(f"{path.name} holds {_kind(data)}: expected a JSON array of strings or of objects "
                             "with 'prompt' (one object a line: name the file .jsonl)")
    if not data:
        raise WorkbenchError(f"prompt file {str(path)!r} holds no prompts")
    return data


def _json_prompt(item, where: str) -> str:
    if isinstance(item, str):
        if not item.strip():
            raise WorkbenchError(f"{where} is an empty string: expected non-empty text")
        return item
    if not isinstance(item, dict):
        raise WorkbenchError(f"{where} is {_kind(item)}: expected a string or an object with a 'prompt' string")
    return _check_row(item, where, ("prompt",))["prompt"]


def load_prompts(path: str | Path | None = None, *, model=None, max_bytes: int = MAX_BYTES) -> list[str]:
    """Prompts from a file (see the module docstring), or the defaults for ``model`` when ``path``
    is None.

    Args:
        path: a ``.jsonl``, ``.json`` or text file, or None.
        model: picks the defaults: the demo's suites for the demo model, else a small English set.
        max_bytes: refuse files larger than this (default `MAX_BYTES`).
    Returns:
        The prompts, in file order.
    Raises:
        WorkbenchError: see the module docstring.
    """
    if path is not None:
        if not isinstance(path, (str, os.PathLike)):
            raise WorkbenchError(f"prompt file must be a path; got {type(path).__name__}")
        path = Path(path).expanduser()
        if path.suffix == ".jsonl":
            return [r["prompt"] for r in read_jsonl(path, max_bytes=max_bytes)]
        if path.suffix == ".json":
            return [_json_prompt(item, f"{path.name} item {i}") for i, item in enumerate(_json_array(path, max_bytes))]
        lines = [ln for _, ln in _lines(path, max_bytes) if ln.strip()]
        if not lines:
            raise WorkbenchError(f"prompt file {str(path)!r} holds no prompts")
        return lines
    if model is not None and getattr(model, "source", None) == "demo":
        prompts = []
        for suite, n in DEMO_DEFAULT:
            prompts += [r["prompt"] for r in read_jsonl(data_dir() / "suites" / f"{suite}.jsonl")[:n]]
        return prompts
    return load_prompts(data_dir() / "prompts" / "english.txt")


def answer_tokens(model, answer: str, what: str = "answer") -> list[int]:
    """Token ids of ``answer`` (no special tokens added), refusing text the tokenizer can only
    write as its unknown token: scoring ``<unk>`` would score a different answer.

    Raises:
        WorkbenchError: ``answer`` is not a string, or one of its tokens is the unknown token.
    """
    if not isinstance(answer, str):
        raise WorkbenchError(f"{what} must be text; got {answer!r} ({type(answer).__name__})")
    tok = model.tokenizer
    ids = tok(answer, add_special_tokens=False)["input_ids"]
    unk = getattr(tok, "unk_token_id", None)
    if unk is not None and unk in ids:
        raise WorkbenchError(f"{what} {answer!r} holds text outside {model.name}'s vocabulary: it tokenizes to the "
                             f"unknown token {tok.unk_token!r}, whose logit would be scored instead; expected an "
                             "answer the tokenizer can spell")
    return ids
