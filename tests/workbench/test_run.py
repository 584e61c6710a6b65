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
    with pytest.raises(ValueError):  # pyarrow.ArrowInvalid: it cannot store an object column
        run.add_table("scores", pd.DataFrame({"bad": [object()]}))
    pd.testing.assert_frame_equal(Run.open(tmp_path / "r").table("scores"), _frame())
    assert not list((tmp_path / "r").glob("*.tmp"))


# -- several writers, model fingerprints, damaged tables, file handling ----------------
import errno  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from tests import tiny_models  # noqa: E402
from workbench.run import model_fingerprint  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
PROMPTS = ["w1 w2 w3", "w4 w5"]

#: One writer: registers four toy analyses (each takes 0.3 s) and analyses them into the run
#: once the go-file exists, so the two processes' manifest updates interleave.
WRITER = """
import sys, time, pathlib
import pandas as pd
import workbench as wb
from tests import tiny_models
out, tag, ready, go = sys.argv[1], sys.argv[2], pathlib.Path(sys.argv[3]), pathlib.Path(sys.argv[4])
model = wb.load_model("tiny-llama", hf_model=tiny_models.hf_model("llama"), tokenizer=tiny_models.tokenizer("llama"))
def make(i):
    def fn(model, prompts):
        time.sleep(0.3)
        return pd.DataFrame({"layer": [0], "head": [i], "score": [float(i)]})
    return fn
names = [f"zz_{tag}{i}" for i in range(4)]
for i, name in enumerate(names):
    wb.register(wb.Analyzer(name, make(i), name))
ready.touch()
while not go.exists():
    time.sleep(0.02)
wb.analyze(model, ["w1 w2 w3", "w4 w5"], out=out, analyses=names, progress=False)
"""


def _tiny(seed=0):
    return wb.load_model("tiny-llama", hf_model=tiny_models.hf_model("llama", seed=seed),
                         tokenizer=tiny_models.tokenizer("llama"))


@pytest.mark.slow
def test_two_processes_analysing_one_run_keep_every_table(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    go = tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path / "r"), tag, str(tmp_path / tag), str(go)],
                              cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for tag in ("a", "b")]
    deadline = time.monotonic() + 240
    while not all((tmp_path / t).exists() for t in ("a", "b")) and time.monotonic() < deadline:
        assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
        time.sleep(0.1)
    go.touch()  # both start together
    outs = [p.communicate(timeout=240) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    run = Run.open(tmp_path / "r")
    expected = {f"zz_{t}{i}" for t in "ab" for i in range(4)}
    assert set(run.tables) == expected  # before the lock and merge: 4 to 6 of the 8
    for name in expected:
        assert run.problem(name) is None and run.table(name)["score"].tolist() == [float(name[-1])]


def test_resuming_with_another_model_is_refused(tmp_path):
    first = _tiny(seed=0)
    wb.analyze(first, PROMPTS, out=tmp_path / "r", analyses=["head_summary"], progress=False)
    other = _tiny(seed=1)  # same name, shape and prompts; other weights
    with pytest.raises(wb.WorkbenchError, match=r"was made with another model \('tiny-llama' from 'in-memory': "
                                                r"its weights sha256 is [0-9a-f]{12}, the model given has [0-9a-f]{12}\)"
                                                r".*Start a new run with another --out"):
        wb.analyze(other, PROMPTS, out=tmp_path / "r", analyses=["sink_scores"], progress=False)
    assert Run.open(tmp_path / "r").tables == ["head_summary"]  # nothing of the other model was stored
    same = _tiny(seed=0)  # the same weights in new objects: accepted
    resumed = wb.analyze(same, PROMPTS, out=tmp_path / "r", analyses=["sink_scores"], progress=False)
    assert resumed.tables == ["head_summary", "sink_scores"]
    stored = resumed.manifest["model_fingerprint"]
    assert stored == model_fingerprint(first) and stored["source"] == "in-memory" and stored["n_parameters"] > 0


def test_model_fingerprint_follows_the_weights_and_config(tmp_path):
    model = _tiny(seed=0)
    print_ = model_fingerprint(model)
    model.hf_model.save_pretrained(tmp_path / "m")  # an independent load path of the same weights
    tiny_models.tokenizer("llama").save_pretrained(tmp_path / "m")
    reloaded = wb.load_model(str(tmp_path / "m"))
    again = model_fingerprint(reloaded)
    assert again["weights_sha256"] == print_["weights_sha256"] and again["config_sha256"] == print_["config_sha256"]
    assert again["source"] == str(tmp_path / "m") and reloaded.meta["fingerprint"]["weights_sha256"] == print_["weights_sha256"]
    with torch_no_grad():
        reloaded.hf_model.model.layers[0].self_attn.q_proj.weight[0, 0] += 1.0  # in place: the cache must notice
    assert model_fingerprint(reloaded)["weights_sha256"] != print_["weights_sha256"]
    other = tiny_models.hf_model("llama")
    other.config.rope_theta = 1234.0
    changed = wb.load_model("x", hf_model=other, tokenizer=tiny_models.tokenizer("llama"))
    assert model_fingerprint(changed)["config_sha256"] != print_["config_sha256"]
    assert model_fingerprint(changed)["weights_sha256"] == print_["weights_sha256"]
    assert model_fingerprint(None) is None and model_fingerprint(object()) is None


def torch_no_grad():
    import torch

    return torch.no_grad()


def test_analyze_rewrites_missing_and_damaged_tables(tiny, tmp_path):
    model, _ = tiny
    names = ["head_summary", "sink_scores"]
    run = wb.analyze(model, PROMPTS, out=tmp_path / "r", analyses=names, progress=False)
    good = {n: run.table(n) for n in names}
    (tmp_path / "r" / "head_summary.parquet").unlink()
    flipped = tmp_path / "r" / "sink_scores.parquet"
    data = bytearray(flipped.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, one byte changed
    flipped.write_bytes(bytes(data))
    damaged = Run.open(tmp_path / "r")
    assert damaged.problem("head_summary") == "its file head_summary.parquet is missing"
    assert "changed since it was written (sha256 differs)" in damaged.problem("sink_scores")
    with pytest.raises(wb.WorkbenchError, match=r"table 'head_summary' .* is damaged or missing: its file "
                                                r"head_summary.parquet is missing; compute it again with "
                                                r"`wb.analyze\(model, prompts, out=.*analyses=\['head_summary'\]\)"):
        damaged.table("head_summary")
    again = wb.analyze(model, PROMPTS, out=tmp_path / "r", analyses=names, progress=False)
    for name in names:  # before: analyze trusted the manifest and rewrote nothing
        assert again.problem(name) is None
        pd.testing.assert_frame_equal(again.table(name), good[name])


def test_manifest_says_how_each_table_was_made(tiny, tmp_path):
    model, _ = tiny
    run = wb.analyze(model, PROMPTS, out=tmp_path / "r", analyses=["sink_scores", "head_summary"], progress=False)
    sinks, summary = run.manifest["tables"]["sink_scores"], run.manifest["tables"]["head_summary"]
    # both read the one shared exact capture (wb.describe): the model's eager attention through hooks
    assert sinks["backend"] == summary["backend"] == "eager" and sinks["capture_mode"] == summary["capture_mode"] == "exact"
    assert sinks["params"] == {"n_prompts": 2, "eps": 0.3, "batch_size": 8, "backend": "auto"}
    assert sinks["attrs"]["eps"] == 0.3 and 0 <= sinks["attrs"]["sink_share"] <= 1 and sinks["device"] == "cpu"
    assert summary["params"] == {"n_prompts": 2, "batch_size": 8}
    # a streaming table names the route "auto" took on this CPU: the compiled native loop (gcc here)
    stream = wb.analyze(model, PROMPTS, out=tmp_path / "s", analyses=["capture_stats"], progress=False)
    assert stream.manifest["tables"]["capture_stats"]["capture_mode"] == "stream"
    assert stream.manifest["tables"]["capture_stats"]["backend"] == "native"
    from kernels.head_stats import native
    from workbench.analyze import resolve_backend

    with pytest.MonkeyPatch.context() as mp:  # no C compiler: the aten route runs, and is named
        mp.setattr(native, "_state", {"lib": None, "why": "no C compiler found"})
        assert resolve_backend(wb.ANALYZERS["capture_stats"], {"backend": "auto"}, model) == "flash"
    assert len(sinks["sha256"]) == 64 and sinks["bytes"] == (tmp_path / "r" / "sink_scores.parquet").stat().st_size
    # declared parameters of registered wrappers win over their signature
    importance = wb.ANALYZERS["head_importance"]
    from workbench.analyze import table_params

    assert table_params(importance, PROMPTS) == {"n_prompts": 2, "method": "gradient", "answers": False,
                                                 "normalize_layers": False, "min_max": True, "ablation": "zero",
                                                 "reference": None, "n_steps": 16, "batch_size": 8, "seed": 0,
                                                 "reuse_prefix": True}
    assert table_params(wb.ANALYZERS["saliency_alignment"], ["w1"] * 20)["n_prompts"] == 8


def test_mark_skipped_merges_with_other_writers(tmp_path):
    first = Run.create(tmp_path / "r", prompts=PROMPTS)
    second = Run.open(tmp_path / "r")  # a second writer, opened before the first writes
    first.add_table("scores", _frame())
    second.mark_skipped("retrieval_heads", "no trials")
    second.add_table("other", _frame(1))
    on_disk = Run.open(tmp_path / "r")
    assert on_disk.tables == ["scores", "other"] and on_disk.skipped == {"retrieval_heads": "no trials"}
    first.add_table("retrieval_heads", _frame())  # stored after all: no longer skipped
    assert Run.open(tmp_path / "r").skipped == {} and first.refresh().tables == ["scores", "other", "retrieval_heads"]


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_file_modes_follow_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        run = Run.create(tmp_path / "r", prompts=PROMPTS)
        run.add_table("scores", _frame())
    finally:
        os.umask(old)
    for name in ("manifest.json", "scores.parquet"):
        assert (tmp_path / "r" / name).stat().st_mode & 0o777 == mode  # before: 0600 whatever the umask


#: A writer that stops (is killed) while its temp file is open. The package is stubbed so that
#: only runfiles.py and errors.py load (not torch and every analyzer): it starts in a blink.
STUCK_WRITER = """
import sys, time, types
from pathlib import Path
package = types.ModuleType("workbench")
package.__path__ = [sys.argv[2]]
sys.modules["workbench"] = package
from workbench.runfiles import atomic_write
atomic_write(Path(sys.argv[1]) / "scores.parquet", lambda tmp: (print(tmp, flush=True), time.sleep(120)))
"""


def test_temp_files_of_killed_writers_are_removed_on_the_next_open(tmp_path):
    run = Run.create(tmp_path / "r", prompts=PROMPTS)
    run.add_table("scores", _frame())
    writers = [subprocess.Popen([sys.executable, "-c", STUCK_WRITER, str(tmp_path / "r"), str(REPO / "workbench")],
                                stdout=subprocess.PIPE, text=True) for _ in range(2)]
    temps = [Path(w.stdout.readline().strip()) for w in writers]
    try:
        assert all(t.exists() for t in temps)
        writers[0].send_signal(signal.SIGKILL)  # kill -9: no cleanup runs
        writers[0].wait(timeout=30)
        old = tmp_path / "r" / ".scores.parquet.ab12cd_3.tmp"  # a temp file of an older workbench (mkstemp)
        old.write_bytes(b"partial")
        os.utime(old, (time.time() - 2 * 86400,) * 2)
        reopened = Run.open(tmp_path / "r")
        assert not temps[0].exists() and not old.exists()  # before: never cleaned
        assert temps[1].exists()  # a live writer's temp file stays
        pd.testing.assert_frame_equal(reopened.table("scores"), _frame())
    finally:
        writers[1].kill()
        writers[1].wait(timeout=30)


def test_full_disk_and_read_only_directory_are_one_error_and_lose_nothing(tmp_path, monkeypatch):
    run = Run.create(tmp_path / "r", prompts=PROMPTS)
    run.add_table("scores", _frame())

    def full(self, path, **kwargs):
        Path(path).write_bytes(b"half a table")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with monkeypatch.context() as patch:
        patch.setattr(pd.DataFrame, "to_parquet", full)
        with pytest.raises(wb.WorkbenchError, match=r"cannot write '.*scores.parquet': No space left on device "
                                                    r"\(the disk is full\); everything stored before is kept"):
            run.add_table("scores", _frame(5))
    real_open = os.open

    def read_only(path, flags, *args, **kwargs):
        if str(path).startswith(str(tmp_path / "r")) and flags & os.O_CREAT:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, flags, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(os, "open", read_only)
        with pytest.raises(wb.WorkbenchError, match=r"Read-only file system \(the directory is not writable\)"):
            run.add_table("more", _frame())
    again = Run.open(tmp_path / "r")
    assert again.tables == ["scores"] and again.problem("scores") is None
    pd.testing.assert_frame_equal(again.table("scores"), _frame())
    assert not [p for p in (tmp_path / "r").iterdir() if p.name.endswith(".tmp")]


def test_misleading_run_messages(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(wb.WorkbenchError, match=r"'.*file' is a file: expected a run directory"):
        Run.open(tmp_path / "file")  # before: "does not exist"
    Run.create(tmp_path / "r")
    manifest = json.loads((tmp_path / "r" / "manifest.json").read_text())
    manifest["format_version"] = "1"
    (tmp_path / "r" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(wb.WorkbenchError, match=r"damaged manifest.json: format_version is '1' \(str\); expected an int"):
        Run.open(tmp_path / "r")  # before: "newer than this workbench reads"
    manifest["format_version"] = 1
    manifest["tables"] = {"x": {"file": "../../etc/passwd"}}
    (tmp_path / "r" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(wb.WorkbenchError, match="entries whose file is '<name>.parquet'"):
        Run.open(tmp_path / "r")
    with pytest.raises(wb.WorkbenchError, match="cannot be read: File name too long"):
        Run.open(tmp_path / ("a" * 300))
    with pytest.raises(wb.WorkbenchError, match="is a file: choose another --out"):
        Run.create(tmp_path / "file")


def test_restore_command_names_the_model_prompts_and_run(tmp_path):
    from types import SimpleNamespace

    def made(name, source, prompts_source):
        model = SimpleNamespace(name="m", source=source, architecture="X", n_layers=1, n_heads=1, n_kv_heads=1,
                                d_head=4, n_ctx=8, is_causal=True)
        return Run.create(tmp_path / name, model=model, prompts=PROMPTS, prompts_source=prompts_source)

    assert made("a", "demo", "default").restore_command(["sink_scores", "niah"]) == (
        f"workbench analyze --model demo --out {tmp_path / 'a'} --analysis sink_scores --analysis niah")
    spaced = made("b c", "/models/my model", "/data/my prompts.jsonl")
    assert spaced.restore_command() == (f"workbench analyze --model '/models/my model' --out '{tmp_path / 'b c'}' "
                                        "--prompts '/data/my prompts.jsonl'")
    assert made("d", "demo", None).restore_command(["x"]) == (
        f"wb.analyze(model, prompts, out={str(tmp_path / 'd')!r}, analyses=['x']) with the run's model and prompts")
