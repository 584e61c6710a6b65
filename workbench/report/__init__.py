"""Self-contained HTML reports of a run: one file, plotly.js inlined once, viewable offline.

    >>> run = wb.analyze(wb.load_model("demo"), out="runs/demo")
    >>> wb.report(run, "report.html")

The page opens with the findings, one block per family of analyses (`Analyzer.family`): what
each table shows in words and numbers, the heads it names with their patterns on stored example
prompts and their causal checks. Then heads ranked by every score (by the score's meaning, from
`workbench.glossary`), a section per registered analysis (its figures, the prompts it used, its
sources), the glossary, the prompts, a method note and the run's provenance. Analyses recorded
as skipped say why. `compare_report` puts two runs side by side.
"""

from __future__ import annotations

import html
import os
import tempfile
from datetime import datetime
from pathlib import Path

from workbench.analyzers import ANALYZERS
from workbench.errors import WorkbenchError
from workbench.report import page, sections
from workbench.report.compare import render_compare
from workbench.run import Run, prompts_hash

__all__ = ["check_output", "compare_report", "render", "render_compare", "report", "report_model"]


def check_output(out: str | Path) -> Path:
    """Check that a report can be written at ``out`` before any work is done.

    Returns:
        ``out`` as a Path.
    Raises:
        WorkbenchError: ``out`` is a directory, its directory is missing or not a directory,
            or a file cannot be created there.
    """
    out = Path(out).expanduser()
    if out.is_dir():
        raise WorkbenchError(f"report output {str(out)!r} is a directory: expected a file path such as "
                             f"{str(out / 'report.html')!r}")
    folder = out.parent
    if not folder.exists():
        raise WorkbenchError(f"cannot write report {str(out)!r}: directory {str(folder)!r} does not exist")
    if not folder.is_dir():
        raise WorkbenchError(f"cannot write report {str(out)!r}: {str(folder)!r} is not a directory")
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=f".{out.name}.", suffix=".tmp")
    except OSError as exc:
        raise WorkbenchError(f"cannot write report {str(out)!r}: directory {str(folder)!r} is not writable "
                             f"({exc.strerror})") from None
    os.close(fd)
    os.unlink(probe)
    return out


def _model_for(run: Run, model):
    """The model that computes a run's missing analyses: ``model`` (handle or source) or the run's own source."""
    from workbench.models import load_model

    if model is not None and not isinstance(model, str):
        return model
    if model is None:
        info = run.manifest.get("model") or {}
        model = info.get("source")
        if not model or model == "in-memory":
            raise WorkbenchError(
                f"run {str(run.path)!r} lacks analyses and its model ({info.get('name')!r}) was built in memory: "
                "pass model= (the ModelHandle) to compute them, or compute=False to report what the run holds")
    return load_model(model)


def _complete(run: Run, model, prompts, progress: bool) -> tuple[Run, sections.Tables | None]:
    """Run the registered analyses the run holds neither as a readable table nor as skipped.
    Returns the run and, when nothing was missing, the tables it read to find that out (each
    read and hash-checked once per report: `render` goes on with them)."""
    from workbench.analyze import analyze
    from workbench.prompts import load_prompts

    tables = sections.Tables(run)
    skipped = run.manifest.get("skipped") or {}
    missing = [n for n in ANALYZERS if n not in skipped and (n not in run or tables.get(n) is None)]  # damaged too
    if not missing:
        return run, tables
    model = _model_for(run, model)
    stored = run.manifest.get("model") or {}
    if stored.get("name") not in (None, model.name) or stored.get("n_heads") not in (None, model.n_heads):
        raise WorkbenchError(f"run {str(run.path)!r} was made with model {stored.get('name')!r}, "
                             f"not {model.name!r}: pass its model to compute the missing analyses {missing}")
    what = "the model's default prompts" if prompts is None else "the prompts given"
    if prompts is None or isinstance(prompts, (str, Path)):
        prompts = load_prompts(prompts, model=model)
    prompts = list(prompts)
    if run.manifest.get("prompts_hash") not in (None, prompts_hash(prompts)):
        raise WorkbenchError(f"run {str(run.path)!r} was made from other prompts than {what}: pass the run's "
                             f"prompts (--prompts FILE) to compute its missing analyses {missing}")
    return analyze(model, prompts, out=run.path, analyses=missing, progress=progress), None


def render(run: Run, tables: sections.Tables | None = None) -> tuple[str, int]:
    """The report page of a run as HTML text, and how many figures it holds (``tables``: the
    run's tables already read, e.g. by `_complete`; default: read here)."""
    manifest = run.manifest
    model = (manifest.get("model") or {}).get("name") or "unknown model"
    doc = page.Page(title=f"Attention Workbench report: {model}")
    tables = tables if tables is not None else sections.Tables(run)
    skipped = manifest.get("skipped") or {}
    doc.add("findings", "Findings", sections.findings_section(doc, tables))
    doc.add("ranked", "Heads ranked by each score", sections.ranked_section(tables))
    method, analysed, nav = [], [], [("findings", "Findings"), ("ranked", "Ranked heads")]
    names = [n for n in list(ANALYZERS) + [n for n in run.tables if n not in ANALYZERS] if n not in sections.SUPPORT]
    for name in names:
        analyzer = ANALYZERS.get(name)
        title = analyzer.title if analyzer else name
        anchor = f"analysis-{name}"
        sources = analyzer.sources if analyzer else ()
        cite = "".join(f"<li>{html.escape(s)}</li>" for s in sources)
        cite = f"<h3>Sources</h3><ul>{cite}</ul>" if cite else ""
        method.append([title, f"table {name}", "; ".join(sources) or "—"])
        nav.append((anchor, name))
        if name in skipped:
            doc.add(anchor, title, f"<p>Not applicable to this model: {html.escape(str(skipped[name]))}</p>{cite}",
                    css="skipped")
            continue
        frame = tables.get(name)
        if frame is None:
            why = "Not computed in this run" if name not in run else f"Its table cannot be read: {tables.problem(name)}"
            doc.add(anchor, title, f"<p>{html.escape(why)}. Compute it with "
                    f"<code>{html.escape(run.restore_command([name]))}</code>, then report again.</p>" + cite,
                    css="missing")
            continue
        meta = manifest["tables"][name]
        facts = (f'<p class="note">table <code>{html.escape(name)}</code>: {len(frame)} rows; columns '
                 f'{html.escape(", ".join(map(str, frame.columns)))}; capture {html.escape(str(meta.get("capture_mode")))}'
                 f', backend {html.escape(page.fmt(meta.get("backend")))}, {html.escape(page.fmt(meta.get("seconds")))} s</p>')
        used = sections.prompts_used(tables, name)
        defined = [sections.term_link(c, name) for c in frame.columns if sections.lookup(c, name) is not None]
        columns = f'<p class="note">Columns: {" · ".join(defined)} (see the glossary).</p>' if defined else ""
        if frame.empty:
            doc.add(anchor, title, facts + used + "<p>The analysis found nothing: the table has no rows.</p>" + cite)
            continue
        figures = analyzer.make_figures(frame) if analyzer else []
        body = facts + used + columns + sections.flags(frame) + "".join(doc.figure(f) for f in figures) + cite
        doc.add(anchor, title, body)
        analysed.append(name)
    doc.add("glossary", "Glossary", sections.glossary_section(tables))
    doc.add("prompts", "Prompts", sections.prompts_section(tables))
    note = ('<p>Each analysis follows the definition of the paper(s) below; thresholds and defaults are '
            "documented in the docstring of its function. Attention is read exactly from the "
            "TransformerLens hook <code>blocks.{L}.attn.hook_pattern</code> (capture \"exact\") or as "
            "statistics of the real query/key the model uses, never materialising N×N (capture \"stream\").</p>")
    doc.add("method", "Method", note + page.table(method, ["analysis", "stored as", "sources"]))
    shrunk = f'<p class="note">{doc.downsampled} figure(s) were downsampled to fit the page.</p>' if doc.downsampled else ""
    doc.add("provenance", "Provenance", page.provenance(manifest) + shrunk)
    nav += [("glossary", "Glossary"), ("prompts", "Prompts"), ("method", "Method"), ("provenance", "Provenance")]
    subtitle = (f"{manifest.get('n_prompts')} prompts · analyses: {len(analysed)} with results, "
                f"{len(skipped)} not applicable · run {run.path.name}")
    return doc.render(subtitle, nav), doc.n_figures


def _write(text: str, out: Path) -> Path:
    """Write ``text`` to ``out`` atomically (temp file in the same folder, then rename)."""
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out


def compare_report(run_a: Run | str | Path, run_b: Run | str | Path, out: str | Path = "compare.html") -> Path:
    """Write one self-contained HTML page comparing two runs (e.g. two models, or two checkpoints
    of one): model-level numbers side by side, every shared score by relative layer depth, and
    per-head differences when the models have the same shape. Computes nothing.

    Raises:
        WorkbenchError: unwritable ``out``, a missing or damaged run.
    """
    out = check_output(out)
    runs = [r if isinstance(r, Run) else Run.open(r) for r in (run_a, run_b)]
    return _write(render_compare(*runs)[0], out)


def report(run: Run | str | Path, out: str | Path = "report.html", *, model=None, prompts=None,
           compute: bool = True, progress: bool = True) -> Path:
    """Write one self-contained HTML report of a run.

    Args:
        run: a `Run` or a run directory.
        out: the HTML file to write (replaced atomically: no partial file is ever left).
        model: a `ModelHandle` or source for analyses the run lacks (default: the run's own
            source, reloaded; an in-memory model must be passed).
        prompts: the run's prompts (strings or a file), needed only when the run lacks analyses
            and was not made from the model's default prompts.
        compute: run the registered analyses the run lacks (through `wb.analyze`, which resumes)
            before writing; with False, their sections say they were not computed.
        progress: progress bars while computing.
    Returns:
        The path of the written file.
    Raises:
        WorkbenchError: unwritable ``out`` (checked before anything runs), a missing or damaged
            run, or a model/prompt set that does not match the run.
    """
    out = check_output(out)
    run = run if isinstance(run, Run) else Run.open(run)
    tables = None
    if compute:
        run, tables = _complete(run, model, prompts, progress)
    return _write(render(run, tables)[0], out)


def _check_not_stale(cached: Path, model) -> None:
    """Refuse a cached run made before the model's weights last changed (e.g. a retrained demo)."""
    manifest = cached / "manifest.json"
    folder = (getattr(model, "meta", None) or {}).get("path")
    if not manifest.exists() or not folder:
        return
    weights = [p for p in Path(folder).iterdir() if p.suffix in (".safetensors", ".bin")]
    created = Run.open(cached).manifest.get("created")
    try:
        made = datetime.strptime(created, "%Y-%m-%dT%H:%M:%S%z").timestamp()
    except (TypeError, ValueError):
        return
    if weights and max(p.stat().st_mtime for p in weights) > made + 1:
        raise WorkbenchError(f"the cached run {str(cached)!r} was made before the weights in {folder!r} changed: "
                             f"delete {str(cached)!r} to analyse the model again, or pass it as RUN to report it as is")


def report_model(source: str = "demo", out: str | Path = "report.html", *, prompts=None, runs: str | Path = "runs",
                 progress: bool = True) -> Path:
    """Analyse a model into a cached run directory and report it (what ``workbench report`` does
    with no RUN argument).

    The run lives in ``runs/<model>`` for the model's default prompts and in
    ``runs/<model>-<prompts sha256[:8]>`` for a prompt file, so a second report reuses it.
    """
    from workbench.analyze import analyze
    from workbench.models import load_model
    from workbench.prompts import load_prompts

    out = check_output(out)
    texts = load_prompts(prompts) if prompts is not None else None  # fail before loading the model
    model = load_model(source)
    suffix = "" if texts is None else f"-{prompts_hash(texts)[:8]}"
    cached = Path(runs) / f"{Path(source).name}{suffix}"
    _check_not_stale(cached, model)
    run = analyze(model, texts, out=cached, progress=progress)
    return report(run, out, model=model, prompts=texts, progress=progress)
