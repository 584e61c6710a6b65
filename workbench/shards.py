"""Sharded tables: one folder per table, one sub-folder per prompt batch (DESIGN.md "Scale beyond
one machine").

A table written by a distributed engine lives in ``<run>/<table>/<shard>/`` where a shard is one
batch of prompts, named by its batch size and number (``b16-000003``), and holds one Parquet
file. Batches are the prompts ordered longest first (ties in prompt order) and cut every
``batch_size``: the order in which the local engine's shared capture pads its forwards
(`workbench.capture.padded_batches`), so with a batch size that is a multiple of its forward
batch each prompt is computed in the same forward as locally and the numbers are the same. The
plan follows from the prompt lengths and the batch size alone, so an interrupted job knows on its
next start which batches already landed and computes only the others. Read back, a table is put
in prompt order (then the table's own order, if it has one).

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
from workbench.runfiles import file_sha256

_NAME = re.compile(r"^b(\d+)-(\d+)$")


@dataclass(frozen=True)
class Shard:
    """One batch of prompts (run-wide ids, longest first) and its folder name."""

    name: str
    prompt_ids: tuple[int, ...]


def plan(lengths: Sequence[int], batch_size: int) -> list[Shard]:
    """The shards of prompts with token ``lengths``: longest first (ties in prompt order), cut
    every ``batch_size``; named ``b<batch_size>-<number>`` (numbers zero-padded to 6 digits or
    more, so names sort as the batches)."""
    order = sorted(range(len(lengths)), key=lambda i: -int(lengths[i]))  # stable: ties keep prompt order
    count = -(-len(order) // batch_size)
    width = max(6, len(str(max(count - 1, 0))))
    return [Shard(f"b{batch_size}-{k:0{width}d}", tuple(order[k * batch_size:(k + 1) * batch_size]))
            for k in range(count)]


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
        made = f" (batches of {int(match.group(1))} prompts)" if match else ""
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


def read(table_dir: Path, entries: dict[str, dict], columns: Sequence[str],
         order: Sequence[Sequence] = ()) -> pd.DataFrame:
    """Concatenate a table's shards into one frame in prompt order (stably: each prompt's rows
    keep the order they were written in), then in the table's own ``order``.

    Args:
        table_dir: ``<run>/<table>``.
        entries: the manifest's ``{shard name: {"file", ...}}``.
        columns: the table's columns (files written together with other tables carry theirs too).
        order: ``[(column, ascending), ...]`` the rows are then sorted by, stably (``"|c|"``:
            by the absolute value of ``c``); empty keeps prompt order.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    parts = [pq.read_table(table_dir / entry["file"], columns=list(columns)) for entry in entries.values()]
    if not parts:  # a sparse table with no rows at all
        return pd.DataFrame(columns=list(columns))
    frame = pa.concat_tables(parts).to_pandas().sort_values("prompt_id", kind="stable", ignore_index=True)
    if order:
        keys = {f"_key{i}": frame[c.strip("|")].abs() if c.startswith("|") else frame[c]
                for i, (c, _) in enumerate(order)}
        frame = (frame.assign(**keys).sort_values(list(keys), ascending=[bool(a) for _, a in order], kind="stable")
                 .drop(columns=list(keys)).reset_index(drop=True))
    return frame
