"""The Dash app: `create_app(folder)` over one run or a folder of runs (pages in dashboards/pages).

No request ends in an HTTP 500: an exception in any callback (a page's layout included) is
shown as a message in the page (``app-error``); a `WorkbenchError` by its message, anything
else by its type, with the traceback in the server log.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import socket
import tempfile
from pathlib import Path

import dash

from dashboards import data, shell, views
from workbench.errors import WorkbenchError

log = logging.getLogger("dashboards")

HERE = Path(__file__).resolve().parent


def create_app(runs_root_or_run: str | Path, *, cache_dir: str | Path | None = None) -> dash.Dash:
    """A multi-page Dash app serving ``runs_root_or_run`` (WorkbenchError if it holds no run).

    Slow work (patterns of a typed prompt, integrated gradients) runs in Dash background
    callbacks managed by a ``DiskcacheManager`` over ``cache_dir`` (default: a new temporary
    folder), which also keeps what they computed for the plain callbacks that draw it. Analysis
    pages come from the registry (`dashboards.pages.analyses.register_all`).
    """
    import diskcache

    root = data.check_root(runs_root_or_run)
    cache = diskcache.Cache(str(cache_dir or tempfile.mkdtemp(prefix="workbench-dash-")))
    app = dash.Dash("dashboards", use_pages=True, pages_folder=str(HERE / "pages"),
                    assets_folder=str(HERE / "assets"), title="Attention Workbench",
                    background_callback_manager=_Manager(cache, root),
                    suppress_callback_exceptions=True,  # pages add components the shell lacks
                    on_error=callback_error)
    from dashboards.pages import analyses

    analyses.register_all()
    app.server.config[data.ROOT_KEY] = str(root)
    app.server.config[data.CACHE_KEY] = cache
    data.use_root_and_cache(root, cache)
    data.warm(root)
    pages = sorted(dash.page_registry.values(), key=lambda page: page["order"])
    app.layout = shell.layout_factory([(page["name"], page["relative_path"]) for page in pages])
    shell.register_callbacks(app)
    with app.server.test_request_context("/"):  # bind the pages' module-level callbacks to this
        app.server.preprocess_request()       # app now (Dash collects them at the first request)
    return app


def callback_error(exc: Exception) -> None:
    """Dash's ``on_error`` for every callback: show what went wrong in the page's ``app-error``
    area and leave the callback's outputs as they were (no HTTP 500)."""
    if isinstance(exc, WorkbenchError):
        text = str(exc)
    else:
        log.error("callback %s failed", getattr(dash.callback_context, "triggered_id", None), exc_info=exc)
        text = f"the server could not do this ({type(exc).__name__}: {str(exc)[:200]}); details are in the server log"
    dash.set_props("app-error", {"children": views.message(text, "error")})
    return None


def beyond_loopback(host: str) -> bool:
    """Whether binding ``host`` makes the app reachable from other machines (not 127.0.0.0/8, ::1
    or a name that resolves only to those)."""
    try:
        return not ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        pass
    try:
        found = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except OSError:
        return True
    return not found or any(not ipaddress.ip_address(a.split("%")[0]).is_loopback for a in found)


class _Manager(dash.DiskcacheManager):
    """Dash's diskcache manager, which tells each forked worker which folder this app serves
    (a worker has no Flask request to read it from), so two apps in one process stay apart."""

    def __init__(self, cache, root: Path):
        super().__init__(cache)
        self.root = root

    def call_job_fn(self, key, job_fn, args, context):
        data.use_root_and_cache(self.root, self.handle)  # copied into the worker when it forks
        return super().call_job_fn(key, functools.partial(_in_worker, job_fn), args, context)


def _in_worker(job_fn, *args):
    """Run a background job in its forked worker with one torch thread: a fork copies none of the
    parent's OpenMP threads, and a parallel region entered in the child could wait for them."""
    import torch

    torch.set_num_threads(1)
    return job_fn(*args)


def check_port(host: str, port: int) -> None:
    """Raise WorkbenchError (one line) when ``host:port`` cannot be bound, e.g. already in use."""
    if not isinstance(port, int) or not 1 <= port <= 65535:
        raise WorkbenchError(f"port {port!r} is out of range: expected 1..65535")
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((host, port))
    except OSError as exc:
        raise WorkbenchError(f"cannot serve on {host}:{port}: {exc.strerror or exc} "
                             "(is another server using it? pass --port N)") from None


def demo_run(out: Path) -> Path:
    """The demo model's run at ``out``: reused when it holds every registered analysis (or the
    reason it was skipped), else made or completed by `workbench.analyze` (progress bar)."""
    import workbench as wb

    if (out / "manifest.json").exists():
        run = wb.Run.open(out)
        if set(wb.ANALYZERS) <= set(run.tables) | set(run.manifest.get("skipped") or {}):
            return out
    return wb.analyze(wb.load_model("demo"), out=out).path
