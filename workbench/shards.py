"""Sharded tables: one folder per table, one sub-folder per prompt batch (DESIGN.md "Scale beyond
one machine").

A table written by a distributed engine lives in ``<run>/<table>/<shard>/`` where a shard is one
batch of consecutive prompts, named by its first and last prompt id (``000000-000015``), and holds
one Parquet file. Names follow from the prompt count and the batch size alone, so an interrupted
job knows on its next start which batches already landed and computes only the others.

A shard has landed when its folder holds exactly one Parquet file that reads back whole (a file cut
short has no footer and fails to open) and whose ``prompt_id`` values are the batch's prompts.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import pandas as pd

from workbench.errors import WorkbenchError

_NAME = re.compile(r"^(\d+)-(\d+)$")


@dataclass(frozen=True)
class Shard:
    """One batch of consecutive prompts ``[start, stop)`` and its folder name."""

    name: str
    start: int
    stop: int

    @property
    def prompt_ids(self) -> range:
        return range(self.start, self.stop)


def plan(n_prompts: int, batch_size: int) -> list[Shard]:
    """The shards of ``n_prompts`` prompts in batches of ``batch_size``, in prompt order.

    Names are zero-padded to one width (at least 6 digits) so they sort as the prompts do.
    """
    width = max(6, len(str(max(n_prompts - 1, 0))))
    return [Shard(f"{start:0{width}d}-{min(start + batch_size, n_prompts) - 1:0{width}d}",
                  start, min(start + batch_size, n_prompts))
            for start in range(0, n_prompts, batch_size)]


def shard_files(folder: Path) -> list[Path]:
    """The Parquet files of one shard folder (hidden and temporary files ignored)."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.suffix == ".parquet" and not p.name.startswith("."))


def _prompt_ids(file: Path) -> list[int] | None:
    """The ``prompt_id`` values of a shard file, or None when it does not read back whole."""
    import pyarrow.parquet as pq

    try:
        return pq.read_table(file, columns=["prompt_id"]).column("prompt_id").to_pylist()
    except Exception:  # noqa: BLE001 - a cut or damaged file raises one of several pyarrow errors
        return None


def landed(table_dir: Path, shard: Shard, *, dense: bool = True) -> bool:
    """Whether a shard of one table landed whole.

    Args:
        dense: every prompt has rows in this table: the shard's one file must cover exactly its
            prompts. A sparse table (rows only where something was found) may have no folder for
            a shard, which then holds no rows; a file it has must read back whole.
    """
    files = shard_files(table_dir / shard.name)
    if not files:
        return not dense and not (table_dir / shard.name).exists()
    ids = _prompt_ids(files[0]) if len(files) == 1 else None
    if ids is None:
        return False
    return set(ids) == set(shard.prompt_ids) if dense else set(ids) <= set(shard.prompt_ids)


def check_names(table_dir: Path, shards: Sequence[Shard], *, batch_size: int) -> None:
    """Refuse a table folder holding shards of another plan (another batch size or prompt count).

    Raises:
        WorkbenchError: naming a foreign shard and the batch size that would have made it.
    """
    if not table_dir.is_dir():
        return
    expected = {s.name for s in shards}
    foreign = sorted(p.name for p in table_dir.iterdir() if p.is_dir() and p.name not in expected)
    if foreign:
        match = _NAME.match(foreign[0])
        made = f" (batches of {int(match.group(2)) - int(match.group(1)) + 1} prompts?)" if match else ""
        raise WorkbenchError(
            f"{str(table_dir)!r} holds shard {foreign[0]!r}{made} that batches of {batch_size} prompts do not "
            f"make: resume with the batch size that wrote it, or write to another --out"
        )


def discard(table_dir: Path, shard: Shard) -> None:
    """Remove a shard folder that did not land whole (a write cut short), so it is written anew."""
    folder = table_dir / shard.name
    if folder.exists():
        shutil.rmtree(folder)


def describe(table_dir: Path, shards: Sequence[Shard]) -> dict[str, dict]:
    """The manifest record of a table's landed shards: ``{shard name: {"file", "rows", "bytes",
    "sha256"}}`` in prompt order (``file`` relative to ``table_dir``; shards of a sparse table
    that hold no rows are left out)."""
    import pyarrow.parquet as pq

    from workbench.runfiles import file_sha256

    out = {}
    for shard in shards:
        files = shard_files(table_dir / shard.name)
        if files:
            out[shard.name] = {"file": f"{shard.name}/{files[0].name}", "rows": pq.read_metadata(files[0]).num_rows,
                               "bytes": files[0].stat().st_size, "sha256": file_sha256(files[0])}
    return out


def problem(table_dir: Path, entries: dict[str, dict]) -> str | None:
    """Why a sharded table cannot be trusted (a shard file missing, cut or changed since it was
    written), or None when every shard is intact."""
    from workbench.runfiles import file_sha256

    for entry in entries.values():
        file = table_dir / entry["file"]
        try:
            size = file.stat().st_size
            if size != entry["bytes"]:
                return f"its shard {entry['file']} has {size} bytes, not the {entry['bytes']} written"
            if file_sha256(file) != entry["sha256"]:
                return f"its shard {entry['file']} changed since it was written (sha256 differs)"
        except FileNotFoundError:
            return f"its shard {entry['file']} is missing"
        except OSError as exc:
            return f"its shard {entry['file']} cannot be read ({exc.strerror or exc})"
    return None


def read(table_dir: Path, entries: dict[str, dict], columns: Sequence[str]) -> pd.DataFrame:
    """Concatenate a table's shards (in the manifest's order) into one frame.

    Args:
        table_dir: ``<run>/<table>``.
        entries: the manifest's ``{shard name: {"file", ...}}``.
        columns: the table's columns (files written together with other tables carry theirs too).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    parts = [pq.read_table(table_dir / entry["file"], columns=list(columns)) for entry in entries.values()]
    if not parts:  # a sparse table with no rows at all
        return pd.DataFrame(columns=list(columns))
    return pa.concat_tables(parts).to_pandas()
