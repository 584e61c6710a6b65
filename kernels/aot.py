"""Compile the head_stats Triton kernels ahead of time for a GPU target, with no GPU present.

The Triton interpreter (TRITON_INTERPRET=1, how the CPU tests run the kernels) executes the
kernel source as NumPy; it never lowers it. Code that interprets fine can still fail to compile
(loop-carried types that change, unsupported ops, shared memory over the device limit). This
module runs the real compiler, Triton source -> TTIR -> TTGIR -> LLVM IR -> PTX -> cubin (with the
``ptxas`` that ships in the triton wheel), for the tile sizes and dtypes the launcher uses on a
GPU, so those failures show up on a CPU-only machine too. It does not launch anything.

    python -m kernels.aot --arch 90            # every variant the launcher can pick, sm_90
    python -m kernels.aot --arch 90 --quick    # bf16, causal, d=128 (the benchmark shape):
                                               # pass 1, pass 2 and the one-pass kernel

Must run with TRITON_INTERPRET unset (in interpreter mode @triton.jit builds interpreter
objects, which cannot be compiled); the CLI refuses otherwise.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import time
from dataclasses import dataclass

# Shared memory one thread block may use (bytes): sm_80 (A100) 163 KiB, sm_90 (H100/H200) 227 KiB.
SHARED_LIMIT = {80: 166912, 86: 101376, 89: 101376, 90: 232448}


class InterpreterModeError(RuntimeError):
    """TRITON_INTERPRET=1: @triton.jit built interpreter objects, which cannot be compiled."""


@dataclass(frozen=True)
class Compiled:
    """One compiled kernel variant."""

    kernel: str      # _row_stats_kernel, _col_mass_kernel or _onepass_kernel
    dtype: str       # fp16, bf16 or fp32
    d_block: int     # BLOCK_D (head dim rounded up to a power of two)
    flags: str       # causal/mask/local/even-d/argmax/col, e.g. "causal,local,even_d"
    shared: int      # bytes of shared memory per block
    seconds: float   # compile time
    has_cubin: bool  # the pipeline reached a cubin


def _signature(fn, pointer_types: dict[str, str], constexprs: dict[str, object]):
    """ASTSource signature and constexpr map: scalars not named are i32."""
    names = fn.arg_names
    signature = {n: "constexpr" if n in constexprs else pointer_types.get(n, "i32") for n in names}
    return signature, {(names.index(n),): v for n, v in constexprs.items()}


def compile_variant(kernel: str, dtype: str, d_block: int, *, causal: bool, has_mask: bool,
                    has_local: bool, even_d: bool, want_arg: bool = True, want_col: bool = True,
                    arch: int = 90) -> Compiled:
    """Compile one variant of one kernel for ``cuda:sm_<arch>`` with the launcher's tile sizes.

    Args:
        kernel: ``"row"`` (pass 1), ``"col"`` (pass 2) or ``"one"`` (the one-pass kernel).
        want_arg, want_col: the argmax / column-sum flags (pass 1 takes want_arg, "one" both).
        dtype: ``"fp16"``, ``"bf16"`` or ``"fp32"`` (the q/k element type).
        d_block: BLOCK_D, a power of two in [16, 256].
    Raises:
        InterpreterModeError: in interpreter mode; triton's own errors when lowering fails.
    """
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        raise InterpreterModeError("unset TRITON_INTERPRET (interpreter-mode kernels cannot be "
                                   "compiled)")
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from kernels.head_stats import triton as kt

    block_m, block_n, num_warps, num_stages = kt._blocks(d_block, False)
    ptr = "*" + dtype
    common = dict(CAUSAL=causal, HAS_MASK=has_mask, EVEN_D=even_d, IEEE=dtype == "fp32",
                  BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=d_block)
    if kernel == "row":
        fn = kt._row_stats_kernel
        types = {"Q": ptr, "K": ptr, "MASK": "*u8", "LSE2": "*fp32", "ENT": "*fp32",
                 "MAXP": "*fp32", "ARG": "*i64", "SINK": "*fp32", "LOCAL": "*fp32",
                 "scale_log2": "fp32"}
        constexprs = {**common, "HAS_LOCAL": has_local, "WANT_ARG": want_arg}
    elif kernel == "one":
        fn = kt._onepass_kernel
        types = {"Q": ptr, "K": ptr, "MASK": "*u8", "LSE2": "*fp32", "ENT": "*fp32",
                 "MAXP": "*fp32", "ARG": "*i64", "SINK": "*fp32", "LOCAL": "*fp32", "COL": "*fp32",
                 "scale_log2": "fp32"}
        constexprs = {**common, "HAS_LOCAL": has_local, "WANT_ARG": want_arg, "WANT_COL": want_col}
    elif kernel == "col":
        fn = kt._col_mass_kernel
        types = {"Q": ptr, "K": ptr, "MASK": "*u8", "LSE2": "*fp32", "COL": "*fp32",
                 "scale_log2": "fp32"}
        constexprs = common
    else:
        raise ValueError(f"kernel {kernel!r}; expected 'row', 'col' or 'one'")
    signature, const_map = _signature(fn, types, constexprs)
    t0 = time.perf_counter()
    out = triton.compile(ASTSource(fn=fn, signature=signature, constexprs=const_map),
                         target=GPUTarget("cuda", arch, 32),
                         options={"num_warps": num_warps, "num_stages": num_stages})
    flags = ",".join(n for n, on in (("causal", causal), ("mask", has_mask),
                                     ("local", has_local and kernel != "col"), ("even_d", even_d),
                                     ("argmax", want_arg and kernel != "col"),
                                     ("col", want_col and kernel == "one")) if on)
    return Compiled(fn.__name__, dtype, d_block, flags, int(out.metadata.shared),
                    time.perf_counter() - t0, "cubin" in out.asm)


def variants(quick: bool):
    """(kernel, dtype, d_block, causal, has_mask, has_local, even_d, want_arg, want_col) to compile."""
    if quick:
        yield from (("row", "bf16", 128, True, False, True, True, True, False),
                    ("col", "bf16", 128, True, False, False, True, False, False),
                    ("one", "bf16", 128, True, False, True, True, False, True))
        return
    for dtype, d_block, causal, has_mask, even_d in itertools.product(
            ("bf16", "fp16", "fp32"), (64, 128), (True, False), (False, True), (True, False)):
        for has_local in (False, True):
            yield ("row", dtype, d_block, causal, has_mask, has_local, even_d, True, False)
            for want_arg, want_col in ((False, True), (True, False), (False, False)):
                yield ("one", dtype, d_block, causal, has_mask, has_local, even_d, want_arg, want_col)
        yield ("col", dtype, d_block, causal, has_mask, False, even_d, False, False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", type=int, default=90, help="compute capability, e.g. 80 or 90")
    parser.add_argument("--quick", action="store_true", help="only the benchmark shape")
    args = parser.parse_args(argv)
    limit = SHARED_LIMIT.get(args.arch)
    worst = 0
    for kernel, dtype, d_block, causal, mask, local, even, want_arg, want_col in variants(args.quick):
        try:
            c = compile_variant(kernel, dtype, d_block, causal=causal, has_mask=mask, has_local=local,
                                even_d=even, want_arg=want_arg, want_col=want_col, arch=args.arch)
        except InterpreterModeError as err:  # the one check lives in compile_variant
            print(f"error: {err}", file=sys.stderr)
            return 2
        worst = max(worst, c.shared)
        print(f"sm_{args.arch} {c.kernel:18s} {c.dtype} d={c.d_block:<3d} {c.flags:34s} "
              f"shared {c.shared:6d} B  {c.seconds:5.1f} s  cubin={c.has_cubin}", flush=True)
        if not c.has_cubin or (limit is not None and c.shared > limit):
            print(f"error: {c.kernel} {c.dtype} d={c.d_block} needs {c.shared} B of shared memory "
                  f"(limit {limit}) or produced no cubin", file=sys.stderr)
            return 1
    print(f"all variants compiled for sm_{args.arch}; most shared memory {worst} B"
          + (f" of {limit} B" if limit else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
