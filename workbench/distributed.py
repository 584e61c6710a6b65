"""The Ray engine of `analyze`: per-prompt analyses on Ray Data actors, written as Parquet shards
straight into one run (DESIGN.md "Scale beyond one machine"; no home-made scheduler).

Flow: the prompts become a Ray Dataset with one block per prompt batch (`workbench.shards.plan`);
``map_batches`` runs `CaptureActor`, a callable class that loads the model once per actor from its
source name or directory (never a pickled model from the driver) and turns each batch into tidy
rows of numbers; ``write_parquet`` writes them to ``<run>/<table>/<batch>/``. The driver records
the tables in the manifest only after every shard has landed. Batches whose shard already landed
are not recomputed, so a job that was interrupted resumes where it stopped.

Ray is an optional extra: ``pip install "attention-workbench[ray]"`` (Ray Data).
"""

from __future__ import annotations

import logging
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import pandas as pd

from kernels.head_stats import auto_backend
from workbench import shards as shard_store
from workbench.checks import positive_int
from workbench.errors import WorkbenchError, find_cause

EXTRA = 'pip install "attention-workbench[ray]"'

#: Prompts per batch, i.e. per shard (the unit of resuming). A multiple of the shared capture's
#: forward batch (`wb.describe`'s 8), so each prompt is padded and computed as the local engine does.
BATCH_SIZE = 16

#: Object store of a Ray started here: the shards hold tidy numbers, not tensors.
LOCAL_OBJECT_STORE = 256 * 2**20

#: The sources an actor loads by name; any other source must be a directory every node can read.
_NAMED = ("demo", "smollm2", "minilm")

#: Environment the actors need to behave as the driver does (offline hub, quiet tokenizers).
_ENV = ("HF_HUB_OFFLINE", "TOKENIZERS_PARALLELISM")


@dataclass(frozen=True)
class RayTable:
    """How the Ray engine stores a per-prompt analysis it computes batch by batch. What runs is
    the registered analysis itself (`workbench.analyzers.ANALYZERS`, called as `wb.analyze` calls
    it: with the batch's shared `wb.describe` capture when it declares ``capture``), with
    ``prompt_id`` counted within the batch.

    Attributes:
        columns: the frame's columns, in order (shard files written together carry each
            other's columns too; a table is read back with its own).
        dense: every prompt has rows (the shard's file must cover all its prompts); a sparse
            table has rows only where something was found, so a shard may hold none.
        order: the local engine's row order when it is not prompt order: ``(column, ascending)``
            pairs (``"|value|"`` sorts by the absolute value), applied stably to the shards read
            in prompt order (`workbench.shards.read`).
    """

    columns: tuple[str, ...]
    dense: bool = True
    order: tuple[tuple[str, bool], ...] = ()


#: The analyses the Ray engine runs, by table name: the streaming statistics and the per-prompt
#: descriptive analyses (one shared capture per batch, `wb.describe`).
TABLES: dict[str, RayTable] = {
    "capture_stats": RayTable(("prompt_id", "layer", "head", "entropy", "max_prob", "sink_mass", "local_mass",
                               "n_queries")),
    "token_sinks": RayTable(("prompt_id", "layer", "head", "position", "token", "alpha")),
    "secondary_sinks": RayTable(("prompt_id", "position", "token", "start_layer", "end_layer", "n_layers", "mean_cos"),
                                dense=False, order=(("n_layers", False), ("mean_cos", False))),
    "massive_activations": RayTable(
        ("prompt_id", "layer", "position", "token", "dim", "value", "ratio"), dense=False,
        order=(("|value|", False), ("prompt_id", True), ("layer", True), ("position", True), ("dim", True))),
}


def _shared(name: str) -> bool:
    """Whether the registered analysis ``name`` reads the batch's shared descriptive capture."""
    from workbench.analyzers import ANALYZERS

    return bool(ANALYZERS[name].capture)


#: The dense table every Ray job writes when it computes no other: its shards tell which batches landed.
ANCHOR = "capture_stats"


def require_ray():
    """Import Ray Data, or fail with the extra to install."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise WorkbenchError(f"engine='ray' needs Ray Data, an optional extra that is not installed: {EXTRA}") from None
    return ray


def actor_source(model) -> str:
    """The source each actor loads the model from: a named source, a hub id, or an absolute directory.

    Raises:
        WorkbenchError: an in-memory model (``hf_model=``), which actors cannot load.
    """
    source = model.source
    if source == "in-memory":
        raise WorkbenchError(
            f"engine='ray' loads the model in every actor from its source name or directory, and "
            f"{model.name!r} was given in memory (hf_model=): save it with model.save_pretrained(DIR) and "
            f"tokenizer.save_pretrained(DIR), then wb.load_model(DIR); or use engine='local'"
        )
    if source in _NAMED:
        return source
    path = Path(source).expanduser()
    return str(path.resolve()) if path.exists() else source


# -- the actor -------------------------------------------------------------------------------
class CaptureActor:
    """Ray Data's callable class: one model per actor, one prompt batch per call.

    Args:
        source: what `actor_source` returned; loaded with `workbench.load_model`.
        dtype: the driver's weight dtype (``"float32"``, ...), so both compute alike.
        tables: the `TABLES` names to compute for each batch.
        fingerprint: the driver model's `workbench.run.model_fingerprint`; an actor whose node
            loads other weights or another config is refused.
    """

    def __init__(self, source: str, dtype: str, tables: Sequence[str], fingerprint: dict):
        import torch

        import workbench as wb
        from workbench.run import model_fingerprint

        device = "cuda" if torch.cuda.is_available() else None  # Ray shows each GPU actor its own GPU
        self.model = wb.load_model(source, dtype=dtype, device=device)
        mine = model_fingerprint(self.model)
        for key in ("weights_sha256", "config_sha256"):
            if mine[key] != fingerprint[key]:
                raise WorkbenchError(f"the actor on this node loaded {source!r} with {key} {mine[key][:12]}, not the "
                                     f"driver's {fingerprint[key][:12]}: every node must hold the same model files")
        self.tables = list(tables)

    def __call__(self, batch: pd.DataFrame):
        """One shard: ``batch`` has ``prompt_id, prompt, shard``; returns every table's rows for
        it (an Arrow table: the union of the tables' columns, each null outside its own table's
        rows, so ints stay ints) with the run-wide ``prompt_id`` and the partition columns
        ``table, shard``."""
        import pyarrow as pa

        ids = batch["prompt_id"].to_numpy()
        prompts = [p if isinstance(p, str) else [int(t) for t in p] for p in batch["prompt"]]
        from workbench.analyzers import ANALYZERS

        capture = None
        if any(_shared(n) for n in self.tables):
            from workbench.description import describe

            capture = describe(self.model, prompts)  # one capture of the batch for every descriptive table
        parts = []
        for name in self.tables:
            spec = TABLES[name]
            frame = ANALYZERS[name].fn(self.model, prompts, **({"capture": capture} if _shared(name) else {}))
            if tuple(frame.columns) != spec.columns:
                raise WorkbenchError(f"{name} returned columns {list(frame.columns)}; the Ray engine expects "
                                     f"{list(spec.columns)} (workbench.distributed.TABLES)")
            if frame.empty:  # a sparse table found nothing in this batch (its empty frame may be untyped)
                continue
            frame = frame.assign(prompt_id=ids[frame["prompt_id"].to_numpy()], table=name)  # batch-local -> run-wide
            parts.append(pa.Table.from_pandas(frame, preserve_index=False))
        out = pa.concat_tables(parts, promote_options="permissive")
        return out.append_column("shard", pa.array([str(batch["shard"].iloc[0])] * len(out)))


# -- the cluster -----------------------------------------------------------------------------
@contextmanager
def connect(address: str | None, *, concurrency: int | None) -> Iterator[dict]:
    """Ray for one job: join ``address``, reuse this process's connection, or start a local Ray.

    A Ray started or joined here is shut down (disconnected) on exit; one this process was
    already connected to is left as it was.

    Yields:
        What the manifest records: ``cluster`` (``"local"`` started here, ``"joined"`` at an
        address, ``"connected"`` already), ``address`` (the GCS address), ``nodes``, ``resources``
        (``CPU``, ``GPU``), ``ray`` (version).
    """
    ray = require_ray()
    if address is not None and (not isinstance(address, str) or not address.strip()):
        raise WorkbenchError(f"ray_address must be a cluster address like 'ray://head:10001', 'head:6379' or "
                             f"'auto'; got {address!r}")
    started = False
    if ray.is_initialized():
        mode = "connected"
        current = ray.get_runtime_context().gcs_address
        if address not in (None, "auto") and address.split("://")[-1] != current:
            raise WorkbenchError(f"this process is already connected to Ray at {current!r}, not ray_address="
                                 f"{address!r}: call ray.shutdown() first or pass that address")
    elif address is None:
        mode = "local"
        cpus = max(os.cpu_count() or 1, (concurrency or 1) + 1)  # one CPU left for Ray Data's write tasks
        ray.init(address="local", num_cpus=cpus, object_store_memory=LOCAL_OBJECT_STORE,
                 include_dashboard=False, logging_level=logging.WARNING)
        started = True
    else:
        mode = "joined"
        try:
            ray.init(address=address, logging_level=logging.WARNING)
        except (ConnectionError, ValueError, RuntimeError) as exc:
            raise WorkbenchError(f"cannot join the Ray cluster at {address!r}: {str(exc).splitlines()[0]}") from None
        started = True
    try:
        resources = ray.cluster_resources()
        yield {
            "cluster": mode,
            "address": ray.get_runtime_context().gcs_address,
            "requested_address": address,
            "nodes": sum(1 for n in ray.nodes() if n.get("Alive")),
            "resources": {k: float(resources.get(k, 0)) for k in ("CPU", "GPU")},
            "ray": ray.__version__,
        }
    finally:
        if started:
            ray.shutdown()


def check_options(*, concurrency: int | None, batch_size: int) -> dict:
    """The Ray job's options, checked: ``concurrency`` None or an int >= 1, ``batch_size`` >= 1."""
    return {"concurrency": None if concurrency is None else positive_int("concurrency", concurrency),
            "batch_size": positive_int("batch_size", batch_size)}


def _per_actor(resources: dict, concurrency: int | None) -> tuple[dict, int]:
    """One GPU per actor where the cluster has GPUs, else one CPU; and how many actors."""
    gpus, cpus = int(resources["GPU"]), int(resources["CPU"])
    if gpus:
        return {"num_gpus": 1}, concurrency or gpus
    concurrency = concurrency or max(1, cpus - 1)
    if concurrency >= cpus:
        raise WorkbenchError(f"concurrency={concurrency} CPU actors would take every CPU of the Ray cluster "
                             f"({cpus}) and Ray Data stalls with none left for its write tasks: use at most "
                             f"{max(cpus - 1, 1)}, or a cluster with more CPUs")
    return {"num_cpus": 1}, concurrency


# -- the job ---------------------------------------------------------------------------------
def run_tables(model, prompts: list, run, names: Sequence[str], *, address: str | None = None,
               concurrency: int | None = None, batch_size: int = BATCH_SIZE, params: dict | None = None,
               progress: bool = True) -> dict:
    """Compute the tables ``names`` on Ray and record them in ``run`` as sharded tables.

    Args:
        model: the driver's `ModelHandle` (its source is what actors load).
        prompts: the run's prompts (strings or token-id lists), already validated.
        run: the `Run` to write into.
        names: a subset of `TABLES`.
        address: a Ray cluster address; None starts a local Ray (or reuses this process's).
        concurrency: number of actors (default: one per GPU, else CPUs - 1).
        batch_size: prompts per shard.
        params: ``{table: parameters}`` for the manifest (``batch_size`` is added).
        progress: show Ray Data's progress bars.
    Returns:
        ``{"written": [shard names], "kept": [shard names], "engine": manifest engine record}``.
    Raises:
        WorkbenchError: Ray not installed, an in-memory model, a bad option, a failed actor.
    """
    names = list(names)
    unknown = [n for n in names if n not in TABLES]
    if unknown:
        raise WorkbenchError(f"engine='ray' cannot compute {unknown[0]!r}: it runs {sorted(TABLES)}")
    if not any(TABLES[n].dense for n in names):
        names.insert(0, ANCHOR)  # sparse tables alone cannot tell an empty shard from a missing one
    options = check_options(concurrency=concurrency, batch_size=batch_size)
    concurrency, batch_size = options["concurrency"], options["batch_size"]
    source = actor_source(model)
    require_ray()
    _, mask = model.to_tokens(prompts)
    plan = shard_store.plan(mask.sum(-1).tolist(), batch_size)  # longest first, as the local capture pads
    for name in names:
        shard_store.check_names(run.path / name, plan, batch_size=batch_size)

    def landed(shard) -> bool:
        return all(shard_store.landed(run.path / n, shard, dense=TABLES[n].dense) for n in names)

    kept = [s for s in plan if landed(s)]
    todo = [s for s in plan if s not in kept]
    start = time.perf_counter()
    with connect(address, concurrency=concurrency) as cluster:
        per_actor, actors = _per_actor(cluster["resources"], concurrency)
        engine = {"name": "ray", **cluster, "actors": actors, "per_actor": per_actor, "batch_size": batch_size}
        if todo:
            for shard in todo:  # a cut write leaves a partial shard: it is written anew, whole
                for name in names:
                    shard_store.discard(run.path / name, shard)
            actors = min(actors, len(todo))  # no actor without a batch to compute
            engine["actors"] = actors
            _execute(model, source, prompts, todo, names, run.path, per_actor, actors, progress)
    missing = [s.name for s in plan if not landed(s)]
    if missing:
        raise WorkbenchError(f"the Ray job ended without shard(s) {missing[:3]} of {names}: run it again to resume")
    seconds = time.perf_counter() - start
    engine.update(shards_written=len(todo), shards_kept=len(kept))
    device = "cuda" if "num_gpus" in per_actor else "cpu"
    for name in names:
        run.add_sharded_table(name, shards=shard_store.describe(run.path / name, plan), columns=TABLES[name].columns,
                              # shared tables: wb.describe's mode="auto", chosen per batch (exact where the pattern fits)
                              mode="auto" if _shared(name) else "stream",
                              # the route the actors' capture_stats(backend="auto") takes on that device
                              backend=None if _shared(name) else auto_backend(device, model.d_head, attention=True),
                              engine=engine, seconds=seconds, device=device,
                              order=[list(o) for o in TABLES[name].order],
                              params={**(params or {}).get(name, {}), "batch_size": batch_size})
    return {"written": [s.name for s in todo], "kept": [s.name for s in kept], "engine": engine}


def _execute(model, source, prompts, todo, names, root: Path, per_actor: dict, actors: int, progress: bool) -> None:
    import ray.data

    from workbench.run import model_fingerprint

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = progress
    logging.getLogger("ray.data").setLevel(logging.INFO if progress else logging.WARNING)
    blocks = [pd.DataFrame({"prompt_id": list(s.prompt_ids), "prompt": [prompts[i] for i in s.prompt_ids],
                            "shard": s.name}) for s in todo]  # one block per shard
    env = {k: os.environ[k] for k in _ENV if k in os.environ}
    dtype = str(next(model.hf_model.parameters()).dtype).removeprefix("torch.")
    dataset = ray.data.from_pandas(blocks).map_batches(
        CaptureActor, fn_constructor_kwargs={"source": source, "dtype": dtype, "tables": names,
                                             "fingerprint": model_fingerprint(model)},
        batch_size=None, batch_format="pandas", compute=ray.data.ActorPoolStrategy(size=actors),
        runtime_env={"env_vars": env}, **per_actor)
    try:
        dataset.write_parquet(str(root), partition_cols=["table", "shard"], partitioning_flavor=None)
    except Exception as exc:  # noqa: BLE001 - Ray wraps the actor's error in its own types
        cause = find_cause(exc, WorkbenchError)
        if cause is not None:
            raise WorkbenchError(str(cause)) from None
        raise
