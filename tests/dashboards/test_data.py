"""dashboards.data: which runs a folder holds, safe run ids, the table cache, on-demand patterns."""

from __future__ import annotations

import socket
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

import workbench as wb
from dashboards import data
from dashboards.app import check_port
from tests.dashboards.conftest import TINY_PROMPTS
from tests.dashboards.fixtures import frames, make_run
from workbench.errors import WorkbenchError


def test_run_ids_lists_runs_two_levels_deep_and_not_through_symlinks_out(runs_root, tmp_path):
    assert data.run_ids(runs_root) == ["broken-table", "damaged", "full", "group/partial", "tiny"]
    assert data.run_ids(runs_root / "full") == ["."]  # a run served alone
    (tmp_path / "empty").mkdir()
    assert data.run_ids(tmp_path / "empty") == []


def test_check_root_errors(runs_root, tmp_path):
    assert data.check_root(runs_root) == runs_root.resolve()
    with pytest.raises(WorkbenchError, match="does not exist: expected a run directory or a folder of runs"):
        data.check_root(tmp_path / "nope")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(WorkbenchError, match="is a file"):
        data.check_root(tmp_path / "file.txt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(WorkbenchError, match="holds no run .*workbench analyze --out DIR"):
        data.check_root(tmp_path / "empty")


@pytest.mark.parametrize("run_id, expected", [
    ("../root-outside/secret", "points outside the served folder"),
    ("../../../../etc", "points outside the served folder"),
    ("full/../../root-outside/secret", "points outside the served folder"),
    ("escape", "points outside the served folder"),  # a symlink inside root to a run outside
    ("/etc", "is an absolute path"),
    ("~/x", "is an absolute path"),
    ("a\x00b", "malformed"),
])
def test_run_ids_from_the_url_cannot_leave_the_served_folder(runs_root, run_id, expected):
    outside = runs_root.parent / "root-outside" / "secret"
    assert (outside / "manifest.json").exists()  # there is something real to steal
    with pytest.raises(WorkbenchError, match=expected) as info:
        data.open_run(runs_root, run_id)
    assert str(outside) not in str(info.value)  # the message never shows the resolved outside path
    with pytest.raises(WorkbenchError, match="is an absolute path"):
        data.open_run(runs_root, str(outside))


def test_open_run_resolves_inside_and_reports_missing_and_damaged(runs_root):
    assert data.open_run(runs_root, "group/partial").path == (runs_root / "group" / "partial").resolve()
    assert data.open_run(runs_root, None).path.name == "broken-table"  # the first run by default
    assert data.open_run(runs_root / "full", None).path == (runs_root / "full").resolve()
    with pytest.raises(WorkbenchError, match="there is no run 'nope' in the served folder"):
        data.open_run(runs_root, "nope")
    with pytest.raises(WorkbenchError, match="damaged manifest.json"):
        data.open_run(runs_root, "damaged")


def test_table_cache_rereads_a_rewritten_table_and_hands_out_copies(tmp_path):
    run = make_run(tmp_path / "r", ["head_summary"])
    first = data.table(run, "head_summary")
    pd.testing.assert_frame_equal(first, frames()["head_summary"])
    first.loc[0, "entropy"] = -1.0  # mutating the copy must not reach the cache
    assert data.table(run, "head_summary").loc[0, "entropy"] == frames()["head_summary"].loc[0, "entropy"]
    new = frames(seed=1)["head_summary"]
    run.add_table("head_summary", new)  # re-analysed: new file, new mtime/size key
    pd.testing.assert_frame_equal(data.table(run, "head_summary"), new)


def test_figures_are_cached_per_table_version(tmp_path):
    run = make_run(tmp_path / "r", [])
    run.add_table("my_scores", frames()["sink_scores"])  # not registered: the default layer × head grids
    first = data.figures(run, "my_scores")
    assert data.figures(run, "my_scores") is first  # made once
    np.testing.assert_allclose(np.asarray(first[0].data[0].z).ravel(), frames()["sink_scores"]["sink_score"])
    run.add_table("my_scores", frames(seed=2)["sink_scores"])
    again = data.figures(run, "my_scores")
    np.testing.assert_allclose(np.asarray(again[0].data[0].z).ravel(), frames(seed=2)["sink_scores"]["sink_score"])


def test_table_errors_are_workbench_errors(runs_root):
    run = data.open_run(runs_root, "broken-table")
    with pytest.raises(WorkbenchError, match="table 'sink_scores' of run .* is damaged or missing"):
        data.table(run, "sink_scores")
    with pytest.raises(WorkbenchError, match="has no table 'niah'"):
        data.table(run, "niah")


def test_per_head_and_head_groups():
    f = frames()
    assert data.per_head(f["token_sinks"]) is None  # token level
    assert data.per_head(f["niah"]) is None  # no layer/head
    sal = data.per_head(f["saliency_alignment"])
    assert set(sal["view"]) == {"head"} and len(sal) == 32 and (sal[["layer", "head"]] >= 0).all().all()
    groups = data.head_groups(f["circuits"])
    assert [w for w, _ in groups] == [{"task": t, "method": m} for t in ("ioi", "colored_objects")
                                      for m in ("attribution_patching", "activation_patching")]
    for where, part in groups:
        assert len(part) == 32 and not part.duplicated(["layer", "head"]).any()
        assert (part["task"] == where["task"]).all()
    # a per-head text column (the pattern type) does not split the table
    assert [w for w, _ in data.head_groups(f["head_patterns"])] == [{}]


def test_model_source(tmp_path, tiny_dir):
    def run_with(source):
        return SimpleNamespace(manifest={"model": {"source": source}})

    assert data.model_source(run_with("demo")) == "demo"
    assert data.model_source(run_with("minilm")) == "minilm"
    assert data.model_source(run_with(str(tiny_dir))) == str(tiny_dir)
    assert data.model_source(run_with(str(tmp_path / "gone"))) is None
    assert data.model_source(run_with("in-memory")) is None
    assert data.model_source(SimpleNamespace(manifest={"model": None})) is None


def test_run_prompts_recovers_default_prompts_by_hash(tmp_path):
    defaults = wb.load_prompts(None, model=SimpleNamespace(source="demo"))
    good = make_run(tmp_path / "good", ["head_summary"], source="demo", prompts=defaults)
    assert data.run_prompts(good) == defaults
    other = make_run(tmp_path / "other", ["head_summary"], source="demo", prompts=["w1 w2"])
    assert data.run_prompts(other) == []  # other prompts: the hash does not match


def test_head_pattern_equals_eager_attention_of_the_model(tiny_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    prompt = "w5 w6 w7 w8 w5 w6"
    pattern, tokens = data.head_pattern(str(tiny_dir), prompt, 1, 2)
    hf = AutoModelForCausalLM.from_pretrained(tiny_dir, attn_implementation="eager")  # independent oracle
    tok = AutoTokenizer.from_pretrained(tiny_dir)
    ids = tok(prompt, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        expected = hf(ids, output_attentions=True).attentions[1][0, 2].numpy()
    assert tokens == ("<s>", "w5", "w6", "w7", "w8", "w5", "w6")
    np.testing.assert_allclose(pattern, expected, atol=1e-5)
    with pytest.raises(WorkbenchError, match="layer 7 is out of range"):
        data.head_pattern(str(tiny_dir), prompt, 7, 0)
    with pytest.raises(WorkbenchError, match="the prompt is empty"):
        data.head_pattern(str(tiny_dir), "  ", 0, 0)
    assert TINY_PROMPTS  # the run over this model uses the same vocabulary


def test_check_port_reports_a_port_in_use():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(WorkbenchError, match=f"cannot serve on 127.0.0.1:{port}: .*pass --port N"):
            check_port("127.0.0.1", port)
    with pytest.raises(WorkbenchError, match="port 70000 is out of range: expected 1..65535"):
        check_port("127.0.0.1", 70000)
