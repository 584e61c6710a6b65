"""Run loading and caching for the Dash app.

A served folder (the *root*) is one run or a folder of runs. Pages name a run by its id, the
run's path relative to the root as it appears in the URL (``?run=demo``; ``.`` is the root
itself). `resolve_run` turns an id into a path and refuses anything outside the root, so a URL
cannot read other directories. Tables, and the figures made from them, are kept in LRU caches
keyed by (run path, table, file mtime and size), so a re-analysed table is read again. The only
other state is three more small LRU caches for what is computed on demand: loaded models,
single-head attention patterns and token attributions of typed prompts.
"""

from __future__ import annotations

import threading
from functools import lru_cache
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd

from workbench.checks import integer
from workbench.errors import WorkbenchError
from workbench.run import Run, prompts_hash

#: Key of the served root in the Flask config of the app (set by `dashboards.app.create_app`).
ROOT_KEY = "WORKBENCH_ROOT"
#: Model sources the app may load to compute patterns on demand (plus existing directories).
NAMED_SOURCES = ("demo", "minilm")
#: Longest run id accepted from an address, and longest folder name in it (bytes; most file systems' limit).
MAX_RUN_ID, MAX_NAME = 1000, 255


def served_root() -> Path:
    """The folder the running app serves (read from the current Flask app's config)."""
    from flask import current_app

    return Path(current_app.config[ROOT_KEY])


def check_root(path: str | Path) -> Path:
    """Resolve a folder to serve and check it holds at least one run.

    Raises:
        WorkbenchError: the path does not exist, is not a directory, or holds no run.
    """
    root = Path(path).expanduser()
    if not root.exists():
        raise WorkbenchError(f"{str(path)!r} does not exist: expected a run directory or a folder of runs")
    if not root.is_dir():
        raise WorkbenchError(f"{str(path)!r} is a file: expected a run directory or a folder of runs")
    root = root.resolve()
    if not run_ids(root):
        raise WorkbenchError(
            f"{str(path)!r} holds no run (no manifest.json in it or in its sub-folders): "
            "make one with `workbench analyze --out DIR`"
        )
    return root


def run_ids(root: str | Path) -> list[str]:
    """Ids of the runs under ``root``: ``["."]`` when root is a run, else its sub-folders (two
    levels deep, not leaving root through a symlink) that hold a ``manifest.json``, as POSIX
    paths relative to root, sorted."""
    root = Path(root)
    if (root / "manifest.json").is_file():
        return ["."]
    base = root.resolve()
    found = {p.parent.relative_to(root).as_posix() for pattern in ("*/manifest.json", "*/*/manifest.json")
             for p in root.glob(pattern) if base in p.parent.resolve().parents}  # no symlinks out
    return sorted(found)


def run_or_default(root: str | Path, run_id: str | None) -> str | None:
    """``run_id``, or the first run of root when the address names none."""
    if run_id not in (None, ""):
        return run_id
    ids = run_ids(root)
    return ids[0] if ids else None


def resolve_run(root: str | Path, run_id: str | None) -> Path:
    """The directory of run ``run_id``, which must lie inside ``root`` (symlinks resolved).

    Args:
        root: the served folder.
        run_id: a path relative to root from the URL; None or "" means the first run.
    Raises:
        WorkbenchError: an absolute path, a path that leaves root (``..``, a symlink out), or a
            malformed id. The message never shows the outside path it was asked for.
    """
    base = Path(root).resolve()
    run_id = run_or_default(base, run_id) or "."
    if (not isinstance(run_id, str) or "\x00" in run_id or len(run_id) > MAX_RUN_ID
            or any(len(part.encode()) > MAX_NAME for part in run_id.split("/"))):
        shown = f" {_short(run_id)!r}" if isinstance(run_id, str) else ""
        raise WorkbenchError(f"the run id{shown} in the address is malformed (at most {MAX_RUN_ID} characters, "
                             f"{MAX_NAME} bytes a folder name): pick a run from the list")
    if run_id.startswith(("/", "\\", "~")) or Path(run_id).is_absolute():
        raise WorkbenchError(f"run id {_short(run_id)!r} is an absolute path: expected a run inside the served folder")
    try:
        path = (base / run_id).resolve()
    except (OSError, RuntimeError):  # a symlink loop, a name the file system refuses
        raise WorkbenchError(f"run id {_short(run_id)!r} cannot be resolved: pick a run from the list") from None
    if path != base and base not in path.parents:
        raise WorkbenchError(f"run id {_short(run_id)!r} points outside the served folder: pick a run from the list")
    return path


def _short(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[:limit] + "…"


def head_index(name: str, value) -> int:
    """A layer or head index from a callback input or the address (an int, or digits as text).

    Raises:
        WorkbenchError: anything else (a forged ``layer="abc"``, a negative number, a float).
    """
    if isinstance(value, str) and value.strip().isdigit() and len(value.strip()) <= 6:
        value = int(value)
    if isinstance(value, str):
        raise WorkbenchError(f"{name} {_short(value)!r} is not a {name} index: expected an int >= 0")
    return integer(name, value, low=0)


def open_run(root: str | Path, run_id: str | None) -> Run:
    """Open run ``run_id`` of ``root`` (see `resolve_run`); WorkbenchError if missing or damaged."""
    path = resolve_run(root, run_id)
    try:
        exists = path.exists()
    except OSError:  # e.g. a name longer than the file system allows
        exists = False
    if not exists:
        raise WorkbenchError(f"there is no run {_short(str(run_id))!r} in the served folder: pick a run from the list")
    return Run.open(path)


def _stamp(run: Run, name: str) -> tuple[int, int]:
    """(mtime, size) of a table's file: part of every cache key, so a rewritten table is re-read."""
    entry = run.manifest["tables"].get(name)
    if entry is None:
        run.table(name)  # raises the run store's "has no table" error
    try:
        stat = (run.path / str(entry.get("file", ""))).stat()
        return stat.st_mtime_ns, stat.st_size
    except OSError:
        return 0, 0  # missing file: Run.table raises its message


def table(run: Run, name: str) -> pd.DataFrame:
    """Table ``name`` of ``run`` (a copy of the cached frame; WorkbenchError if missing or damaged)."""
    return _cached_table(str(run.path), name, _stamp(run, name)).copy()


def figures(run: Run, name: str) -> tuple:
    """The figures of table ``name``: its analyzer's ``make_figures`` (default grids when the name
    is not registered), cached like the table. The figures are shared: do not modify them."""
    return _cached_figures(str(run.path), name, _stamp(run, name))


@lru_cache(maxsize=64)
def _cached_table(path: str, name: str, stamp: tuple[int, int]) -> pd.DataFrame:
    return Run.open(path).table(name)


@lru_cache(maxsize=64)
def _cached_figures(path: str, name: str, stamp: tuple[int, int]) -> tuple:
    from workbench.analyzers import ANALYZERS
    from workbench.figures import default_figures

    frame = _cached_table(path, name, stamp).copy()
    analyzer = ANALYZERS.get(name)
    return tuple(analyzer.make_figures(frame) if analyzer else default_figures(frame))


def warm(root: str | Path) -> None:
    """Read the first run's tables and make their figures now, so first page visits are quick.
    Problems are left for the pages to report."""
    try:
        run = open_run(root, None)
    except WorkbenchError:
        return
    for name in run.tables:
        try:
            figures(run, name)
        except Exception:  # noqa: BLE001 - the page that shows this table says what is wrong
            continue


def per_head(frame: pd.DataFrame) -> pd.DataFrame | None:
    """The per-head rows of a table, or None for tables that are not per head.

    Token-level tables (with ``position``) are not per head; ``view`` tables keep ``view ==
    "head"``; rows with layer or head ``-1`` (layer means, all-head means) are dropped.
    """
    if not {"layer", "head"} <= set(frame.columns) or "position" in frame.columns:
        return None
    if "view" in frame.columns:
        frame = frame[frame["view"] == "head"]
    frame = frame[(frame["layer"] >= 0) & (frame["head"] >= 0)]
    return frame if len(frame) else None


def head_groups(frame: pd.DataFrame) -> list[tuple[dict, pd.DataFrame]]:
    """Split a per-head frame into parts with one row per head: by the text columns that vary
    within a head (e.g. ``task`` and ``method`` of the circuits table). Returns
    ``[(where, part)]`` with ``where`` the column values of the part (``{}`` when unsplit)."""
    if not frame.duplicated(["layer", "head"]).any():
        return [({}, frame)]
    per = frame.groupby(["layer", "head"])
    cols = [c for c in frame.columns if c not in ("layer", "head")
            and not pd.api.types.is_numeric_dtype(frame[c]) and not pd.api.types.is_bool_dtype(frame[c])
            and per[c].nunique().max() > 1]
    if not cols:
        return [({}, frame)]
    return [({c: str(v) for c, v in zip(cols, key)}, part) for key, part in frame.groupby(cols, sort=False)]


# -- on demand: models and patterns ----------------------------------------------------------
def model_source(run: Run) -> str | None:
    """The run's model source if this machine can load it ("demo", "minilm" or an existing
    Hugging Face directory), else None."""
    source = (run.manifest.get("model") or {}).get("source")
    if not isinstance(source, str):
        return None
    if source in NAMED_SOURCES or Path(source).expanduser().is_dir():
        return source
    return None


def run_model_source(root: str | Path, run_id: str | None) -> str:
    """The loadable model source of run ``run_id``, found on the server from the run's manifest
    (a source sent by the browser is never trusted: it could name any directory)."""
    source = model_source(open_run(root, run_id))
    if source is None:
        raise WorkbenchError("this run's model cannot be loaded on this machine (expected demo, minilm "
                             "or an existing directory as its source)")
    return source


@lru_cache(maxsize=2)
def _loaded(source: str):
    import workbench as wb

    return wb.load_model(source), threading.Lock()  # the lock: hooks on one bridge, one capture at a time


def run_prompts(run: Run) -> list[str]:
    """The run's prompts when they can be recovered: the default prompt set for its model source
    whose hash equals the manifest's ``prompts_hash``; else an empty list."""
    from workbench.prompts import load_prompts

    source = model_source(run)
    if source is None:
        return []
    try:
        prompts = load_prompts(None, model=SimpleNamespace(source=source))
    except WorkbenchError:
        return []
    return prompts if prompts_hash(prompts) == run.manifest.get("prompts_hash") else []


@lru_cache(maxsize=4)  # at most 4 patterns of up to n_ctx² floats (64 MB each at 4096 tokens)
def head_pattern(source: str, prompt: str, layer: int, head: int) -> tuple[np.ndarray, tuple[str, ...]]:
    """The attention pattern of one head on one prompt, computed with the model from ``source``.

    Returns:
        ``(pattern [query, key] float32, tokens)``: exact, from ``blocks.{layer}.attn.hook_pattern``
        via `workbench.capture_patterns`; the full matrix stays on the server (only windows or
        block means of it are sent to the browser).
    Raises:
        WorkbenchError: the model cannot be loaded, the prompt is empty or too long, layer or
            head out of range.
    """
    import workbench as wb

    if not isinstance(prompt, str) or not prompt.strip():
        raise WorkbenchError("the prompt is empty: type some text first")
    layer, head = head_index("layer", layer), head_index("head", head)
    model, lock = _loaded(source)
    model.check_layer(layer)
    model.check_head(head)
    with lock:
        patterns = wb.capture_patterns(model, [prompt], layers=[layer])
        tokens = tuple(model.to_str_tokens(prompt))
    pattern = patterns[layer][0, head].numpy()  # (query, key)
    return pattern[: len(tokens), : len(tokens)], tokens


@lru_cache(maxsize=4)
def token_attributions(source: str, prompt: str) -> pd.DataFrame:
    """Captum token attributions (integrated gradients) and attention of one prompt, computed with
    the model from ``source`` by `workbench.token_attributions` (frame as that function returns)."""
    import workbench as wb

    if not isinstance(prompt, str) or not prompt.strip():
        raise WorkbenchError("the prompt is empty: type some text first")
    model, lock = _loaded(source)
    with lock:
        return wb.token_attributions(model, prompt, "integrated_gradients")
