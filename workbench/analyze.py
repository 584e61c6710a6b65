"""`analyze`: run every registered analysis on one model and prompt set into a run directory."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Iterable

from tqdm.auto import tqdm

from workbench.analyzers import ANALYZERS
from workbench.checks import choice
from workbench.errors import WorkbenchError
from workbench.prompts import load_prompts
from workbench.run import Run


ENGINES = ("local", "ray")


def analyze(model, prompts=None, *, out: str | Path, analyses: Iterable[str] | None = None,
            progress: bool = True, engine: str = "local", ray_address: str | None = None,
            concurrency: int | None = None, batch_size: int | None = None) -> Run:
    """Run the registered analyses and store each as a table of one run.

    Args:
        model: a `ModelHandle`.
        prompts: prompts (strings), a prompt file path, or None for the model's defaults
            (the demo's bundled suites for the demo model).
        out: the run directory. An existing run over the same prompts is resumed: tables it
            already holds are kept and not recomputed.
        analyses: names from `ANALYZERS` (default: all that apply to the model).
        progress: show a progress bar.
        engine: ``"local"`` (this process) or ``"ray"``: the per-prompt analyses
            (`workbench.distributed.TABLES`) run on Ray Data actors that each load the model from
            its source name or directory, and land as Parquet shards, one folder per table and
            one sub-folder per prompt batch; an interrupted job resumes with the shards that
            landed. The other analyses run here, as with ``"local"``. Needs the ``ray`` extra.
        ray_address: the Ray cluster to join (``"head:6379"``, ``"ray://head:10001"``, ``"auto"``);
            None starts a local Ray. The manifest records which.
        concurrency: Ray actors (default: one per GPU, else the cluster's CPUs - 1).
        batch_size: prompts per Ray batch and shard (default `workbench.distributed.BATCH_SIZE`).
    Returns:
        The `Run`. Analyses that do not apply to the model (e.g. causal-only ones on an
        encoder) are recorded in ``run.manifest["skipped"]`` with the reason.
    """
    if prompts is None or isinstance(prompts, (str, Path)):
        prompts = load_prompts(prompts, model=model)
    prompts = list(prompts)
    model.to_tokens(prompts)  # validate before anything is written
    names = list(ANALYZERS) if analyses is None else list(analyses)
    unknown = [n for n in names if n not in ANALYZERS]
    if unknown:
        raise WorkbenchError(f"unknown analysis {unknown[0]!r}: expected one of {sorted(ANALYZERS)}")
    choice("engine", engine, ENGINES)
    if engine != "ray":
        for option, value in (("ray_address", ray_address), ("concurrency", concurrency), ("batch_size", batch_size)):
            if value is not None:
                raise WorkbenchError(f"{option}={value!r} needs engine='ray'; got engine={engine!r}")
    else:
        from workbench import distributed

        distributed.require_ray()
        distributed.actor_source(model)  # an in-memory model fails before anything is written
    run = Run.create(out, model=model, prompts=prompts)
    todo = [n for n in names if n not in run]
    if engine == "ray":
        on_ray = [n for n in todo if n in distributed.TABLES and not ANALYZERS[n].applies(model)]
        if on_ray:
            distributed.run_tables(model, prompts, run, on_ray, address=ray_address, concurrency=concurrency,
                                   batch_size=distributed.BATCH_SIZE if batch_size is None else batch_size,
                                   progress=progress)
            todo = [n for n in todo if n not in on_ray]
    bar = tqdm(todo, desc="analyses", unit="analysis", disable=not progress)
    for name in bar:
        analyzer = ANALYZERS[name]
        bar.set_postfix_str(name)
        reason = analyzer.applies(model)
        if reason:
            run.manifest.setdefault("skipped", {})[name] = reason
            run._write_manifest()
            continue
        start = time.perf_counter()
        frame = analyzer.fn(model, prompts)
        run.add_table(name, frame, mode=analyzer.mode, seconds=time.perf_counter() - start)
    return run
