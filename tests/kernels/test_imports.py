"""Layers point downward: `kernels` and `probes` import nothing from `workbench` (issue 20)."""

import json
import os
import subprocess
import sys

import workbench as wb
from kernels.errors import WorkbenchError


def _modules_after(statement: str) -> set[str]:
    code = f"import json, sys\n{statement}\nprint(json.dumps(sorted(sys.modules)))"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    return {name.split(".")[0] for name in json.loads(done.stdout.strip().splitlines()[-1])}


def test_import_kernels_loads_neither_pandas_plotly_nor_workbench():
    loaded = _modules_after("import kernels")
    assert "kernels" in loaded and "torch" in loaded
    assert not loaded & {"pandas", "plotly", "workbench", "dash", "transformers"}, loaded & {"pandas", "plotly", "workbench"}


def test_probes_import_nothing_from_workbench():
    loaded = _modules_after("import probes.hooks, probes.streaming, probes.plan")
    assert "probes" in loaded and "workbench" not in loaded and "plotly" not in loaded
    assert "pandas" not in _modules_after("import probes.streaming")  # frames import it when asked


def test_one_error_class_for_every_layer():
    assert wb.WorkbenchError is WorkbenchError and issubclass(WorkbenchError, ValueError)
