"""The run store: a directory of Parquet tables plus ``manifest.json`` (DESIGN.md "Run store").

Every write is atomic (temp file in the same directory, then ``os.replace``) and the manifest is
rewritten after each table, so an interrupted run keeps every table it finished. Nothing is
loaded with pickle: tables are Parquet, tensors safetensors.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

from workbench.errors import WorkbenchError

FORMAT = "attention-workbench-run"
FORMAT_VERSION = 1
_TABLE_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_VERSIONED = ("attention-workbench", "torch", "transformers", "transformer-lens", "pandas", "pyarrow", "triton")


def prompts_hash(prompts: Iterable[Any]) -> str:
    """sha256 over the prompts' JSON (stable across runs and machines)."""
    blob = json.dumps([p if isinstance(p, str) else list(map(int, p)) for p in prompts], ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in _VERSIONED:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def _atomic_write(path: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class Run:
    """A stored analysis run.

    Create with `Run.create(path, model=..., prompts=...)`, reopen with `Run.open(path)`.
    Tables: `add_table(name, frame, mode=..., seconds=...)`, `table(name)`, `tables`.
    """

    def __init__(self, path: Path, manifest: dict):
        self.path = Path(path)
        self.manifest = manifest

    # -- lifecycle ----------------------------------------------------------------------
    @classmethod
    def create(cls, path: str | Path, *, model: Any = None, prompts: Iterable[Any] = (), resume: bool = True) -> "Run":
        """Create a run directory (or resume the run already there when ``resume``).

        Args:
            path: the run directory; created with parents.
            model: a `ModelHandle` (its name, source and shape go into the manifest) or None.
            prompts: the prompts analysed (hashed into the manifest).
            resume: reopen an existing run with the same prompts instead of failing.
        Raises:
            WorkbenchError: the directory exists and is not an empty dir or a run, or a run
                there was made from other prompts.
        """
        path = Path(path)
        prompts = list(prompts)
        digest = prompts_hash(prompts)
        if (path / "manifest.json").exists():
            run = cls.open(path)
            if not resume:
                raise WorkbenchError(f"run directory {str(path)!r} already holds a run; choose another --out")
            if run.manifest.get("prompts_hash") not in (None, digest):
                raise WorkbenchError(
                    f"run directory {str(path)!r} holds a run over other prompts "
                    f"(hash {run.manifest['prompts_hash'][:12]}, now {digest[:12]}); choose another --out"
                )
            return run
        if path.exists() and (not path.is_dir() or any(path.iterdir())):
            raise WorkbenchError(f"{str(path)!r} exists and is not an empty directory or a run: choose another --out")
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise WorkbenchError(f"cannot create run directory {str(path)!r}: {exc.strerror}") from None
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "model": _model_info(model),
            "prompts_hash": digest,
            "n_prompts": len(prompts),
            "versions": package_versions(),
            "tables": {},
        }
        run = cls(path, manifest)
        run._write_manifest()
        return run

    @classmethod
    def open(cls, path: str | Path) -> "Run":
        """Open a stored run, checking it is one and that its format is not newer than ours.

        Raises:
            WorkbenchError: missing directory, not a run, damaged manifest, newer format.
        """
        path = Path(path)
        if not path.is_dir():
            raise WorkbenchError(f"run directory {str(path)!r} does not exist")
        mpath = path / "manifest.json"
        if not mpath.exists():
            raise WorkbenchError(f"{str(path)!r} is not a run: it has no manifest.json")
        try:
            manifest = json.loads(mpath.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise WorkbenchError(f"run {str(path)!r} has a damaged manifest.json ({exc})") from None
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise WorkbenchError(f"{str(path)!r} is not a workbench run: manifest.json has no format {FORMAT!r}")
        version = manifest.get("format_version")
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise WorkbenchError(
                f"run {str(path)!r} has format version {version!r}, newer than this workbench reads "
                f"({FORMAT_VERSION}): upgrade attention-workbench"
            )
        return cls(path, manifest)

    # -- tables -------------------------------------------------------------------------
    @property
    def tables(self) -> list[str]:
        return list(self.manifest["tables"])

    def __contains__(self, name: str) -> bool:
        return name in self.manifest["tables"]

    def add_table(self, name: str, frame: pd.DataFrame, *, mode: str = "exact", backend: str | None = None,
                  seconds: float | None = None, params: dict | None = None) -> None:
        """Store a table atomically and record how it was made in the manifest."""
        if not _TABLE_NAME.match(name or ""):
            raise WorkbenchError(f"table name {name!r} is invalid: expected lower-case letters, digits and _")
        if not isinstance(frame, pd.DataFrame):
            raise WorkbenchError(f"table {name!r} must be a pandas DataFrame; got {type(frame).__name__}")
        file = self.path / f"{name}.parquet"
        _atomic_write(file, lambda tmp: frame.to_parquet(tmp, index=False))
        self.manifest["tables"][name] = {
            "file": file.name,
            "rows": int(len(frame)),
            "columns": [str(c) for c in frame.columns],
            "capture_mode": mode,
            "backend": backend,
            "seconds": None if seconds is None else round(float(seconds), 3),
            "params": params or {},
            "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        self._write_manifest()

    def table(self, name: str) -> pd.DataFrame:
        """Read one table back as a DataFrame.

        Raises:
            WorkbenchError: no such table, or its file is missing or damaged.
        """
        if name not in self.manifest["tables"]:
            raise WorkbenchError(f"run {str(self.path)!r} has no table {name!r}; it has {self.tables}")
        entry = self.manifest["tables"][name]
        file = self.path / entry["file"]
        try:
            if entry.get("shards") is not None:  # a folder of Parquet shards, one per prompt batch
                from workbench import shards

                return shards.read(file, entry["shards"], entry["columns"])
            return pd.read_parquet(file)
        except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for broken files
            raise WorkbenchError(
                f"table {name!r} of run {str(self.path)!r} is damaged or missing ({file.name}: "
                f"{type(exc).__name__}); re-run the analysis to rewrite it"
            ) from None

    def add_sharded_table(self, name: str, *, shards: list[str], columns: list[str], rows: int, mode: str,
                          engine: dict, backend: str | None = None, seconds: float | None = None,
                          params: dict | None = None) -> None:
        """Record a table whose shards already landed in ``<run>/<name>/<shard>/`` (see
        `workbench.shards`); the driver calls this once every shard is there.

        Args:
            shards: the shard folder names in prompt order; `table` reads them as one frame.
            columns: the table's columns, in order.
            engine: which engine and cluster wrote the shards (``name``, ``cluster``, ``address``, ...).
        """
        if not _TABLE_NAME.match(name or ""):
            raise WorkbenchError(f"table name {name!r} is invalid: expected lower-case letters, digits and _")
        self.manifest["tables"][name] = {
            "file": name,
            "shards": list(shards),
            "rows": int(rows),
            "columns": [str(c) for c in columns],
            "capture_mode": mode,
            "backend": backend,
            "engine": engine,
            "seconds": None if seconds is None else round(float(seconds), 3),
            "params": params or {},
            "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        self._write_manifest()

    def _write_manifest(self) -> None:
        text = json.dumps(self.manifest, indent=2, sort_keys=False)
        _atomic_write(self.path / "manifest.json", lambda tmp: Path(tmp).write_text(text))

    def __repr__(self) -> str:
        model = self.manifest.get("model") or {}
        return f"Run({str(self.path)!r}, model={model.get('name')!r}, tables={self.tables})"

    def _repr_html_(self) -> str:
        import html

        model = self.manifest.get("model") or {}
        rows = "".join(
            f"<tr><td>{html.escape(n)}</td><td>{t['rows']}</td><td>{html.escape(str(t['capture_mode']))}</td>"
            f"<td>{t['seconds']}</td></tr>"
            for n, t in self.manifest["tables"].items()
        )
        rows += "".join(
            f"<tr><td>{html.escape(n)}</td><td colspan=3><i>skipped: {html.escape(str(why))}</i></td></tr>"
            for n, why in (self.manifest.get("skipped") or {}).items()
        )
        shape = f"{model.get('n_layers')} layers × {model.get('n_heads')} heads" if model.get("n_layers") else ""
        return (
            f"<b>Run</b> <code>{html.escape(str(self.path))}</code> — model "
            f"<code>{html.escape(str(model.get('name')))}</code> {html.escape(shape)}, "
            f"{self.manifest.get('n_prompts')} prompts (sha256 {html.escape(str(self.manifest.get('prompts_hash'))[:12])})"
            f"<table><tr><th>table</th><th>rows</th><th>capture</th><th>seconds</th></tr>{rows}</table>"
        )


def _model_info(model: Any) -> dict | None:
    if model is None:
        return None
    keys = ("name", "source", "architecture", "n_layers", "n_heads", "n_kv_heads", "d_head", "n_ctx", "is_causal")
    return {k: getattr(model, k) for k in keys}
