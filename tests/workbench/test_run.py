"""The run store: round trip, resume after interruption, and clear errors for bad runs."""

import json

import pandas as pd
import pytest

import workbench as wb
from workbench.analyzers import ANALYZERS, Analyzer
from workbench.run import FORMAT_VERSION, Run


def _frame(seed=0):
    return pd.DataFrame({"layer": [0, 0, 1], "head": [0, 1, 0], "score": [0.5 + seed, 0.25, 1.0]})


def test_round_trip(tmp_path):
    run = Run.create(tmp_path / "r", prompts=["a", "b"])
    run.add_table("scores", _frame(), mode="stream", backend="reference", seconds=1.23456)
    again = Run.open(tmp_path / "r")
    pd.testing.assert_frame_equal(again.table("scores"), _frame())
    info = again.manifest["tables"]["scores"]
    assert info["capture_mode"] == "stream" and info["backend"] == "reference" and info["seconds"] == 1.235
    assert again.manifest["format_version"] == FORMAT_VERSION and again.manifest["n_prompts"] == 2
    assert "torch" in again.manifest["versions"] and len(again.manifest["prompts_hash"]) == 64
    assert "scores" in again._repr_html_() and not list((tmp_path / "r").glob("*.tmp"))


def test_manifest_records_the_model(tiny, tmp_path):
    model, _ = tiny
    run = wb.analyze(model, ["w1 w2 w3", "w4 w5"], out=tmp_path / "r", analyses=["head_summary"], progress=False)
    info = run.manifest["model"]
    assert info["name"] == model.name and info["n_heads"] == 4 and info["is_causal"] == model.is_causal
    assert run.manifest["tables"]["head_summary"]["capture_mode"] == "exact"


def test_interrupted_run_keeps_finished_tables_and_resumes(tiny, tmp_path, monkeypatch):
    model, _ = tiny
    calls = []

    def explode(model, prompts):
        calls.append("explode")
        raise KeyboardInterrupt

    monkeypatch.setitem(ANALYZERS, "zz_explode", Analyzer("zz_explode", explode, "boom"))
    prompts, names = ["w1 w2 w3", "w4 w5"], ["head_summary", "zz_explode"]
    with pytest.raises(KeyboardInterrupt):
        wb.analyze(model, prompts, out=tmp_path / "r", analyses=names, progress=False)
    reopened = Run.open(tmp_path / "r")
    assert reopened.tables == ["head_summary"]
    finished = reopened.table("head_summary")
    # resuming recomputes only what is missing
    monkeypatch.setitem(ANALYZERS, "zz_explode", Analyzer("zz_explode", lambda m, p: _frame(), "ok"))
    resumed = wb.analyze(model, prompts, out=tmp_path / "r", analyses=names, progress=False)
    assert resumed.tables == ["head_summary", "zz_explode"]
    pd.testing.assert_frame_equal(resumed.table("head_summary"), finished)
    with pytest.raises(wb.WorkbenchError, match="holds a run over other prompts"):
        wb.analyze(model, ["w9"], out=tmp_path / "r", analyses=names, progress=False)


def test_bad_runs(tmp_path):
    with pytest.raises(wb.WorkbenchError, match="run directory '.*missing' does not exist"):
        Run.open(tmp_path / "missing")
    (tmp_path / "plain").mkdir()
    with pytest.raises(wb.WorkbenchError, match="is not a run: it has no manifest.json"):
        Run.open(tmp_path / "plain")
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "manifest.json").write_text('{"name": "something else"}')
    with pytest.raises(wb.WorkbenchError, match="is not a workbench run"):
        Run.open(tmp_path / "foreign")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "manifest.json").write_text('{"format": ')
    with pytest.raises(wb.WorkbenchError, match="damaged manifest.json"):
        Run.open(tmp_path / "broken")

    run = Run.create(tmp_path / "newer")
    manifest = json.loads((tmp_path / "newer" / "manifest.json").read_text())
    manifest["format_version"] = FORMAT_VERSION + 1
    (tmp_path / "newer" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(wb.WorkbenchError, match=r"format version 2, newer than this workbench reads \(1\)"):
        Run.open(tmp_path / "newer")

    run = Run.create(tmp_path / "damaged")
    run.add_table("scores", _frame())
    (tmp_path / "damaged" / "scores.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(wb.WorkbenchError, match="table 'scores' of run .* is damaged"):
        Run.open(tmp_path / "damaged").table("scores")
    with pytest.raises(wb.WorkbenchError, match="has no table 'nope'"):
        run.table("nope")
    with pytest.raises(wb.WorkbenchError, match="table name '../x' is invalid"):
        run.add_table("../x", _frame())
    (tmp_path / "occupied").mkdir()
    (tmp_path / "occupied" / "notes.txt").write_text("mine")
    with pytest.raises(wb.WorkbenchError, match="exists and is not an empty directory or a run"):
        Run.create(tmp_path / "occupied")
    assert (tmp_path / "occupied" / "notes.txt").read_text() == "mine"


def test_failed_write_keeps_the_old_table(tmp_path):
    run = Run.create(tmp_path / "r")
    run.add_table("scores", _frame())
    with pytest.raises(Exception):
        run.add_table("scores", pd.DataFrame({"bad": [object()]}))  # pyarrow cannot store it
    pd.testing.assert_frame_equal(Run.open(tmp_path / "r").table("scores"), _frame())
    assert not list((tmp_path / "r").glob("*.tmp"))
