"""The Triton kernels lower all the way to a cubin for sm_90, checked on a machine with no GPU.

The interpreter tests run the kernel source as NumPy and never compile it; this runs triton's
real compiler pipeline (with the ptxas from the triton wheel) in a subprocess without
TRITON_INTERPRET, in a fresh cache so nothing is reused, for the benchmark shape (bf16, causal,
d = 128: pass 1, pass 2 and the one-pass kernel) and reads back what was produced.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

pytest.importorskip("triton")

from kernels.aot import SHARED_LIMIT  # noqa: E402


@pytest.mark.slow
def test_kernels_compile_to_cubin_for_sm90(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path / "cache")
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    proc = subprocess.run([sys.executable, "-m", "kernels.aot", "--arch", "90", "--quick"],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("sm_90 ")]
    assert {ln.split()[1] for ln in lines} == {"_row_stats_kernel", "_col_mass_kernel", "_onepass_kernel"}
    for ln in lines:
        assert "cubin=True" in ln and " bf16 " in ln, ln
        shared = int(re.search(r"shared\s+(\d+) B", ln).group(1))
        assert 0 < shared <= SHARED_LIMIT[90], ln
    assert any((tmp_path / "cache").rglob("*.cubin")), "no cubin written to the fresh cache"


def test_aot_refuses_interpreter_mode():
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run([sys.executable, "-m", "kernels.aot", "--quick"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert "unset TRITON_INTERPRET" in proc.stderr
