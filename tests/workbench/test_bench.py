"""The capture benchmark's bookkeeping (no timings are asserted: benchmarks print, tests check)."""

import pandas as pd
import pytest

import workbench as wb

from workbench.bench import _extrapolate, bench_capture, largest_completed, summarize
from workbench.cli import main


def test_extrapolation_is_quadratic():
    assert _extrapolate([], 512) is None
    assert _extrapolate([(1024, 1.5)], 4096) == pytest.approx(24.0)


def test_summary_ratios_and_largest_n():
    frame = pd.DataFrame([
        {"path": "stream", "N": 512, "seconds": 1.0, "peak_rss_gib": 1.1, "delta_gib": 0.1, "status": "ok"},
        {"path": "run_with_cache", "N": 512, "seconds": 4.0, "peak_rss_gib": 2.0, "delta_gib": 1.0, "status": "ok"},
        {"path": "stream", "N": 1024, "seconds": 2.0, "peak_rss_gib": 1.2, "delta_gib": 0.2, "status": "ok"},
        {"path": "run_with_cache", "N": 1024, "seconds": None, "peak_rss_gib": None, "delta_gib": None,
         "status": "not run: ~25 GiB predicted > 20 GiB"},
    ])
    wide = summarize(frame)
    assert wide.loc[wide.N == 512, "time_ratio"].item() == pytest.approx(0.25)
    assert wide.loc[wide.N == 512, "memory_ratio"].item() == pytest.approx(0.1)
    assert largest_completed(frame) == {"run_with_cache": 512, "stream": 1024}
    assert "over_sdpa" not in wide.columns  # no floor measured, no ratio to it
    floor = pd.DataFrame([
        {"path": "sdpa", "N": 512, "seconds": 0.5, "peak_rss_gib": 1.0, "delta_gib": 0.01, "status": "ok"},
        {"path": "stream_rows", "N": 512, "seconds": 0.75, "peak_rss_gib": 1.0, "delta_gib": 0.05, "status": "ok"},
    ])
    wide = summarize(pd.concat([frame, floor]))
    assert wide.loc[wide.N == 512, "over_sdpa"].item() == pytest.approx(2.0)
    assert wide.loc[wide.N == 512, "rows_over_sdpa"].item() == pytest.approx(1.5)


def test_one_real_case_runs_in_a_subprocess():
    frame = bench_capture("minilm", sizes=[16], paths=["stream"], timeout=300, reps=2)
    row = frame.iloc[0]
    assert row.status == "ok" and row.seconds >= row.seconds_min > 0 and row.peak_rss_gib > row.delta_gib >= 0
    assert row.source == "minilm" and row.torch


def test_bad_sizes_and_paths_are_one_clear_error(capsys):
    with pytest.raises(SystemExit) as done:
        main(["bench", "--sizes", "0,-5"])
    assert done.value.code == 2 and "each of --sizes must be a positive int; got 0" in capsys.readouterr().err
    with pytest.raises(wb.WorkbenchError, match=r"unknown capture path\(s\) \['fast'\]"):
        bench_capture("demo", sizes=[16], paths=["fast"])


def test_cli_rejects_unknown_benchmark(capsys):
    with pytest.raises(SystemExit) as done:
        main(["bench", "--what", "everything"])
    assert done.value.code == 2 and "--what 'everything' is unknown" in capsys.readouterr().err
