"""``workbench demo``: train (and measure) the bundled demo model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(help="The bundled demo model organism.", no_args_is_help=True)


@app.callback()
def _main() -> None:
    """The bundled demo model organism (data/demo) and its suites (data/suites)."""


@app.command()
def train(
    out: Path = typer.Option(Path("data/demo"), "--out", help="HF model directory to write."),
    seed: int = typer.Option(0, "--seed", help="Seed for init, data and order."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Override the number of steps."),
    suites_out: Path = typer.Option(Path("data/suites"), "--suites-out",
                                    help="Where to write the held-out suites."),
    tiny: bool = typer.Option(False, "--tiny", help="A tiny model (smoke runs only)."),
    evaluate: bool = typer.Option(True, "--evaluate/--no-evaluate",
                                  help="Measure the bars and write training_report.json."),
) -> None:
    """Train the demo Llama on the synthetic corpus, export it and print the report."""
    from dataclasses import replace

    from workbench.demo import corpus
    from workbench.demo.train import TINY, DemoConfig, train as run_train, write_report

    from workbench.checks import integer, positive_int

    seed = integer("--seed", seed, low=0)  # before anything is written
    steps = None if steps is None else positive_int("--steps", steps)
    cfg = DemoConfig(seed=seed)
    if tiny:
        cfg = replace(cfg, **TINY)
    if steps is not None:
        cfg = replace(cfg, steps=steps)
    paths = corpus.write_suites(suites_out)
    typer.echo(f"suites: {', '.join(str(p) for p in paths.values())}")
    _, _, info = run_train(cfg, out, log=typer.echo)
    report = dict(info)
    if evaluate:
        from workbench.demo.evaluate import evaluate_demo

        report.update(evaluate_demo(out, suites_out, seed=seed))
    path = write_report(out, report)
    summary = {k: report[k] for k in ("steps", "seconds", "seed") if k in report}
    if evaluate:
        summary["accuracy"] = report["accuracy"]
        summary["sink_share"] = report["sink"]["share"]
        summary["ablation"] = {k: v for k, v in report["ablation"].items()
                               if k not in ("random_heads",)}
    typer.echo(json.dumps(summary, indent=1))
    typer.echo(f"report: {path}")


if __name__ == "__main__":
    app()
