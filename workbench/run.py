"""The run store: a directory of Parquet tables plus ``manifest.json`` (DESIGN.md "Run store").

Every write is atomic (temp file in the same directory, then ``os.replace``) and the manifest is
rewritten after each table, so an interrupted run keeps every table it finished. Several
processes may write one run: each manifest update takes a file lock (``.manifest.lock``),
re-reads the manifest on disk and merges its change into it, so no writer drops another's
tables. Each table's size and sha256 are recorded, so a missing or damaged file is found and
`workbench.analyze` computes it again. The model is fingerprinted (source, config and weights
hashes, `model_fingerprint`) and a run refuses to be resumed with another model. Nothing is
loaded with pickle: tables are Parquet, tensors safetensors.
"""

from __future__ import annotations

import hashlib
import json
import platform
import shlex
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Iterable

import pandas as pd

from workbench import shards as shard_store  # (add_sharded_table takes a `shards` record)
from workbench.errors import WorkbenchError
from workbench.runfiles import (FORMAT, FORMAT_VERSION, TABLE_NAME, atomic_write, file_sha256, foreign_entries,
                                jsonable, locked, read_manifest, remove_stale_temp_files)

_VERSIONED = ("attention-workbench", "torch", "transformers", "transformer-lens", "pandas", "pyarrow", "triton")
#: Config keys that say how a model is run or saved, not what it computes (left out of the config
#: hash; ``architectures`` is filled in by ``save_pretrained``, the dtype is in the weights hash).
_RUNTIME_CONFIG = {"transformers_version", "output_attentions", "output_hidden_states", "return_dict",
                   "use_cache", "torch_dtype", "dtype", "attn_implementation", "architectures"}


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


# -- model fingerprint ------------------------------------------------------------------------
def model_fingerprint(model: Any) -> dict | None:
    """What identifies a model's behaviour: its source and hashes of its config and weights.

    The weights hash is sha256 over every state-dict tensor (name, dtype, shape, raw bytes) in
    sorted name order, so it is the same for the same weights however they were loaded. It is
    cached on ``model.meta["fingerprint"]`` and recomputed when any tensor was replaced or
    changed in place (torch's version counters).

    Args:
        model: a `ModelHandle` (anything with ``hf_model``; other objects give None).
    Returns:
        ``{"source", "config_sha256", "weights_sha256", "n_tensors", "n_parameters"}`` or None.
    """
    import torch

    hf = getattr(model, "hf_model", None)
    if not isinstance(hf, torch.nn.Module):
        return None
    tensors = sorted(hf.state_dict(keep_vars=True).items())
    key = hashlib.sha256(repr([(n, t.data_ptr(), t._version) for n, t in tensors]).encode()).hexdigest()
    meta = getattr(model, "meta", None)
    cached = meta.get("fingerprint") if isinstance(meta, dict) else None
    if isinstance(cached, dict) and cached.get("_key") == key:
        return {k: v for k, v in cached.items() if k != "_key"}
    weights = hashlib.sha256()
    n_parameters = 0
    for name, tensor in tensors:
        tensor = tensor.detach()
        weights.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        if tensor.device.type != "meta":
            flat = tensor.reshape(-1).contiguous().cpu()
            weights.update(flat.view(torch.uint8).numpy() if flat.numel() else b"")  # the buffer, no copy
        n_parameters += tensor.numel()
    config = getattr(hf, "config", None)
    settings = config.to_dict() if hasattr(config, "to_dict") else {}
    settings = {k: v for k, v in settings.items() if not k.startswith("_") and k not in _RUNTIME_CONFIG}
    out = {
        "source": getattr(model, "source", None),
        "config_sha256": hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest(),
        "weights_sha256": weights.hexdigest(),
        "n_tensors": len(tensors),
        "n_parameters": int(n_parameters),
    }
    if isinstance(meta, dict):
        meta["fingerprint"] = {**out, "_key": key}
    return out


def _same_model(stored: dict | None, info: dict | None, fingerprint: dict | None) -> str | None:
    """Why the stored model differs from the one given (None when they agree or cannot be told apart)."""
    stored = stored or {}
    old = stored.get("fingerprint")
    if isinstance(old, dict) and fingerprint:
        for key, what in (("weights_sha256", "weights"), ("config_sha256", "config")):
            if old.get(key) != fingerprint.get(key):
                return (f"its {what} sha256 is {str(old.get(key))[:12]}, the model given has "
                        f"{str(fingerprint.get(key))[:12]}")
        return None
    for key in ("name", "n_layers", "n_heads", "n_kv_heads", "d_head"):  # runs made before fingerprints
        if info and stored.get(key) is not None and info.get(key) is not None and stored[key] != info[key]:
            return f"its {key} is {stored[key]!r}, the model given has {info[key]!r}"
    return None


def _entry(file: str, rows: int, columns, mode: str, backend: str | None, seconds: float | None,
           params: dict | None, extra: dict) -> dict:
    """A table's manifest entry: how it was made (flat file or shards add where it is)."""
    return {"file": file, "rows": int(rows), "columns": [str(c) for c in columns], "capture_mode": mode,
            "backend": backend, "seconds": None if seconds is None else round(float(seconds), 3),
            "params": jsonable(params or {}), **jsonable(extra)}


class Run:
    """A stored analysis run.

    Create with `Run.create(path, model=..., prompts=...)`, reopen with `Run.open(path)`.
    Tables: `add_table(name, frame, mode=..., seconds=...)`, `add_sharded_table(...)` (a folder of
    Parquet shards that a distributed engine wrote), `table(name)`, `tables`,
    `problem(name)` (why a table's file cannot be trusted), `mark_skipped(name, reason)`,
    `refresh()` (re-read what other writers stored), `restore_command(names)`.
    """

    def __init__(self, path: Path, manifest: dict):
        self.path = Path(path)
        self.manifest = manifest

    # -- lifecycle ----------------------------------------------------------------------
    @classmethod
    def create(cls, path: str | Path, *, model: Any = None, prompts: Iterable[Any] = (), resume: bool = True,
               prompts_source: str | None = None) -> "Run":
        """Create a run directory (or resume the run already there when ``resume``).

        Args:
            path: the run directory; created with parents.
            model: a `ModelHandle` (its name, source, shape and `model_fingerprint` go into the
                manifest) or None.
            prompts: the prompts analysed (hashed into the manifest).
            resume: reopen an existing run with the same prompts and model instead of failing.
            prompts_source: where the prompts came from, for restore commands: ``"default"`` (the
                model's default set), a prompt file's path, or None (given as a list).
        Raises:
            WorkbenchError: the directory exists and is not an empty dir or a run, a run there was
                made from other prompts or with another model, or the directory is not writable.
        """
        path = Path(path)
        prompts = list(prompts)
        digest = prompts_hash(prompts)
        info, fingerprint = _model_info(model), model_fingerprint(model)
        if (path / "manifest.json").exists():  # resuming needs no lock until something is written
            return cls._resume(path, resume, digest, info, fingerprint)
        try:
            if path.exists() and not path.is_dir():
                raise WorkbenchError(f"{str(path)!r} is a file: choose another --out (a new or empty directory)")
            if path.is_dir() and not (path / "manifest.json").exists() and foreign_entries(path):
                raise WorkbenchError(f"{str(path)!r} exists and is not an empty directory or a run: choose another --out")
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise WorkbenchError(f"cannot create run directory {str(path)!r}: {exc.strerror or exc}") from None
        with locked(path):
            if (path / "manifest.json").exists():  # another writer created it meanwhile
                return cls._resume(path, resume, digest, info, fingerprint)
            manifest = {
                "format": FORMAT,
                "format_version": FORMAT_VERSION,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "model": info,
                "model_fingerprint": fingerprint,
                "prompts_hash": digest,
                "n_prompts": len(prompts),
                "prompts_source": prompts_source,
                "versions": package_versions(),
                "tables": {},
                "skipped": {},
            }
            run = cls(path, manifest)
            run._write(manifest)
        return run

    @classmethod
    def _resume(cls, path: Path, resume: bool, digest: str, info: dict | None, fingerprint: dict | None) -> "Run":
        run = cls.open(path)
        if not resume:
            raise WorkbenchError(f"run directory {str(path)!r} already holds a run; choose another --out")
        run._check_resume(digest, info, fingerprint)
        return run

    def _check_resume(self, digest: str, info: dict | None, fingerprint: dict | None) -> None:
        if self.manifest.get("prompts_hash") not in (None, digest):
            raise WorkbenchError(
                f"run directory {str(self.path)!r} holds a run over other prompts "
                f"(hash {self.manifest['prompts_hash'][:12]}, now {digest[:12]}); choose another --out"
            )
        stored = dict(self.manifest.get("model") or {}, fingerprint=self.manifest.get("model_fingerprint"))
        why = _same_model(stored, info, fingerprint)
        if why:
            raise WorkbenchError(
                f"run directory {str(self.path)!r} was made with another model ({stored.get('name')!r} from "
                f"{stored.get('source')!r}: {why}); resuming would mix two models' tables. Start a new run "
                "with another --out (wb.analyze(..., out=NEW_DIR)), or pass the run's own model"
            )

    @classmethod
    def open(cls, path: str | Path) -> "Run":
        """Open a stored run, checking it is one and that its format is not newer than ours.

        Temp files left by writers that were killed (``kill -9``) are removed.

        Raises:
            WorkbenchError: missing directory, a file, not a run, damaged manifest, newer format.
        """
        path = Path(path)
        manifest = read_manifest(path)
        remove_stale_temp_files(path)
        return cls(path, manifest)

    def refresh(self) -> "Run":
        """Re-read the manifest from disk (tables other writers stored since); returns self."""
        self.manifest = read_manifest(self.path)
        return self

    # -- tables -------------------------------------------------------------------------
    @property
    def tables(self) -> list[str]:
        return list(self.manifest["tables"])

    @property
    def skipped(self) -> dict[str, str]:
        """``{analysis name: why it does not apply to the run's model}``."""
        return dict(self.manifest.get("skipped") or {})

    def __contains__(self, name: str) -> bool:
        return name in self.manifest["tables"]

    def add_table(self, name: str, frame: pd.DataFrame, *, mode: str = "exact", backend: str | None = None,
                  seconds: float | None = None, params: dict | None = None, **extra: Any) -> None:
        """Store a table atomically and record how it was made in the manifest.

        Args:
            name: table name (lower-case letters, digits, ``_``).
            frame: the table.
            mode: capture mode (``"exact"`` or ``"stream"``); backend: the attention backend.
            seconds: how long it took; params: the parameters it was made with (JSON).
            extra: further JSON fields for the table's manifest entry (e.g. ``device``).
        """
        _check_name("table", name)
        if not isinstance(frame, pd.DataFrame):
            raise WorkbenchError(f"table {name!r} must be a pandas DataFrame; got {type(frame).__name__}")
        file = self.path / f"{name}.parquet"
        digest = {}

        def write(tmp: str) -> None:
            frame.to_parquet(tmp, index=False)
            digest.update(sha256=file_sha256(tmp), bytes=Path(tmp).stat().st_size)

        atomic_write(file, write)
        self._record(name, {**_entry(file.name, len(frame), frame.columns, mode, backend, seconds, params, extra),
                            **digest})

    def add_sharded_table(self, name: str, *, shards: dict[str, dict], columns: list[str], mode: str, engine: dict,
                          backend: str | None = None, seconds: float | None = None, params: dict | None = None,
                          **extra: Any) -> None:
        """Record a table whose shards already landed in ``<run>/<name>/<shard>/`` (see
        `workbench.shards`); a distributed engine's driver calls this once every shard is there.

        Args:
            name: table name (lower-case letters, digits, ``_``).
            shards: ``{shard name: {"file", "rows", "bytes", "sha256"}}`` in prompt order
                (`workbench.shards.describe`); `table` reads them as one frame and `problem`
                checks each file.
            columns: the table's columns, in order.
            mode, backend, seconds, params, extra: as for `add_table`.
            engine: which engine and cluster wrote the shards (``name``, ``cluster``, ``address``, ...).
        """
        _check_name("table", name)
        rows = sum(s["rows"] for s in shards.values())
        self._record(name, {**_entry(name, rows, columns, mode, backend, seconds, params, {"engine": engine, **extra}),
                            "shards": jsonable(shards), "bytes": int(sum(s["bytes"] for s in shards.values()))})

    def mark_skipped(self, name: str, reason: str) -> None:
        """Record that analysis ``name`` does not apply to the run's model, and why."""
        _check_name("analysis", name)
        self._update(lambda manifest: manifest["skipped"].__setitem__(name, str(reason)))  # _update makes "skipped"

    def problem(self, name: str) -> str | None:
        """Why table ``name`` cannot be trusted (its file missing, truncated or changed since it
        was written), or None when it is intact. Runs written before hashes were recorded are
        checked by reading the Parquet footer."""
        entry = self.manifest["tables"].get(name)
        if entry is None:
            return f"the run has no table {name!r}"
        if entry.get("shards") is not None:
            return shard_store.problem(self.path / entry["file"], entry["shards"])
        file = self.path / entry["file"]
        try:
            size = file.stat().st_size
        except FileNotFoundError:
            return f"its file {file.name} is missing"
        except OSError as exc:
            return f"its file {file.name} cannot be read ({exc.strerror or exc})"
        if "bytes" in entry and size != entry["bytes"]:
            return f"its file {file.name} has {size} bytes, not the {entry['bytes']} written"
        if "sha256" in entry:
            try:
                same = file_sha256(file) == entry["sha256"]
            except OSError as exc:
                return f"its file {file.name} cannot be read ({exc.strerror or exc})"
            return None if same else f"its file {file.name} changed since it was written (sha256 differs)"
        try:
            import pyarrow.parquet as pq

            rows = pq.read_metadata(file).num_rows
        except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for broken files
            return f"its file {file.name} is not a readable Parquet file ({type(exc).__name__})"
        return None if rows == entry.get("rows", rows) else f"its file {file.name} has {rows} rows, not {entry['rows']}"

    def table(self, name: str) -> pd.DataFrame:
        """Read one table back as a DataFrame.

        Raises:
            WorkbenchError: no such table, or its file is missing or damaged (the message gives
                the command that computes it again).
        """
        if name not in self.manifest["tables"]:
            raise WorkbenchError(f"run {str(self.path)!r} has no table {name!r}; it has {self.tables}")
        why = self.problem(name)
        entry = self.manifest["tables"][name]
        file = self.path / entry["file"]
        if why is None:
            try:
                if entry.get("shards") is not None:  # a folder of Parquet shards, one per prompt batch
                    return shard_store.read(file, entry["shards"], entry["columns"], order=entry.get("order") or ())
                return pd.read_parquet(file)
            except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for broken files
                why = f"its file {file.name} cannot be read ({type(exc).__name__})"
        raise WorkbenchError(f"table {name!r} of run {str(self.path)!r} is damaged or missing: {why}; "
                             f"compute it again with `{self.restore_command([name])}`")

    def restore_command(self, names: Iterable[str] = ()) -> str:
        """The command that computes tables ``names`` of this run again (all missing ones when
        empty): `workbench analyze` with the run's model source, prompt file and directory, or
        the `wb.analyze` call for a model built in memory or prompts given as a list."""
        names = list(names)
        source = (self.manifest.get("model") or {}).get("source") or "demo"
        prompts = self.manifest.get("prompts_source", "default")  # runs made before it was recorded: CLI defaults
        if source == "in-memory" or prompts is None:
            listed = f", analyses={names!r}" if names else ""
            return f"wb.analyze(model, prompts, out={str(self.path)!r}{listed}) with the run's model and prompts"
        parts = ["workbench analyze", "--model", shlex.quote(source), "--out", shlex.quote(str(self.path))]
        parts += ["--prompts", shlex.quote(prompts)] if prompts != "default" else []
        parts += [f"--analysis {n}" for n in names]
        return " ".join(parts)

    # -- manifest writes ------------------------------------------------------------------
    def _record(self, name: str, entry: dict) -> None:
        """Store table ``name``'s manifest entry (stamped with the time written); a table stored
        is no longer skipped."""
        entry = {**entry, "written": time.strftime("%Y-%m-%dT%H:%M:%S%z")}

        def change(manifest: dict) -> None:
            manifest["tables"][name] = entry
            manifest["skipped"].pop(name, None)

        self._update(change)

    def _update(self, change: Callable[[dict], None]) -> None:
        """Apply ``change`` to the manifest on disk under the run's lock and write it back, so
        changes of other writers since we last read it are kept."""
        with locked(self.path):
            try:
                current = read_manifest(self.path)
            except WorkbenchError:
                if (self.path / "manifest.json").exists():
                    raise
                current = self.manifest  # deleted under us: write ours again
            if current.get("prompts_hash") != self.manifest.get("prompts_hash"):
                raise WorkbenchError(f"run directory {str(self.path)!r} was replaced by a run over other prompts "
                                     "while this one was writing; nothing was stored")
            current.setdefault("skipped", {})
            change(current)
            self._write(current)
            self.manifest = current

    def _write(self, manifest: dict) -> None:
        text = json.dumps(manifest, indent=2, sort_keys=False)
        atomic_write(self.path / "manifest.json", lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))

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


def _check_name(what: str, name: Any) -> None:
    if not isinstance(name, str) or not TABLE_NAME.match(name):
        raise WorkbenchError(f"{what} name {name!r} is invalid: expected lower-case letters, digits and _")


def _model_info(model: Any) -> dict | None:
    if model is None:
        return None
    keys = ("name", "source", "architecture", "n_layers", "n_heads", "n_kv_heads", "d_head", "n_ctx", "is_causal")
    return {k: getattr(model, k) for k in keys}
