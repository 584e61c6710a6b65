"""`workbench serve`: binds 127.0.0.1 with debug off, one-line errors, reuses or makes runs/demo."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import dash
import pytest

import workbench as wb
from tests.dashboards.fixtures import make_run
from workbench.cli import main


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(argv, capsys):
    with pytest.raises(SystemExit) as info:
        main(["serve", *argv])
    return info.value.code, capsys.readouterr()


def test_port_in_use_is_one_clear_line(runs_root, capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code, out = _serve([str(runs_root), "--port", str(port)], capsys)
    assert code == 2
    assert out.err.strip().splitlines() == [
        f"error: cannot serve on 127.0.0.1:{port}: Address already in use (is another server using it? pass --port N)"]


def test_missing_or_empty_folder_is_one_clear_line(tmp_path, capsys):
    code, out = _serve([str(tmp_path / "nope"), "--port", str(_free_port())], capsys)
    assert code == 2 and out.err.strip() == f"error: {str(tmp_path / 'nope')!r} does not exist: expected a run directory or a folder of runs"
    (tmp_path / "empty").mkdir()
    code, out = _serve([str(tmp_path / "empty"), "--port", str(_free_port())], capsys)
    assert code == 2 and "holds no run" in out.err and "Traceback" not in out.err


def test_serve_runs_the_app_on_localhost_with_debug_off(runs_root, monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(dash.Dash, "run", lambda self, **kw: calls.append((self, kw)))
    port = _free_port()
    code, out = _serve([str(runs_root / "full"), "--port", str(port)], capsys)
    (app, kwargs), = calls
    assert code == 0
    assert kwargs == {"host": "127.0.0.1", "port": port, "debug": False}
    assert app.server.config["WORKBENCH_ROOT"] == str((runs_root / "full").resolve())
    assert f"at http://127.0.0.1:{port}/" in out.out


def test_serve_without_argument_reuses_a_complete_demo_run(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    calls = []
    monkeypatch.setattr(dash.Dash, "run", lambda self, **kw: calls.append(self))

    def no_model(*a, **k):
        raise AssertionError("a complete cached run must not load the model")

    monkeypatch.setattr(wb, "load_model", no_model)
    run = make_run(tmp_path / "runs" / "demo", source="demo")  # every registered table...
    for name in [n for n in wb.ANALYZERS if n not in run]:  # ...or its reason
        run.mark_skipped(name, "fixture")
    assert _serve(["--port", str(_free_port())], capsys)[0] == 0
    assert calls[0].server.config["WORKBENCH_ROOT"] == str((tmp_path / "runs" / "demo").resolve())


def test_serve_without_argument_analyzes_the_demo_model_when_the_run_is_incomplete(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(dash.Dash, "run", lambda self, **kw: None)
    analyzed = []

    def fake_analyze(model, prompts=None, *, out, **kw):  # stands in for the demo model's minutes of work
        analyzed.append((model, out))
        return make_run(out, ["head_summary"], source="demo")

    monkeypatch.setattr(wb, "load_model", lambda source: f"model:{source}")
    monkeypatch.setattr(wb, "analyze", fake_analyze)
    assert _serve(["--port", str(_free_port())], capsys)[0] == 0
    assert [(model, Path(out)) for model, out in analyzed] == [("model:demo", Path("runs") / "demo")]


@pytest.mark.slow
def test_workbench_serve_answers_http_on_localhost(runs_root):
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "workbench.cli", "serve", str(runs_root), "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline, body = time.monotonic() + 90, None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/_dash-layout", timeout=5) as resp:
                    body = resp.read().decode()
                break
            except OSError:
                time.sleep(0.5)
        assert body is not None, proc.stdout.read() if proc.poll() is not None else "no answer in 90 s"
        assert '"id":"app-run"' in body and "full" in body  # the run picker lists the folder's runs
    finally:
        proc.terminate()
        proc.wait(timeout=20)
