"""Fixtures for the dashboard tests: a folder of fixture runs, a tiny HF model on disk with a run
over it (for on-demand patterns), the app over that folder, and a live server in a thread."""

from __future__ import annotations

import sys
import threading

import pytest

from tests import tiny_models
from tests.dashboards.fixtures import make_root

#: Prompts of the run over the tiny model (its word-level vocabulary is w0..w89).
TINY_PROMPTS = ["w1 w2 w3 w4 w5 w6", "w9 w8 w7 w6"]
TINY_CONTEXT = 1024


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """A tiny seeded Llama (RoPE, GQA) saved as a Hugging Face directory, with room for
    `TINY_CONTEXT` positions so long patterns (past bertviz's ~512-token limit) can be drawn."""
    path = tmp_path_factory.mktemp("tiny-llama")
    model = tiny_models.hf_model("llama")
    model.config.max_position_embeddings = TINY_CONTEXT  # RoPE has no learned positions to resize
    model.save_pretrained(path)
    tiny_models.tokenizer("llama").save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def runs_root(tmp_path_factory, tiny_dir):
    """`fixtures.make_root` plus ``tiny``: a run made by `wb.analyze` whose model source is the
    tiny directory, so the app can load its model."""
    import workbench as wb

    root = make_root(tmp_path_factory.mktemp("served") / "root")
    wb.analyze(wb.load_model(str(tiny_dir)), TINY_PROMPTS, out=root / "tiny", analyses=["head_summary"], progress=False)
    return root


@pytest.fixture(scope="session")
def app(runs_root):
    from dashboards.app import create_app

    return create_app(runs_root)


def page(name: str):
    """A page module of the app (Dash imports them when the app is made; call after `app`)."""
    return sys.modules[f"dashboards.pages.{name}"]


@pytest.fixture
def request_ctx(app):
    """A Flask request context of the app, so layouts and callbacks see the served root."""
    with app.server.test_request_context("/"):
        yield app


@pytest.fixture(scope="module")
def live_server(app):
    """The app served on a free port of 127.0.0.1 by werkzeug in a daemon thread; yields its URL."""
    import logging

    from werkzeug.serving import make_server

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request in the test output
    server = make_server("127.0.0.1", 0, app.server, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    thread.join(timeout=10)
