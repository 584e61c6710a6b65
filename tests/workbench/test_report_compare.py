"""Comparing two runs: `workbench report RUN_A RUN_B` writes one self-contained page with the
model-level numbers of both side by side (from each analysis's summary), every shared score by
relative depth, and per-head differences only when the shapes match; plus `--version` and
`analyze --help`."""

from __future__ import annotations

import re

import pytest

import workbench as wb
from tests.dashboards.fixtures import frames, make_run, model_info
from workbench.cli import main
from workbench.report import render_compare


def _cli(capsys, *args):
    with pytest.raises(SystemExit) as done:
        main([str(a) for a in args])
    out = capsys.readouterr()
    return done.value.code, out.out, out.err


def _other_shape(path):
    run = wb.Run.create(path, model=model_info(n_layers=2, n_heads=4, name="other"), prompts=["w1"])
    f = frames()["sink_scores"]
    small = f[(f.layer < 2) & (f["head"] < 4)].assign(sink_score=lambda d: d.sink_score / 2)
    run.add_table("sink_scores", small.assign(is_sink=small.sink_score > 0.3))
    return run


def test_numbers_side_by_side_depth_profiles_and_differences_only_for_equal_shapes(tmp_path):
    a = make_run(tmp_path / "a")
    b = _other_shape(tmp_path / "b")
    text, n = render_compare(a, b)
    numbers = re.search(r'<section id="numbers".*?</section>', text, re.S).group(0)
    share_a = 100 * (frames()["sink_scores"].sink_score > 0.3).mean()
    share_b = 100 * (b.table("sink_scores").sink_score > 0.3).mean()
    row = re.search(r"<tr><td>Sink\^ε \(% of heads with α₀ &gt; 0.3\)</td>(.*?)</tr>", numbers).group(1)
    assert re.findall(r"<td[^>]*>(.*?)</td>", row) == [f"{share_a:.4g}", f"{share_b:.4g}"]
    assert "4 × 8" in numbers and "2 × 4" in numbers
    assert "differ in shape" in text and n == 1  # sink_scores is the only table both hold
    same, n_same = render_compare(a, make_run(tmp_path / "c"))
    assert "Per-head differences (B − A)" in same and n_same > 2 * 10


def test_cli_report_two_runs_version_and_analysis_names(tmp_path, capsys):
    make_run(tmp_path / "a")
    _other_shape(tmp_path / "b")
    code, out, err = _cli(capsys, "report", tmp_path / "a", tmp_path / "b", "--out", tmp_path / "cmp.html")
    assert code == 0 and out.startswith(f"wrote {tmp_path / 'cmp.html'}"), err
    assert "Attention Workbench comparison: A: fixture (a) vs B: other (b)" in (tmp_path / "cmp.html").read_text()
    code, _, err = _cli(capsys, "report", tmp_path / "a", tmp_path / "b", tmp_path / "a", "--out", tmp_path / "x.html")
    assert code == 2 and "report takes one run, or two runs to compare; got 3" in err
    code, _, err = _cli(capsys, "report", tmp_path / "a", tmp_path / "nope", "--out", tmp_path / "x.html")
    assert code == 2 and f"run directory '{tmp_path / 'nope'}' does not exist" in err
    assert not (tmp_path / "x.html").exists()
    code, out, _ = _cli(capsys, "--version")
    assert code == 0 and out.strip() == f"attention-workbench {wb.__version__}"
    code, out, _ = _cli(capsys, "analyze", "--help")
    flat = " ".join(out.split())
    assert code == 0 and all(name in flat.replace("│", "") .replace("  ", " ") or name in out for name in wb.ANALYZERS)


def test_compare_handles_runs_with_no_shared_table(tmp_path):
    a = make_run(tmp_path / "a", ["head_summary"])
    b = make_run(tmp_path / "b", ["sink_scores"])
    text, n = render_compare(a, b)
    assert n == 0 and "The runs share no per-head score." in text
