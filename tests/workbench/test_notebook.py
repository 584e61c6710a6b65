"""The example notebook runs top to bottom in a fresh python3 kernel, and shows what Jupyter users
get: a Run summary as HTML, frames as tables, figures as plotly, and a report file on disk."""

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


def test_tour_notebook_runs_top_to_bottom(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # the notebook's tempfile.mkdtemp lands here
    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code")  # stored clean
    # the kernel inherits os.environ; raises CellExecutionError on any failing cell
    NotebookClient(nb, kernel_name="python3", timeout=300, resources={"metadata": {"path": str(tmp_path)}}).execute()
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert errors == []
    # Run repr: the compact HTML summary; frames: pandas' HTML table; figures: plotly's mime bundle
    html = "\n".join(_outputs(nb, "text/html"))
    assert "<b>Run</b>" in html and "head_summary" in html
    assert re.search(r'<table border="1" class="dataframe">.*?max_prob', html, re.S)
    figures = _outputs(nb, PLOTLY_MIME)
    assert len(figures) == 2 and {f["data"][0]["type"] for f in figures} == {"heatmap"}
    printed = "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []) if o.get("name") == "stdout")
    report = Path(re.search(r"report: (\S+) \(", printed).group(1))
    run = wb.Run.open(report.parent / "run")
    assert report.is_file() and report.parent.parent == tmp_path
    skipped = run.manifest.get("skipped", {})
    assert set(run.tables) | set(skipped) == set(wb.ANALYZERS) and run.manifest["model"]["name"] == "demo"
    text = report.read_text()
    for name in wb.ANALYZERS:  # every registered analysis has a section with its table (or why not)
        section = re.search(f'<section id="analysis-{name}"[^>]*>(.*?)</section>', text, re.S).group(1)
        assert f"table <code>{name}</code>" in section or "Not applicable to this model" in section
