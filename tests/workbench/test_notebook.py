"""The example notebook is committed with its outputs, runs top to bottom in a fresh python3
kernel, and shows what Jupyter users get: a Run summary as HTML, frames as tables, a sink head, a
retrieval head and the IOI circuit drawn with position-labelled patterns (repeated tokens never
merge), and a report file on disk."""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
from nbclient import NotebookClient

import workbench as wb

NOTEBOOK = Path(__file__).resolve().parents[2] / "examples" / "tour.ipynb"
PLOTLY_MIME = "application/vnd.plotly.v1+json"


def _outputs(nb, mime):
    return [o["data"][mime] for cell in nb.cells if cell.cell_type == "code"
            for o in cell.get("outputs", []) if mime in o.get("data", {})]


def _printed(nb) -> str:
    return "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []) if o.get("name") == "stdout")


def _check(nb) -> None:
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert errors == []
    html = "\n".join(_outputs(nb, "text/html"))
    assert "<b>Run</b>" in html and "head_summary" in html
    assert re.search(r'<table border="1" class="dataframe">.*?sink_score', html, re.S)
    figures = _outputs(nb, PLOTLY_MIME)
    titles = [f["layout"]["title"]["text"] for f in figures if "title" in f["layout"]]
    assert any(t.startswith("sink head L") for t in titles)
    assert any(t.startswith("retrieval head L") for t in titles)
    assert any(t.startswith("IOI circuit head L") for t in titles)
    for fig in figures:  # every pattern is labelled by position: no two rows or columns merge
        trace = fig["data"][0]
        if trace["type"] == "heatmap" and isinstance(trace.get("x"), list) and isinstance(trace["x"][0], str):
            assert len(set(trace["x"])) == len(trace["x"]) and re.match(r"\d+: ", trace["x"][0])
    first = figures[0]["data"][0]  # the first prompt repeats "David" and "to": 15 rows, not 13
    assert len(first["y"]) == 15 and "4: David" in first["y"] and "10: David" in first["y"]
    printed = _printed(nb)
    assert "Sink^ε =" in printed and "are retrieval heads" in printed and "ioi: a circuit of" in printed


def test_tour_notebook_is_committed_with_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    silent = [c.source.splitlines()[0] for c in code if not c.get("outputs")]
    assert silent == ['examples = run.table("head_examples")  # example, layer, head, positions, tokens, weights, n_tokens']
    _check(nb)


def test_tour_notebook_runs_top_to_bottom(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # the notebook's tempfile.mkdtemp lands here
    nb = nbformat.read(NOTEBOOK, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    # the kernel inherits os.environ; raises CellExecutionError on any failing cell
    NotebookClient(nb, kernel_name="python3", timeout=600, resources={"metadata": {"path": str(tmp_path)}}).execute()
    _check(nb)
    report = Path(re.search(r"report: (\S+) \(", _printed(nb)).group(1))
    run = wb.Run.open(report.parent / "run")
    assert report.is_file() and report.parent.parent == tmp_path
    skipped = run.manifest.get("skipped", {})
    assert set(run.tables) | set(skipped) == set(wb.ANALYZERS) and run.manifest["model"]["name"] == "demo"
    text = report.read_text()
    assert '<section id="findings"' in text
    for name in wb.ANALYZERS:  # every registered analysis has a section with its table (or why not)
        if name in ("prompts", "head_examples"):
            continue
        section = re.search(f'<section id="analysis-{name}"[^>]*>(.*?)</section>', text, re.S).group(1)
        assert f"table <code>{name}</code>" in section or "Not applicable to this model" in section
