"""The compiled native loop: built into the cache once, split over threads without changing a
number, and replaced by the aten / reference routes where it cannot run."""

from __future__ import annotations

import pytest
import torch

from kernels import WorkbenchError, attention_stats, head_stats
from kernels.head_stats import native

from .helpers import assert_stats_close, make_inputs


def test_builds_once_into_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path))
    cc = native._compiler()
    assert cc is not None, "a C compiler (gcc) is needed to build the native loop; .ci/run installs it"
    path = native._build(cc)
    assert path.parent == tmp_path / "kernels" and path.suffix == ".so"
    stamp = path.stat().st_mtime_ns
    assert native._build(cc) == path and path.stat().st_mtime_ns == stamp  # found, not rebuilt
    fns = native._load(path)
    assert set(fns) == {"lse", "onepass", "openmp"}
    assert fns["openmp"] is True  # gcc has OpenMP: heads run on torch's own libgomp workers
    assert list(tmp_path.joinpath("kernels").iterdir()) == [path]  # no temporary left behind


def test_threads_change_no_number(monkeypatch):
    q, k, mask = make_inputs(2, 5, 1, 333, 333, 24, pad=True, seed=2)  # 10 heads over 1, 2, 3 threads
    monkeypatch.setattr(native, "THREAD_MIN_LOGITS", 1 << 10)  # split even this small call
    lib = native.library()
    results = []
    for openmp in (True, False):  # OpenMP threads, and the Python threads of a build without OpenMP
        monkeypatch.setitem(lib, "openmp", openmp)
        for n in (1, 2, 3):
            torch.set_num_threads(n)  # tests/conftest.py restores the count
            results.append(head_stats(q, k, key_padding_mask=mask, window=5, backend="native"))
    for other in results[1:]:
        for name, t in results[0].as_dict().items():
            assert torch.equal(getattr(other, name), t), name


def test_without_a_compiler_the_other_routes_run(monkeypatch):
    monkeypatch.setattr(native, "_state", {"lib": None, "why": "no C compiler found (set CC, or install gcc)"})
    q, k, _ = make_inputs(1, 4, 2, 90, 90, 16, seed=4)
    v = torch.randn(1, 2, 90, 16)
    out, auto = attention_stats(q, k, v, window=4)
    out_flash, flash = attention_stats(q, k, v, window=4, backend="flash")
    assert torch.equal(out, out_flash)
    for name, t in flash.as_dict().items():
        assert torch.equal(getattr(auto, name), t), name
    ref = head_stats(q, k, window=4, backend="reference")
    for name, t in head_stats(q, k, window=4).as_dict().items():
        assert torch.equal(t, getattr(ref, name)), name
    with pytest.raises(WorkbenchError, match=r"backend='native' cannot run: no C compiler found .*'flash' needs no compiler"):
        attention_stats(q, k, v, backend="native")
    with pytest.raises(WorkbenchError, match=r"backend='native' cannot run: no C compiler found"):
        head_stats(q, k, backend="native")


def test_head_dim_past_the_buffer_takes_the_other_routes():
    q, k, _ = make_inputs(1, 2, 1, 20, 20, native.MAX_HEAD_DIM + 8, seed=6)
    v = torch.randn(1, 1, 20, native.MAX_HEAD_DIM + 8)
    _, st = attention_stats(q, k, v, window=3)  # auto: flash
    want = head_stats(q, k, window=3, backend="eager")
    assert_stats_close(st, want, atol=1e-5, rtol=1e-5, q=q, k=k, scale=q.shape[-1] ** -0.5)
    with pytest.raises(WorkbenchError, match=rf"backend='native' cannot run: head dim d={native.MAX_HEAD_DIM + 8} > 256"):
        head_stats(q, k, backend="native")


def test_huge_sink_and_window_cover_every_key():
    """Values past int64 reach the C loop clamped to M (ctypes would wrap them silently)."""
    q, k, _ = make_inputs(1, 2, 1, 40, 60, 16, seed=8)
    for causal in (True, False):
        want = head_stats(q, k, causal=causal, sink_tokens=60, window=60, backend="eager")
        got = head_stats(q, k, causal=causal, sink_tokens=2**63, window=2**64 + 1, backend="native")
        torch.testing.assert_close(got.sink_mass, want.sink_mass, atol=1e-6, rtol=0)
        torch.testing.assert_close(got.local_mass, want.local_mass, atol=1e-6, rtol=0)
    assert torch.allclose(got.sink_mass, torch.ones_like(got.sink_mass))
