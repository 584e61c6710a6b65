"""`analyze`: run every registered analysis on one model and prompt set into a run directory."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Iterable

from tqdm.auto import tqdm

from workbench.analyzers import ANALYZERS
from workbench.errors import WorkbenchError
from workbench.progress import forward_bar
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
        progress: show a progress bar over the analyses, and an inner one counting the
            forward passes of the analysis running (`workbench.progress.forward_bar`).
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
    run = Run.create(out, model=model, prompts=prompts)
    todo = [n for n in names if n not in run]
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
        with forward_bar(model, name, enable=None if progress else False):
            frame = analyzer.fn(model, prompts)
        run.add_table(name, frame, mode=analyzer.mode, seconds=time.perf_counter() - start)
    return run
