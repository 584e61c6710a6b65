"""Cold vs warm ``load_model("smollm2")``, measured side by side in one run (a benchmark, not a test).

    python -m workbench.models.timing [--warm 3]

Cold: an empty temporary cache (dequantize the GGUF, write and hash the fp32 copy, then load).
Warm: the same cache again (hash the GGUF and the copy, then load). Prints seconds and the ratio;
import time is excluded (transformers and TransformerLens are imported first).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--warm", type=int, default=3, help="warm loads to time (median reported)")
    args = parser.parse_args(argv)
    if args.warm < 1:
        parser.error(f"--warm must be >= 1; got {args.warm}")
    import transformer_lens.model_bridge  # noqa: F401  (imports are not part of a load)

    from workbench.models import load_model

    with tempfile.TemporaryDirectory(prefix="workbench-timing-") as cache:
        previous = os.environ.get("WORKBENCH_CACHE")
        os.environ["WORKBENCH_CACHE"] = cache
        try:
            load_model("demo")  # warm the remaining lazy imports
            start = time.perf_counter()
            load_model("smollm2")
            cold = time.perf_counter() - start
            warm = []
            for _ in range(args.warm):
                start = time.perf_counter()
                load_model("smollm2")
                warm.append(time.perf_counter() - start)
        finally:
            if previous is None:
                os.environ.pop("WORKBENCH_CACHE", None)
            else:
                os.environ["WORKBENCH_CACHE"] = previous
    median = statistics.median(warm)
    print(f"smollm2 cold load (dequantize + cache): {cold:.1f} s")
    print(f"smollm2 warm load (median of {len(warm)}): {median:.1f} s  [{', '.join(f'{w:.1f}' for w in warm)}]")
    print(f"cold / warm: {cold / median:.1f}x   (cores: {os.cpu_count()}, load average: "
          f"{', '.join(f'{x:.1f}' for x in os.getloadavg())})")


if __name__ == "__main__":
    main()
