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


def landed(table_dir: Path, shard: Shard) -> bool:
    """True when the shard's folder holds one complete Parquet file covering exactly its prompts."""
    import pyarrow.parquet as pq

    files = shard_files(table_dir / shard.name)
    if len(files) != 1:
        return False
    try:
        ids = pq.read_table(files[0], columns=["prompt_id"]).column("prompt_id").to_pylist()
    except Exception:  # noqa: BLE001 - a cut or damaged file raises one of several pyarrow errors
        return False
    return set(ids) == set(shard.prompt_ids)


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


def read(table_dir: Path, names: Sequence[str], columns: Sequence[str]) -> pd.DataFrame:
    """Concatenate the shards ``names`` (in that order) of one table into one frame.

    Args:
        table_dir: ``<run>/<table>``.
        names: shard folder names, as the manifest lists them.
        columns: the table's columns (files written together with other tables may carry more).
    Raises:
        WorkbenchError: a shard folder without exactly one Parquet file.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    parts = []
    for name in names:
        files = shard_files(table_dir / name)
        if len(files) != 1:
            raise WorkbenchError(f"shard {name!r} of {str(table_dir)!r} holds {len(files)} Parquet files; expected 1")
        parts.append(pq.read_table(files[0], columns=list(columns)))
    return pa.concat_tables(parts).to_pandas()
