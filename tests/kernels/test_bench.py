"""kernels.bench produces its long-format rows (a smoke run at a tiny size; no timed asserts)."""

import math

from kernels.bench import COLUMNS, bench_kernels, format_table


def test_cpu_bench_rows_and_ratios():
    df = bench_kernels("cpu", (64,), heads=2, head_dim=16, reps=1, warmup=0)
    assert list(df.columns) == COLUMNS
    assert df.backend.tolist() == ["reference", "eager"] and (df.status == "ok").all()
    assert (df.baseline == "eager").all() and df.time_ratio.iloc[1] == 1.0
    assert (df.peak_mem_bytes >= 0).all() and all(math.isfinite(x) for x in df.ms_p50)
    assert "reference" in format_table(df)
