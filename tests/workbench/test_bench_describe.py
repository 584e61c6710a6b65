"""The describe benchmark's prompts and bookkeeping (no timings are asserted: benchmarks print)."""

import pandas as pd
import pytest

import workbench as wb
from workbench.benchmarks.describe import PATHS, bench_prompts, main, summarize


def test_bench_prompts_spread_over_the_lengths_and_repeat():
    model = wb.load_model("demo")
    prompts = bench_prompts(model, 20, 128)
    lengths = [len(p) for p in prompts]
    assert lengths[0] == 16 and lengths[-1] == 128 and lengths == sorted(lengths) and len(set(lengths)) == 20
    assert prompts == bench_prompts(model, 20, 128)
    assert len({tuple(p[:16]) for p in prompts}) > 10  # different openings


def test_summary_takes_per_round_ratios():
    frame = pd.DataFrame([
        {"path": "eager", "round": 0, "seconds": 2.0, "cpu_seconds": 1.0, "ratio_to_eager": 1.0, "cpu_ratio_to_eager": 1.0},
        {"path": "describe", "round": 0, "seconds": 3.0, "cpu_seconds": 1.5, "ratio_to_eager": 1.5, "cpu_ratio_to_eager": 1.5},
        {"path": "eager", "round": 1, "seconds": 4.0, "cpu_seconds": 1.0, "ratio_to_eager": 1.0, "cpu_ratio_to_eager": 1.0},
        {"path": "describe", "round": 1, "seconds": 5.0, "cpu_seconds": 2.0, "ratio_to_eager": 1.25, "cpu_ratio_to_eager": 2.0},
    ])
    out = summarize(frame).set_index("path")
    assert list(out.index) == ["eager", "describe"]
    assert out.loc["describe", "ratio"] == pytest.approx(1.375) and out.loc["describe", "cpu_ratio"] == pytest.approx(1.75)
    assert out.loc["describe", "ratio_min"] == 1.25 and out.loc["describe", "seconds"] == 4.0


@pytest.mark.slow
def test_one_small_round_on_the_demo(tmp_path, capsys):
    out = tmp_path / "describe.parquet"
    frame = main(["--model", "demo", "--prompts", "3", "--max-len", "24", "--rounds", "1", "--out", str(out)])
    assert list(frame.path) == list(PATHS) and (frame[frame.path == "eager"].ratio_to_eager == 1.0).all()
    assert pd.read_parquet(out).shape == frame.shape and frame.capture_mode.iloc[0] == "exact"
    assert "one eager forward with all attentions" in capsys.readouterr().out
