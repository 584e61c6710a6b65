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


# -- issue 19: no HTTP 500, a warning when bound beyond loopback --------------------------------
import json  # noqa: E402

import dashboards.app as dash_app  # noqa: E402


@pytest.mark.parametrize("host, warned", [("0.0.0.0", True), ("::", True), ("127.0.0.1", False),
                                          ("localhost", False), ("::1", False), ("127.0.0.2", False)])
def test_serve_warns_on_stderr_when_bound_beyond_loopback(runs_root, monkeypatch, capsys, host, warned):
    monkeypatch.setattr(dash.Dash, "run", lambda self, **kw: None)
    monkeypatch.setattr(dash_app, "check_port", lambda host, port: None)  # no socket needed for the warning
    code, out = _serve([str(runs_root / "full"), "--host", host, "--port", str(_free_port())], capsys)
    assert code == 0
    assert (f"warning: --host {host} makes the app reachable from other machines" in out.err) is warned
    assert "warning" not in out.out and out.err.count("\n") == (1 if warned else 0)


def _post(client, output, outputs, inputs, state=()):
    body = {"output": output, "outputs": outputs, "inputs": list(inputs), "state": list(state),
            "changedPropIds": [f"{i['id']}.{i['property']}" for i in inputs]}
    response = client.post("/_dash-update-component", json=body)
    return response.status_code, response.get_data(as_text=True)


def _page(client, path, search):
    return _post(client, ".._pages_content.children..._pages_store.data..",
                 [{"id": "_pages_content", "property": "children"}, {"id": "_pages_store", "property": "data"}],
                 [{"id": "_pages_location", "property": "pathname", "value": path},
                  {"id": "_pages_location", "property": "search", "value": search}])


@pytest.mark.parametrize("run_id", ["a" * 300, "x/" + "b" * 256, "%00", "../" * 5 + "etc"])
def test_a_bad_run_id_is_a_message_in_every_page_not_a_500(app, run_id):
    from urllib.parse import quote

    paths = [page["path"] for page in dash.page_registry.values()]
    assert len(paths) >= 8
    for path in paths:
        code, body = _page(app.server.test_client(), path, "?run=" + quote(run_id))
        assert code == 200, (path, body[:300])  # before: 500 Internal Server Error for the long names
        assert "wb-error" in body and any(m in body for m in ("malformed", "no run", "outside the served folder")), path


def test_a_forged_head_is_a_message_not_a_500(app):
    client = app.server.test_client()
    outputs = [{"id": "head-scores", "property": "children"}, {"id": "head-layer-link", "property": "href"}]
    for layer, message in [("abc", "layer 'abc' is not a layer index: expected an int >= 0"),
                           (-1, "layer must be an int >= 0; got -1"), (1.5, "layer must be an int >= 0; got 1.5 (float)"),
                           ([0], "layer must be an int >= 0; got [0] (list)")]:
        code, body = _post(client, "..head-scores.children...head-layer-link.href..", outputs,
                           [{"id": "head-layer", "property": "value", "value": layer},
                            {"id": "head-head", "property": "value", "value": 0}],
                           [{"id": "head-run", "property": "data", "value": "full"}])
        assert code == 200 and json.loads(body)["response"]["head-scores"]["children"]["props"]["children"] == message


def test_any_callback_failure_is_shown_in_the_page(app, monkeypatch):
    from dashboards import data

    client = app.server.test_client()
    selection = {"id": "app-selection", "property": "data"}
    code, body = _post(  # the head page's dropdown sync, sent a forged layer: WorkbenchError outside any try
        client, "..head-layer.value...head-head.value...app-selection.data@" +
        next(k for k in app.callback_map if k.startswith("..head-layer.value")).split("@")[1],
        [{"id": "head-layer", "property": "value"}, {"id": "head-head", "property": "value"},
         dict(selection)],
        [{"id": "head-run", "property": "data", "value": "full"}, {"id": "head-layer", "property": "value", "value": "x1"},
         {"id": "head-head", "property": "value", "value": 0}], [dict(selection, value=None)])
    assert code == 200, body[:300]
    shown = json.loads(body)["sideUpdate"]["app-error"]["children"]["props"]
    assert shown["children"] == "layer 'x1' is not a layer index: expected an int >= 0" and "wb-error" in shown["className"]

    def broken(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(data, "open_run", broken)  # (page modules may be re-imported by other apps; data is not)
    code, body = _post(client, "..overview-grid.figure...overview-error.children..",
                       [{"id": "overview-grid", "property": "figure"}, {"id": "overview-error", "property": "children"}],
                       [{"id": "overview-score", "property": "value",
                         "value": json.dumps({"table": "head_summary", "score": "entropy", "where": {}})}],
                       [{"id": "overview-run", "property": "data", "value": "full"}])
    assert code == 200  # an unexpected exception: its type in the page, the traceback in the server log
    assert json.loads(body)["sideUpdate"]["app-error"]["children"]["props"]["children"] == (
        "the server could not do this (RuntimeError: a bug); details are in the server log")
