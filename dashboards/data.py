"""Run loading and caching for the Dash app.

A served folder (the *root*) is one run or a folder of runs. Pages name a run by its id, the
run's path relative to the root as it appears in the URL (``?run=demo``; ``.`` is the root
itself). `resolve_run` turns an id into a path and refuses anything outside the root, so a URL
cannot read other directories. Tables, and the figures made from them, are kept in LRU caches
keyed by (run path, table, file mtime and size), so a re-analysed table is read again. What is
computed on demand with a model (the patterns of a layer on a typed prompt, token attributions)
runs in Dash background callbacks, in worker processes; their results go to the app's disk cache
(`diskcache`, set by `use_cache`), which every process shares, so the plain callbacks that draw
them read them back without a model. Loaded models are kept per process (a small LRU cache).
"""

from __future__ import annotations

import threading
from functools import lru_cache
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd

from workbench.analyzers.examples import SUPPORT  # tables with no per-head scores
from workbench.checks import integer
from workbench.errors import WorkbenchError
from workbench.run import Run, prompts_hash

#: Key of the served root in the Flask config of the app (set by `dashboards.app.create_app`).
ROOT_KEY = "WORKBENCH_ROOT"
#: Model sources the app may load to compute patterns on demand (plus existing directories).
NAMED_SOURCES = ("demo", "minilm")
#: Longest run id accepted from an address, and longest folder name in it (bytes; most file systems' limit).
MAX_RUN_ID, MAX_NAME = 1000, 255


_SERVED: dict[str, object] = {}  # set once by `dashboards.app.create_app`: the root and the disk cache


def served_root() -> Path:
    """The folder the running app serves: the current Flask app's config, or (in a background
    callback's worker process, which has no request) the root the app was created with."""
    from flask import current_app, has_app_context

    if has_app_context() and ROOT_KEY in current_app.config:
        return Path(current_app.config[ROOT_KEY])
    if "root" in _SERVED:
        return Path(_SERVED["root"])
    raise WorkbenchError("no app is serving a folder of runs")


def use_root_and_cache(root: Path, cache) -> None:
    """Remember the served root and the disk cache (a ``diskcache.Cache``) for this process and
    the background workers forked from it."""
    _SERVED.update(root=str(root), cache=cache)


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
    if entry.get("shards") is not None:  # a sharded table (engine="ray"): one stamp over its shard files
        return hash(tuple(s.get("sha256") for s in entry["shards"].values())), int(entry.get("bytes", 0))
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
    """The per-head rows of a table, or None for tables that are not per head
    (`workbench.findings.head_rows`, the rows the report ranks)."""
    from workbench.findings import head_rows

    return head_rows(frame)


def head_groups(frame: pd.DataFrame) -> list[tuple[dict, pd.DataFrame]]:
    """Split a per-head frame into parts with one row per head (`workbench.findings.head_groups`)."""
    from workbench.findings import head_groups as split

    return split(frame)


def head_parts(run: Run) -> tuple[tuple[str, dict, pd.DataFrame], ...]:
    """``(table name, where, part)`` for every per-head part of every score table of ``run``
    (`head_groups` of `per_head`), skipping `SUPPORT` tables and tables that cannot be read (the
    page of such a table says what is wrong). Cached like the tables (a rewritten table is split
    again): every head click and overview load reads these. The parts are shared: do not modify."""
    return _cached_parts(str(run.path), tuple((n, _stamp(run, n)) for n in run.tables if n not in SUPPORT))


@lru_cache(maxsize=16)
def _cached_parts(path: str, stamps: tuple) -> tuple[tuple[str, dict, pd.DataFrame], ...]:
    out = []
    for name, stamp in stamps:
        try:
            frame = per_head(_cached_table(path, name, stamp))  # per_head selects: a new frame, the cache is intact
        except WorkbenchError:
            continue
        out += [(name, where, part) for where, part in ([] if frame is None else head_groups(frame))]
    return tuple(out)


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
    """Prompts to choose from for the run: every prompt of its ``prompts`` table (the run's own
    first, then each set its analyses used), else the default prompt set of its model source if
    its hash matches the manifest's ``prompts_hash``, else an empty list."""
    from workbench.prompts import load_prompts

    if "prompts" in run:
        try:
            stored = table(run, "prompts")
            return list(dict.fromkeys(stored["prompt"].astype(str)))
        except WorkbenchError:
            pass
    source = model_source(run)
    if source is None:
        return []
    try:
        prompts = load_prompts(None, model=SimpleNamespace(source=source))
    except WorkbenchError:
        return []
    return prompts if prompts_hash(prompts) == run.manifest.get("prompts_hash") else []


CACHE_KEY = "WORKBENCH_CACHE"  # the app's diskcache.Cache in its Flask config


def _cache():
    """The serving app's disk cache (from its Flask config), or in a background worker the cache
    it was forked with; None outside any app."""
    from flask import current_app, has_app_context

    if has_app_context() and CACHE_KEY in current_app.config:
        return current_app.config[CACHE_KEY]
    return _SERVED.get("cache")


def _cache_get(key):
    cache = _cache()
    return None if cache is None else cache.get(key)


def _cache_set(key, value) -> None:
    cache = _cache()
    if cache is not None:
        cache.set(key, value)


def layer_patterns(source: str, prompt: str, layer: int) -> tuple[np.ndarray, tuple[str, ...]]:
    """The attention patterns of every head of one layer on one prompt, computed with the model
    from ``source`` (exact, `workbench.capture_patterns`), kept in the app's disk cache.

    Returns:
        ``(patterns [head, query, key] float32, tokens)``; the full matrices stay on the server
        (only windows or block means of them are sent to the browser).
    Raises:
        WorkbenchError: the model cannot be loaded, the prompt is empty or too long, layer out of range.
    """
    import workbench as wb

    if not isinstance(prompt, str) or not prompt.strip():
        raise WorkbenchError("the prompt is empty: type some text first")
    layer = head_index("layer", layer)
    key = ("layer_patterns", source, prompt, layer)
    hit = _cache_get(key)
    if hit is not None:
        return hit
    model, lock = _loaded(source)
    model.check_layer(layer)
    with lock:
        patterns = wb.capture_patterns(model, [prompt], layers=[layer])
        tokens = tuple(model.to_str_tokens(prompt))
    n = len(tokens)
    value = (patterns[layer][0, :, :n, :n].numpy().astype(np.float32), tokens)  # (head, query, key)
    _cache_set(key, value)
    return value


def cached_layer(source: str, prompt: str, layer: int):
    """`layer_patterns` if a background callback already computed it, else None (never computes)."""
    return _cache_get(("layer_patterns", source, prompt, int(layer)))


def head_pattern(source: str, prompt: str, layer: int, head: int) -> tuple[np.ndarray, tuple[str, ...]]:
    """One head's pattern ``(pattern [query, key] float32, tokens)`` (see `layer_patterns`).

    Raises:
        WorkbenchError: as `layer_patterns`, or a head out of range.
    """
    head = head_index("head", head)
    patterns, tokens = layer_patterns(source, prompt, layer)
    if not head < patterns.shape[0]:
        raise WorkbenchError(f"head {head!r} is out of range: the model has heads 0..{patterns.shape[0] - 1}")
    return patterns[head], tokens


def unknown_words(source: str, prompt: str) -> tuple[int, list[str]]:
    """How many of the prompt's tokens are the tokenizer's unknown token, and the words that became
    it (empty when the tokenizer has no unknown token)."""
    model, _ = _loaded(source)
    tok = model.tokenizer
    if tok.unk_token_id is None:
        return 0, []
    ids = tok(prompt, add_special_tokens=False)["input_ids"]
    count = sum(1 for i in ids if i == tok.unk_token_id)
    if not count:
        return 0, []
    words = [w for w in prompt.split() if tok.unk_token_id in tok(w, add_special_tokens=False)["input_ids"]]
    return count, words


def token_attributions(source: str, prompt: str) -> pd.DataFrame:
    """Captum token attributions (integrated gradients) and attention of one prompt, computed with
    the model from ``source`` by `workbench.token_attributions` (frame as that function returns),
    kept in the app's disk cache."""
    import workbench as wb

    if not isinstance(prompt, str) or not prompt.strip():
        raise WorkbenchError("the prompt is empty: type some text first")
    key = ("token_attributions", source, prompt)
    hit = _cache_get(key)
    if hit is not None:
        return hit
    model, lock = _loaded(source)
    with lock:
        frame = wb.token_attributions(model, prompt, "integrated_gradients")
    _cache_set(key, frame)
    return frame


def stored_examples(run: Run) -> list[str]:
    """The example prompts whose every-head patterns the run stores (``head_examples``), or []."""
    if "head_examples" not in run:
        return []
    try:
        return list(dict.fromkeys(table(run, "head_examples")["example"].astype(str)))
    except WorkbenchError:
        return []


def stored_layer(run: Run, example: str, layer: int) -> tuple[np.ndarray, tuple[str, ...], list[int], int] | None:
    """``(patterns [head, kept, kept], tokens, positions, n_tokens)`` of one layer on a stored
    example, or None when the run lacks it."""
    from workbench.analyzers.examples import example_of

    frame = table(run, "head_examples")
    heads = sorted(int(h) for h in frame[(frame["example"] == example) & (frame["layer"] == int(layer))]["head"])
    found = [example_of(frame, example, int(layer), h) for h in heads]
    if not found or found[0] is None:
        return None
    _, positions, tokens, n = found[0]
    return np.stack([f[0] for f in found]), tuple(tokens), positions, n
