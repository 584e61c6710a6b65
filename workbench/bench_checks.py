"""The causal checks of every head ranking on one model, with the time of each part (issue 16's
must-shows): the shared pieces the report computes once (importance by every method, the
retrieval set, the NIAH table and its curve, the circuit effects) and then the ``causal_checks``
table itself, printed at one k (default 5) beside the NIAH table's summary.

    python -m workbench.bench_checks --model smollm2          # all k are computed; --k picks the print
    python -m workbench.bench_checks --model demo --k 3

Times are wall-clock on whatever the machine is doing; the load average is printed with them.
"""

from __future__ import annotations

import argparse
import os
import time


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2", help="model source (smollm2, demo, or a local HF directory)")
    ap.add_argument("--k", type=int, default=5, help="the k whose rows are printed")
    ap.add_argument("--out", default=None, help="CSV path for the whole causal_checks table")
    args = ap.parse_args(argv)

    import pandas as pd

    import workbench as wb
    from workbench.analyzers import causal_checks as CC
    from workbench.analyzers import circuits_tables as circuits, niah
    from workbench.analyzers import rankings as RK
    from workbench.prompts import load_prompts

    model = wb.load_model(args.model)
    prompts = load_prompts(None, model=model)
    times: dict[str, float] = {}

    def timed(name, fn):
        start = time.perf_counter()
        out = fn()
        times[name] = round(time.perf_counter() - start, 1)
        print(f"{name}: {times[name]} s (load average {os.getloadavg()[0]:.1f})", flush=True)
        return out

    timed("importance by every method (importance_methods table)", lambda: RK.importance_rankings(model, prompts))
    scores = timed("retrieval scores (retrieval_heads table)", lambda: niah.registered_scores(model))
    table_niah = timed("niah table", lambda: niah.registered_niah(model))
    timed("niah_curve table", lambda: niah.registered_curve(model))
    timed("circuit effects", lambda: None if circuits._applies(model) else circuits.task_circuits(model))
    table = timed("causal_checks (the rest)", lambda: CC.causal_checks(model, prompts))
    print(f"causal_checks section on its own (circuit effects + the rest): "
          f"{times['circuit effects'] + times['causal_checks (the rest)']:.1f} s; all parts {sum(times.values()):.1f} s")
    pd.set_option("display.width", 250)
    pd.set_option("display.max_colwidth", 70)
    ks = sorted(table["k"].unique())
    k = min(ks, key=lambda v: (abs(v - args.k), v))
    cols = ["ranking", "k", "top", "bottom", "random_median", "random_lo", "random_hi", "clean", "beats_random", "metric"]
    print(table[table["k"] == k][cols].to_string(index=False))
    print("skipped:", table.attrs.get("skipped"), "| split:", table.attrs.get("split"))
    chosen = niah.retrieval_set(scores)
    print(f"retrieval set ({niah.SET_NAME}): {len(chosen)} heads: "
          + ", ".join(f"L{r.layer}H{r.head} {r.retrieval_score:.2f}" for r in chosen.itertuples()))
    print("NIAH on held-out trials:", niah.niah_summary(table_niah))
    if args.out:
        table.to_csv(args.out, index=False)
    return {"times": times, "table": table}


if __name__ == "__main__":
    main()
