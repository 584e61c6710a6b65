"""The Dash app: `create_app(folder)` over one run or a folder of runs (pages in dashboards/pages).

No request ends in an HTTP 500: an exception in any callback (a page's layout included) is
shown as a message in the page (``app-error``); a `WorkbenchError` by its message, anything
else by its type, with the traceback in the server log.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from pathlib import Path

import dash

from dashboards import data, shell, views
from workbench.errors import WorkbenchError

log = logging.getLogger("dashboards")

HERE = Path(__file__).resolve().parent


def create_app(runs_root_or_run: str | Path) -> dash.Dash:
    """A multi-page Dash app serving ``runs_root_or_run`` (WorkbenchError if it holds no run)."""
    root = data.check_root(runs_root_or_run)
    app = dash.Dash("dashboards", use_pages=True, pages_folder=str(HERE / "pages"),
                    assets_folder=str(HERE / "assets"), title="Attention Workbench",
                    suppress_callback_exceptions=True,  # pages add components the shell lacks
                    on_error=callback_error)
    app.server.config[data.ROOT_KEY] = str(root)
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
