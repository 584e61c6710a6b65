"""File handling of the run store: manifest checks, atomic writes, the manifest lock, stale temp files.

A temp file is named ``.<file>.<host>-<pid>-<random>.tmp`` and created with mode 0666 masked
by the umask (as any file the user creates); it is renamed over ``<file>`` when complete. A
writer killed with ``kill -9`` leaves its temp file behind: the next `Run.open` removes temp
files whose process on this host is gone (and any older than a day).
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import re
import secrets
import socket
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from workbench.errors import WorkbenchError

FORMAT = "attention-workbench-run"
FORMAT_VERSION = 1
TABLE_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
LOCK_NAME = ".manifest.lock"
#: Seconds a writer waits for another to finish its manifest update (updates take milliseconds).
LOCK_TIMEOUT = 60.0
#: Temp files of other hosts (or of older workbenches) are removed after this many seconds.
STALE_AFTER = 24 * 3600.0
_HOST = re.sub(r"[^A-Za-z0-9]", "", socket.gethostname())[:32] or "host"
_TEMP = re.compile(r"^\.(?P<file>.+)\.(?P<host>[A-Za-z0-9]{1,32})-(?P<pid>\d+)-[0-9a-f]{8}\.tmp$")
_OLD_TEMP = re.compile(r"^\.(manifest\.json|[a-z][a-z0-9_]{0,63}\.parquet)\.[A-Za-z0-9_]{8}\.tmp$")  # mkstemp's


def is_store_file(name: str) -> bool:
    """Whether ``name`` is the run store's own lock or temp file (not a user's file)."""
    return name == LOCK_NAME or bool(_TEMP.match(name) or _OLD_TEMP.match(name))


def _storage_error(path: Path, exc: OSError) -> WorkbenchError:
    why = exc.strerror or str(exc)
    if exc.errno == errno.ENOSPC:
        why += " (the disk is full)"
    elif exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        why += " (the directory is not writable)"
    return WorkbenchError(f"cannot write {str(path)!r}: {why}; everything stored before is kept")


def atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """Write ``path`` through ``write(temp path)`` and rename it into place; on any failure the
    old file is untouched and the temp file removed. OSErrors (full disk, read-only directory)
    become one WorkbenchError."""
    path = Path(path)
    tmp = path.parent / f".{path.name}.{_HOST}-{os.getpid()}-{secrets.token_hex(4)}.tmp"
    try:
        os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))  # the umask applies
        write(str(tmp))
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)  # the data is on disk before the rename makes it the file
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as exc:
        _unlink(tmp)
        raise _storage_error(path, exc) from None
    except BaseException:
        _unlink(tmp)
        raise


def _unlink(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError:
        pass


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@contextmanager
def locked(folder: Path) -> Iterator[None]:
    """Hold the run's manifest lock (an OS file lock, released when the process dies)."""
    from filelock import FileLock, Timeout

    lock = FileLock(str(Path(folder) / LOCK_NAME), timeout=LOCK_TIMEOUT)
    try:
        lock.acquire()
    except Timeout:
        raise WorkbenchError(f"run {str(folder)!r} is locked by another writer for over {LOCK_TIMEOUT:.0f} s "
                             f"(its lock file {LOCK_NAME}); try again when it has finished") from None
    except OSError as exc:
        raise _storage_error(Path(folder) / LOCK_NAME, exc) from None
    try:
        yield
    finally:
        lock.release()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists, owned by someone else
    return True


def remove_stale_temp_files(folder: Path) -> list[str]:
    """Remove the temp files in ``folder`` whose writer is gone; returns their names. Files that
    cannot be removed (read-only run) are left."""
    removed = []
    try:
        entries = list(Path(folder).iterdir())
    except OSError:
        return removed
    now = time.time()
    for entry in entries:
        match = _TEMP.match(entry.name)
        try:
            if match and match["host"] == _HOST:
                stale = int(match["pid"]) != os.getpid() and not _alive(int(match["pid"]))
            elif match or _OLD_TEMP.match(entry.name):
                stale = now - entry.stat().st_mtime > STALE_AFTER
            else:
                continue
            if stale:
                entry.unlink()
                removed.append(entry.name)
        except OSError:
            continue
    return removed


# -- manifest -----------------------------------------------------------------------------------
def read_manifest(path: Path) -> dict:
    """The manifest of run directory ``path``, checked (WorkbenchError naming what is wrong)."""
    try:
        if not path.exists():
            raise WorkbenchError(f"run directory {str(path)!r} does not exist")
        if not path.is_dir():
            raise WorkbenchError(f"{str(path)!r} is a file: expected a run directory (a folder with manifest.json)")
        mpath = path / "manifest.json"
        if not mpath.exists():
            raise WorkbenchError(f"{str(path)!r} is not a run: it has no manifest.json")
        text = mpath.read_bytes().decode("utf-8")
    except OSError as exc:
        raise WorkbenchError(f"run directory {str(path)!r} cannot be read: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise WorkbenchError(f"run {str(path)!r} has a damaged manifest.json (not UTF-8 text)") from None
    try:
        manifest = json.loads(text)
    except json.JSONDecodeError as exc:
        raise WorkbenchError(f"run {str(path)!r} has a damaged manifest.json ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise WorkbenchError(f"{str(path)!r} is not a workbench run: manifest.json has no format {FORMAT!r}")
    version = manifest.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise WorkbenchError(f"run {str(path)!r} has a damaged manifest.json: format_version is {version!r} "
                             f"({type(version).__name__}); expected an int, {FORMAT_VERSION} for this workbench")
    if version > FORMAT_VERSION:
        raise WorkbenchError(
            f"run {str(path)!r} has format version {version!r}, newer than this workbench reads "
            f"({FORMAT_VERSION}): upgrade attention-workbench"
        )
    tables = manifest.get("tables")
    if not isinstance(tables, dict) or any(
            not isinstance(e, dict) or not TABLE_NAME.match(str(n)) or e.get("file") != f"{n}.parquet"
            for n, e in tables.items()):
        raise WorkbenchError(f"run {str(path)!r} has a damaged manifest.json: 'tables' must map table names "
                             "to entries whose file is '<name>.parquet'")
    if not isinstance(manifest.get("skipped", {}), dict):
        raise WorkbenchError(f"run {str(path)!r} has a damaged manifest.json: 'skipped' must map names to reasons")
    return manifest


def foreign_entries(path: Path) -> list[str]:
    """What a directory holds besides the run store's own lock and temp files."""
    return [p.name for p in path.iterdir() if not is_store_file(p.name)]


def jsonable(value: Any) -> Any:
    """``value`` with what JSON cannot hold written as its repr (numpy scalars become numbers)."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        return jsonable(value.item())
    return repr(value)
