"""`analyze`: run every registered analysis on one model and prompt set into a run directory."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Iterable

from tqdm.auto import tqdm

from workbench.analyzers import ANALYZERS
from workbench.description import describe
from workbench.errors import WorkbenchError
from workbench.prompts import load_prompts
from workbench.run import Run


def analyze(model, prompts=None, *, out: str | Path, analyses: Iterable[str] | None = None,
            progress: bool = True) -> Run:
    """Run the registered analyses and store each as a table of one run.

    Args:
        model: a `ModelHandle`.
        prompts: prompts (strings), a prompt file path, or None for the model's defaults
            (the demo's bundled suites for the demo model).
        out: the run directory. An existing run over the same prompts is resumed: tables it
            already holds are kept and not recomputed.
        analyses: names from `ANALYZERS` (default: all that apply to the model).
        progress: show a progress bar.
    Returns:
        The `Run`. Analyses that do not apply to the model (e.g. causal-only ones on an
        encoder) are recorded in ``run.manifest["skipped"]`` with the reason.

    The descriptive analyses (registered with ``capture=True``: head summary, sinks, massive
    activations, pattern descriptors) share one capture pass over the prompts (`wb.describe`),
    made once, when the first of them runs; its mode and seconds go into each of their frames'
    ``attrs["capture"]``, and each table's ``seconds`` is its own work on top of it.
    """
    if prompts is None or isinstance(prompts, (str, Path)):
        prompts = load_prompts(prompts, model=model)
    prompts = list(prompts)
    model.to_tokens(prompts)  # validate before anything is written
    names = list(ANALYZERS) if analyses is None else list(analyses)
    unknown = [n for n in names if n not in ANALYZERS]
    if unknown:
        raise WorkbenchError(f"unknown analysis {unknown[0]!r}: expected one of {sorted(ANALYZERS)}")
    run = Run.create(out, model=model, prompts=prompts)
    todo = [n for n in names if n not in run]
    bar = tqdm(todo, desc="analyses", unit="analysis", disable=not progress)
    shared = None
    for name in bar:
        analyzer = ANALYZERS[name]
        bar.set_postfix_str(name)
        reason = analyzer.applies(model)
        if reason:
            run.manifest.setdefault("skipped", {})[name] = reason
            run._write_manifest()
            continue
        mode, kwargs = analyzer.mode, {}
        if analyzer.capture:
            if shared is None:
                shared = describe(model, prompts)
            mode, kwargs = shared.mode, {"capture": shared}
        start = time.perf_counter()
        frame = analyzer.fn(model, prompts, **kwargs)
        if analyzer.capture:
            frame.attrs["capture"] = {"shared": True, "mode": shared.mode, "seconds": round(shared.seconds, 3)}
        run.add_table(name, frame, mode=mode, seconds=time.perf_counter() - start)
    return run
