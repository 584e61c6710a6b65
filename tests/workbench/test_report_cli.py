"""Reports without the demo: downsampled heatmaps, rankings by each score's meaning, missing and
failing analyses, one-line CLI errors that leave no file behind, cached runs, the inner bar."""

from __future__ import annotations

import html
import os
import re
import time
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import pytest
import torch

import workbench as wb
from tests import tiny_models
from tests.workbench.report_helpers import EXTRA, check_self_contained, cli as _cli, registry
from workbench.analyzers import ANALYZERS, Analyzer
from workbench.report import report_model, sections
from workbench.report.figures import downsample_heatmaps


def test_downsampling_is_a_block_mean_and_leaves_head_grids_alone():
    z = np.arange(600 * 1000, dtype=float).reshape(600, 1000)
    fig, factor = downsample_heatmaps(go.Figure(go.Heatmap(z=z, x=list(range(1000)), y=list(range(600)))),
                                      max_side=100)
    small = np.asarray(fig.data[0].z)
    assert factor == 10 and small.shape == (100, 100)  # each axis reduced on its own: blocks of 6 x 10
    np.testing.assert_allclose(small, z.reshape(100, 6, 100, 10).mean(axis=(1, 3)))
    assert list(fig.data[0].x[:3]) == [0, 10, 20] and list(fig.data[0].y[:3]) == [0, 6, 12]
    assert "downsampled" in fig.layout.title.text
    ragged, _ = downsample_heatmaps(go.Figure(go.Heatmap(z=np.ones((5, 7)))), max_side=3)
    assert np.asarray(ragged.data[0].z).shape == (3, 3) and np.allclose(ragged.data[0].z, 1.0)
    grid = go.Figure(go.Heatmap(z=np.ones((12, 8)), customdata=np.zeros((12, 8, 2))))
    assert downsample_heatmaps(grid)[1] == 1 and grid.data[0].customdata is not None


def test_ranked_heads_follow_each_scores_meaning_per_task_and_skip_flags_counts_and_coordinates(tmp_path):
    import pandas as pd

    rows = []
    for task, sign in (("ioi", 1.0), ("colors", -1.0)):
        for layer in range(2):
            for head in range(3):
                rows.append({"task": task, "layer": layer, "head": head, "pattern": f"type{head}",
                             "effect": sign * (3 * layer + head) - 2.0, "cluster": head, "umap_x": float(head),
                             "in_circuit": sign * (3 * layer + head) > 3})
    circuits = pd.DataFrame(rows + [{"task": "ioi", "layer": -1, "head": -1, "pattern": "all", "effect": 99.0,
                                     "cluster": 0, "umap_x": 0.0, "in_circuit": True}])
    summary = pd.DataFrame({"layer": [0, 0, 1, 1], "head": [0, 1, 0, 1], "entropy": [2.0, 0.5, 1.0, 3.0],
                            "max_prob": [0.2, 0.9, 0.5, 0.1], "n_queries": 10})
    run = wb.Run.create(tmp_path / "run", prompts=["x"])
    run.add_table("circuits", circuits)
    run.add_table("head_summary", summary)
    text = sections.ranked_section(sections.Tables(run))
    rows = {}
    for m in re.finditer(r"<tr><td>(.*?)</td>(.*?)</tr>", text):
        cells = re.findall(r"<td>(.*?)</td>", m.group(2))
        rows[m.group(1) + " " + re.sub(r"<[^>]+>", "", cells[0])] = cells[1:]
    # effect ranks by |value| with the sign shown; the layer -1 aggregate is left out
    ioi = next(v for k, v in rows.items() if k.startswith("circuits [ioi]"))
    assert ioi == ["largest |value| first", "L1H2 (+3)", "L0H0 (-2)", "L1H1 (+2)", "L0H1 (-1)", "L1H0 (+1)"]
    colors = next(v for k, v in rows.items() if k.startswith("circuits [colors]"))
    assert colors[:3] == ["largest |value| first", "L1H2 (-7)", "L1H1 (-6)"]
    entropy = next(v for k, v in rows.items() if "entropy" in k)  # focused heads first, not the most diffuse
    assert entropy[:3] == ["lowest first", "L0H1 (0.5)", "L1H0 (1)"]
    assert not any("cluster" in k or "umap" in k or "in circuit" in k or "n_queries" in k for k in rows)
    assert sections.flags(circuits) == "<p>in_circuit [ioi]: 2 of 6 heads; in_circuit [colors]: 0 of 6 heads</p>"
    assert sections.per_head_parts(circuits.assign(position=0)) == []  # token-level tables are not ranked


def test_missing_analyses_are_computed_or_reported_as_missing(tmp_path):
    model = wb.load_model("tiny-gpt2", hf_model=tiny_models.hf_model("gpt2"), tokenizer=tiny_models.tokenizer("gpt2"))
    with registry("head_summary"):
        run = wb.analyze(model, tiny_models.PROMPTS, out=tmp_path / "run", analyses=["head_summary"], progress=False)
        with pytest.raises(wb.WorkbenchError, match="lacks analyses and its model .'tiny-gpt2'. was built in memory"):
            wb.report(run, tmp_path / "a.html")
        assert not (tmp_path / "a.html").exists()
        text = wb.report(run, tmp_path / "a.html", compute=False).read_text()
        assert "Not computed in this run" in re.search('id="analysis-first_key_mass".*?</section>', text, re.S).group(0)
        other = wb.load_model("tiny-llama", hf_model=tiny_models.hf_model("llama"),
                              tokenizer=tiny_models.tokenizer("llama"))
        with pytest.raises(wb.WorkbenchError, match="was made with model 'tiny-gpt2', not 'tiny-llama'"):
            wb.report(run, tmp_path / "b.html", model=other, prompts=tiny_models.PROMPTS)
        with pytest.raises(wb.WorkbenchError, match="was made from other prompts than the prompts given"):
            wb.report(run, tmp_path / "b.html", model=model, prompts=["w1 w2"])
        wb.report(tmp_path / "run", tmp_path / "b.html", model=model, prompts=tiny_models.PROMPTS, progress=False)
    assert "first_key_mass" in wb.Run.open(tmp_path / "run")  # computed into the run


def test_a_damaged_table_gets_its_restore_command_and_each_table_is_checked_once(tmp_path, monkeypatch):
    import pandas as pd

    import workbench.run as run_module
    from workbench.report import render

    heads = {"layer": [0, 0, 1, 1], "head": [0, 1, 0, 1]}
    run = wb.Run.create(tmp_path / "run", prompts=["x"])
    run.add_table("head_summary", pd.DataFrame({**heads, "entropy": [2.0, 0.5, 1.0, 3.0], "max_prob": 0.5}))
    run.add_table("sink_scores", pd.DataFrame({**heads, "sink_score": [0.9, 0.1, 0.2, 0.3]}))
    (tmp_path / "run" / "sink_scores.parquet").write_bytes(b"not parquet at all")
    hashed = []
    real = run_module.file_sha256
    monkeypatch.setattr(run_module, "file_sha256", lambda path: hashed.append(Path(path).name) or real(path))
    text, _ = render(wb.Run.open(tmp_path / "run"))
    section = re.search('id="analysis-sink_scores".*?</section>', text, re.S).group(0)
    assert "Its table cannot be read: its file sink_scores.parquet has" in section
    assert html.escape(run.restore_command(["sink_scores"])) in section
    assert "L0H1" in re.search('id="ranked".*?</section>', text, re.S).group(0)  # the intact table is still ranked
    assert hashed.count("head_summary.parquet") == 1  # read (and hash-checked) once for the whole report
    hashed.clear()
    (tmp_path / "run" / "sink_scores.parquet").unlink()
    with registry("head_summary"):  # nothing to compute: wb.report checks each table once, then renders with it
        run = wb.Run.open(tmp_path / "run")
        run.mark_skipped(EXTRA.name, "not part of this test")
        wb.report(run, out=tmp_path / "r.html", compute=True)
    assert hashed.count("head_summary.parquet") == 1


def test_a_failing_analysis_leaves_the_old_report_and_no_temp_file(tmp_path, monkeypatch):
    def broken(model, prompts):
        raise RuntimeError("boom in the middle of an analysis")

    model = wb.load_model("tiny-llama", hf_model=tiny_models.hf_model("llama"), tokenizer=tiny_models.tokenizer("llama"))
    with registry("head_summary"):
        ANALYZERS["broken"] = Analyzer("broken", broken, "Broken")
        run = wb.analyze(model, tiny_models.PROMPTS, out=tmp_path / "run", analyses=["head_summary"], progress=False)
        (tmp_path / "report.html").write_text("old report")
        with pytest.raises(RuntimeError, match="boom"):
            wb.report(run, tmp_path / "report.html", model=model, prompts=tiny_models.PROMPTS, progress=False)
    assert (tmp_path / "report.html").read_text() == "old report"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html", "run"]


@pytest.mark.parametrize("args, message", [
    (["report", "{tmp}/no-run", "--out", "{tmp}/r.html"], "run directory '{tmp}/no-run' does not exist"),
    (["report", "--model", "nobody/nothing", "--out", "{tmp}/r.html"], "cannot load hub id 'nobody/nothing'"),
    (["report", "--model", "/no/such/model", "--out", "{tmp}/r.html"], "model directory '/no/such/model' does not exist"),
    (["report", "--out", "{tmp}"], "report output '{tmp}' is a directory: expected a file path such as "
                                   "'{tmp}/report.html'"),
    (["report", "--out", "{tmp}/file.txt/r.html"], "cannot write report '{tmp}/file.txt/r.html': "
                                                   "'{tmp}/file.txt' is not a directory"),
    (["report", "--out", "{tmp}/no/dir/r.html"], "cannot write report '{tmp}/no/dir/r.html': "
                                                 "directory '{tmp}/no/dir' does not exist"),
])
def test_cli_errors_are_one_line_and_write_nothing(tmp_path, capsys, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "file.txt").write_text("not a directory")
    code, out, err = _cli(capsys, *[a.format(tmp=tmp_path) for a in args])
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("error: " + message.format(tmp=tmp_path)), err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt"]  # no report, no temp file, no runs/


def test_cli_reports_an_existing_run(tmp_path, capsys):
    model_dir = tmp_path / "model"
    tiny_models.hf_model("llama").save_pretrained(model_dir)
    tiny_models.tokenizer("llama").save_pretrained(model_dir)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(tiny_models.PROMPTS) + "\n")
    code, _, _ = _cli(capsys, "analyze", "--model", model_dir, "--prompts", prompts, "--out", tmp_path / "run",
                      "--analysis", "head_summary")
    assert code == 0
    with registry("head_summary") as names:
        code, out, err = _cli(capsys, "report", tmp_path / "run", "--prompts", prompts, "--out", tmp_path / "r.html")
    assert code == 0 and out.startswith(f"wrote {tmp_path / 'r.html'} (")
    run = wb.Run.open(tmp_path / "run")
    assert run.tables == names  # the missing test analysis was computed, with the run's own model
    check_self_contained((tmp_path / "r.html").read_text())


def test_the_cached_run_is_reused_until_the_weights_change(tmp_path):
    model_dir = tmp_path / "model"
    tiny_models.hf_model("llama").save_pretrained(model_dir)
    tiny_models.tokenizer("llama").save_pretrained(model_dir)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(tiny_models.PROMPTS) + "\n")
    with registry("head_summary"):
        report_model(str(model_dir), tmp_path / "a.html", prompts=prompts, runs=tmp_path / "runs", progress=False)
        (cached,) = (tmp_path / "runs").iterdir()
        assert cached.name == f"model-{wb.run.prompts_hash(tiny_models.PROMPTS)[:8]}"
        written = (cached / "head_summary.parquet").stat().st_mtime_ns
        report_model(str(model_dir), tmp_path / "b.html", prompts=prompts, runs=tmp_path / "runs", progress=False)
        assert (cached / "head_summary.parquet").stat().st_mtime_ns == written  # reused, not recomputed
        later = time.time() + 120
        os.utime(model_dir / "model.safetensors", (later, later))  # as if the model were retrained
        with pytest.raises(wb.WorkbenchError, match=f"the cached run '{cached}' was made before the weights"):
            report_model(str(model_dir), tmp_path / "c.html", prompts=prompts, runs=tmp_path / "runs")
    assert not (tmp_path / "c.html").exists()


def test_the_inner_bar_counts_forwards_and_leaves_no_hook(capsys):
    from workbench.progress import forward_bar

    model = wb.load_model("tiny-llama", hf_model=tiny_models.hf_model("llama"), tokenizer=tiny_models.tokenizer("llama"))
    ids, mask = model.to_tokens(tiny_models.PROMPTS[:1])
    with torch.no_grad():
        plain = model.hf_model(input_ids=ids).logits
        with forward_bar(model, "test", enable=True) as bar:
            counted = model.hf_model(input_ids=ids).logits
            model.bridge(ids)
            wb.capture_patterns(model, tiny_models.PROMPTS[:2])
    assert bar.n == 3  # one per forward, whichever entry point ran it
    assert torch.equal(plain, counted)  # the hook does not touch the inputs
    assert not model.hf_model._forward_pre_hooks and not model.bridge._forward_pre_hooks
