"""kernels.bench produces its long-format rows (a smoke run at a tiny size; no timed asserts)."""

import math

import pytest

from kernels.bench import COLUMNS, CPU_BACKENDS, bench_kernels, format_table, parse_sizes
from kernels.errors import WorkbenchError


def test_cpu_bench_rows_and_ratios():
    backends = ("native", "native_onepass", "native_twopass", "flash", "reference", "reference_onepass", "eager")
    df = bench_kernels("cpu", (64,), heads=2, head_dim=16, reps=1, warmup=0, backends=backends)
    assert list(df.columns) == COLUMNS
    assert df.backend.tolist() == ["sdpa", *backends] and (df.status == "ok").all()
    assert (df.baseline == "eager").all() and df.time_ratio.iloc[-1] == 1.0
    assert (df.peak_mem_bytes >= 0).all() and all(math.isfinite(x) for x in df.ms_p50)
    assert df.column_mass.all() and not df.argmax.any()
    table = format_table(df)
    assert "reference_onepass" in table and "native_twopass" in table and "over_sdpa" in table
    assert set(backends) < set(CPU_BACKENDS)


def test_sizes_are_checked():
    assert parse_sizes("512, 1024") == (512, 1024)
    for bad, message in (("0,-5", "got 0 in '0,-5'"), ("abc", "got 'abc'")):
        with pytest.raises(WorkbenchError, match=f"--sizes must be comma-separated positive integers, {message}"):
            parse_sizes(bad)
    with pytest.raises(WorkbenchError, match="CPU backend 'gpu' is unknown"):
        bench_kernels("cpu", (16,), heads=1, head_dim=16, reps=1, warmup=0, backends=("gpu",))
