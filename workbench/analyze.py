"""`analyze`: run every registered analysis on one model and prompt set into a run directory."""

from __future__ import annotations

import inspect
import sys
import time
from pathlib import Path
from typing import Iterable

from tqdm.auto import tqdm

from workbench.analyzers import ANALYZERS, Analyzer, keyword_defaults
from workbench.checks import choice
from workbench.checks import names as check_names
from workbench.errors import WorkbenchError
from workbench.description import Description, describe
from workbench.progress import forward_bar
from workbench.prompts import load_prompts
from workbench.run import Run


ENGINES = ("local", "ray")


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C during `analyze`: the message says what the run kept and how to resume it."""


def analyze(model, prompts=None, *, out: str | Path, analyses: Iterable[str] | str | None = None,
            progress: bool = True, engine: str = "local", ray_address: str | None = None,
            concurrency: int | None = None, batch_size: int | None = None) -> Run:
    """Run the registered analyses and store each as a table of one run.

    Args:
        model: a `ModelHandle`.
        prompts: prompts (strings), a prompt file path, or None for the model's defaults
            (the demo's bundled suites for the demo model).
        out: the run directory. An existing run over the same prompts and model is resumed:
            tables it already holds intact are kept and not recomputed; tables whose file is
            missing or damaged are computed again. Another process may analyse the same run at
            the same time (the manifest is locked and merged).
        analyses: names from `ANALYZERS` (one name or a list; default: all that apply).
        progress: show a progress bar over the analyses, and an inner one counting the
            forward passes of the analysis running (`workbench.progress.forward_bar`).
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
        The `Run`. Each table's manifest entry records its capture mode, backend, device,
        parameters and seconds. Analyses that do not apply to the model (e.g. causal-only ones
        on an encoder) are recorded in ``run.skipped`` with the reason.
    Raises:
        WorkbenchError: bad prompts, analysis names or engine options (``engine="ray"``
            without Ray installed, or with an in-memory model), or a run at ``out`` made from
            other prompts or with another model. `RunInterrupted` (a KeyboardInterrupt) on Ctrl-C.

    The descriptive analyses (registered with ``capture=True``: head summary, sinks, massive
    activations, pattern descriptors) share one capture pass over the prompts (`wb.describe`),
    made once, when the first of them runs; its mode and seconds go into each of their frames'
    ``attrs["capture"]``, and each table's ``seconds`` is its own work on top of it.
    """
    source = None  # where the prompts came from (restore commands name it)
    if prompts is None or isinstance(prompts, (str, Path)):
        source = "default" if prompts is None else str(Path(prompts).expanduser().resolve())
        prompts = load_prompts(prompts, model=model)
    prompts = list(prompts)
    names = list(ANALYZERS) if analyses is None else check_names("analyses", analyses, ANALYZERS)
    model.to_tokens(prompts)  # validate before anything is written
    ray_job = _engine_options(model, engine, ray_address, concurrency, batch_size)
    run = Run.create(out, model=model, prompts=prompts, prompts_source=source)
    problems = {n: run.problem(n) for n in names if n in run}  # None when intact
    for name, why in problems.items():
        if why:
            print(f"table {name!r} of run {str(run.path)!r} cannot be trusted ({why}): computing it again",
                  file=sys.stderr)
    todo = [n for n in names if n not in run or problems[n]]
    bar = tqdm(total=len(todo), desc="analyses", unit="analysis", disable=not progress)
    shared = None  # the shared descriptive capture, made by the first analysis that reads it
    try:
        if ray_job is not None:
            done = ray_job(run, [n for n in todo if not ANALYZERS[n].applies(model)], prompts, progress)
            bar.update(len(done))
            todo = [n for n in todo if n not in done]
        for name in todo:  # not `in bar`: its generator would close the bar (leaving it) before we can clear it
            bar.set_postfix_str(name)
            shared = _one(run, ANALYZERS[name], model, prompts, progress, shared)
            bar.update()
    except BaseException as exc:
        bar.leave = False  # a failed or interrupted run ends in its one-line message, not a half bar
        bar.close()
        if not isinstance(exc, KeyboardInterrupt):
            raise
        run.refresh()
        kept = [n for n in names if n in run and not run.problem(n)]
        raise RunInterrupted(
            f"interrupted: run {str(run.path)!r} keeps {len(kept)} of {len(names)} analyses; "
            "run the same command again to resume (finished tables are not recomputed)") from None
    bar.close()
    return run


def _engine_options(model, engine: str, ray_address, concurrency, batch_size):
    """Check the engine options before anything is written; for ``engine="ray"`` return
    ``job(run, names, prompts, progress) -> names done`` computing the per-prompt tables on Ray."""
    choice("engine", engine, ENGINES)
    if engine != "ray":
        for option, value in (("ray_address", ray_address), ("concurrency", concurrency), ("batch_size", batch_size)):
            if value is not None:
                raise WorkbenchError(f"{option}={value!r} needs engine='ray'; got engine={engine!r}")
        return None
    from workbench import distributed

    distributed.require_ray()
    distributed.actor_source(model)  # an in-memory model fails here, before the run exists
    options = distributed.check_options(concurrency=concurrency,
                                        batch_size=distributed.BATCH_SIZE if batch_size is None else batch_size)

    def job(run: Run, names: list[str], prompts: list, progress: bool) -> list[str]:
        names = [n for n in names if n in distributed.TABLES]
        if names:
            params = {n: table_params(ANALYZERS[n], prompts) for n in names}
            distributed.run_tables(model, prompts, run, names, address=ray_address, params=params,
                                   progress=progress, **options)
        return names

    return job


def _one(run: Run, analyzer: Analyzer, model, prompts: list, progress: bool = False,
         shared: Description | None = None) -> Description | None:
    """Compute one analysis into the run, unless another writer stored it meanwhile; returns the
    shared descriptive capture (made here if this analysis is the first to read it)."""
    run.refresh()
    if analyzer.name in run and not run.problem(analyzer.name):
        return shared
    reason = analyzer.applies(model)
    if reason:
        run.mark_skipped(analyzer.name, reason)
        return shared
    params = table_params(analyzer, prompts)
    mode, kwargs = analyzer.mode, {}
    with forward_bar(model, analyzer.name, enable=None if progress else False):
        if analyzer.capture:
            if shared is None:
                shared = describe(model, prompts)
            mode, kwargs = shared.mode, {"capture": shared}
        start = time.perf_counter()
        frame = analyzer.fn(model, prompts, **kwargs)
    seconds = time.perf_counter() - start
    if analyzer.capture:
        frame.attrs["capture"] = {"shared": True, "mode": shared.mode, "seconds": round(shared.seconds, 3)}
    attrs = {k: v for k, v in frame.attrs.items() if v is None or isinstance(v, (bool, int, float, str))}
    run.add_table(analyzer.name, frame, mode=mode, backend=resolve_backend(analyzer, params, model, mode),
                  seconds=seconds, params=params, device=str(getattr(model, "device", "cpu")), attrs=attrs)
    return shared


def table_params(analyzer: Analyzer, prompts: list) -> dict:
    """The parameters a registered analysis runs with: the keyword defaults of its function
    (JSON values only), ``n_prompts`` when it takes the prompts, then what the analyzer
    declares in ``Analyzer.params`` (a dict, or ``params(prompts) -> dict``), which wins."""
    taken = inspect.signature(analyzer.fn).parameters.get("prompts")
    out = {"n_prompts": len(prompts)} if taken is not None and taken.default is inspect.Parameter.empty else {}
    out.update({k: v for k, v in keyword_defaults(analyzer.fn).items() if k != "capture"})  # an object, not a setting
    declared = getattr(analyzer, "params", None)
    if callable(declared):
        declared = declared(prompts)
    out.update(declared or {})
    return out


def resolve_backend(analyzer: Analyzer, params: dict, model, mode: str | None = None) -> str:
    """The attention backend a table is made with: for streaming analyses the route that
    ``"auto"`` takes in `kernels.attention_stats` on the model's device (`kernels.head_stats.auto_backend`);
    for exact ones the model's eager attention read through hooks."""
    if (mode or analyzer.mode) != "stream":
        return "eager"
    backend = params.get("backend", "auto")
    if backend != "auto":
        return str(backend)
    from kernels.head_stats import auto_backend

    return auto_backend(getattr(model, "device", "cpu"), model.d_head, attention=True)
