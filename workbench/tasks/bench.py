"""Benchmark and must-show numbers of the causal sections on one model, printed side by side.

    python -m workbench.tasks.bench --model smollm2 [--out bench.json]

Times each causal section of a run (task accuracy, circuits by method and task, retrieval
heads, NIAH with its controls) as seconds and as a multiple of one plain forward over the
model's default prompts (20 for a non-demo model), measured in the same process, and prints
what the sections found: each suite's accuracy, the top retrieval heads, NIAH accuracy with
them ablated against the median of 5 random sets of the same size, and the IOI circuit.
Timings on a shared machine are noisy; the ratios are what to compare.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch


def _timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main(argv=None) -> dict:
    import workbench as wb
    from workbench.analyzers import circuits as C
    from workbench.analyzers import retrieval as R
    from workbench.tasks import SUITES, analysis_suite

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="demo")
    parser.add_argument("--out", default=None, help="write the numbers as JSON here")
    parser.add_argument("--suite-n", type=int, default=0,
                        help="also print each suite's accuracy on task_suite(name, model, n=N) (0: off)")
    parser.add_argument("--heldout", type=int, default=0,
                        help="also test the ablated retrieval heads on N held-out passkey trials (seed 1) "
                             "against 5 random sets of the same size (0: off)")
    parser.add_argument("--methods", default=",".join(C.METHODS),
                        help="circuit methods to run, comma-separated (activation patching is the slow one)")
    args = parser.parse_args(argv)
    methods = [m for m in args.methods.split(",") if m]
    bad = [m for m in methods if m not in C.METHODS]
    if bad:
        parser.error(f"unknown method {bad[0]!r}: expected some of {list(C.METHODS)}")

    model, load_s = _timed(lambda: wb.load_model(args.model))
    prompts = wb.load_prompts(model=model)
    ids, mask = model.to_tokens(prompts)
    def plain_forward() -> float:  # best of 3: the unit every section is measured in
        with torch.no_grad():
            return min(_timed(lambda: model.hf_model(input_ids=ids, attention_mask=mask))[1] for _ in range(3))

    with torch.no_grad():
        model.hf_model(input_ids=ids, attention_mask=mask)  # warm-up
    forward_s = plain_forward()
    res: dict = {"model": model.name, "load_s": load_s, "forward_s": forward_s, "prompts": len(prompts),
                 "prompt_tokens": int(mask.sum()), "sections": {}}

    def section(name, fn):
        out, seconds = _timed(fn)
        res["sections"][name] = {"seconds": seconds, "forwards": seconds / forward_s}
        print(f"{name:42s} {seconds:8.1f} s {seconds / forward_s:8.1f} x forward", flush=True)
        return out

    print(f"{model.name}: one plain forward over {len(prompts)} prompts ({int(mask.sum())} tokens): "
          f"{forward_s:.2f} s", flush=True)
    acc = section("task_accuracy (suites generated and scored)", lambda: wb.task_accuracy(model))
    frames = {}
    for task in C.TASKS:
        rows = analysis_suite(task, model)[:C.DEMO_EXAMPLES] if model.source == "demo" else analysis_suite(task, model)
        for method in methods:
            frames[task, method] = section(f"circuits {task} {method}",
                                             lambda rows=rows, method=method: wb.circuit(model, rows, method))
    scores = section("retrieval_heads", lambda: R.passkey_retrieval(model))
    niah = section("niah (full, ablated, 5 random)", lambda: R.passkey_niah(model))
    res["seconds_causal"] = sum(s["seconds"] for s in res["sections"].values())
    res["forward_s_after"] = plain_forward()  # the unit again: a busy machine shows as a change

    res["accuracy"] = json.loads(acc.to_json(orient="records"))
    top = scores.sort_values("retrieval_score", ascending=False).head(10)
    res["top_retrieval"] = [[int(r.layer), int(r.head), round(float(r.retrieval_score), 3)] for r in top.itertuples()]
    res["n_retrieval_wu"] = int(scores["is_retrieval"].sum())
    res["niah"] = {c: R._overall(g) for c, g in niah.groupby("condition", sort=False)}
    heads = R.ablation_set(scores)
    if heads:
        draws = niah.attrs["accuracy_random"]
        res["niah_random_draws"] = draws
        res["niah_random_median"] = float(np.median(draws))
    res["ablated_heads"] = [list(h) for h in heads]
    for (task, method), frame in frames.items():
        key = f"circuit_{task}_{method}"
        res[key] = {"heads": [[int(r.layer), int(r.head), round(float(r.effect), 3)]
                              for r in frame.loc[frame["in_circuit"]].sort_values("effect", key=abs, ascending=False)
                              .itertuples()],
                    "ld_clean": frame.attrs["ld_clean"], "ld_corrupted": frame.attrs["ld_corrupted"], "n": frame.attrs["n"]}

    print("\naccuracy per suite:")
    print(acc.to_string(index=False))
    print(f"\ntop retrieval heads (layer, head, score): {res['top_retrieval']}; Wu et al.'s > 0.1: "
          f"{res['n_retrieval_wu']} of {model.n_layers * model.n_heads}")
    print(f"NIAH accuracy: {res['niah']}")
    if heads:
        print(f"  {len(heads)} ablated heads {res['ablated_heads']}; random draws {np.round(draws, 3).tolist()} "
              f"(median {res['niah_random_median']:.3f})")
    for task in C.TASKS:
        for method in methods:
            c = res[f"circuit_{task}_{method}"]
            print(f"{task} circuit by {method} (LD clean {c['ld_clean']:.2f}, corrupted {c['ld_corrupted']:.2f}, "
                  f"n {c['n']}): {c['heads']}")
    if args.suite_n:
        res["suite_accuracy"] = {}
        for name in SUITES:
            rows = wb.task_suite(name, model, n=args.suite_n)
            res["suite_accuracy"][name] = float(np.mean([r["model_correct"] for r in rows]))
            if name == "passkey":
                for c in sorted({r["context_length"] for r in rows}):
                    part = [r["model_correct"] for r in rows if r["context_length"] == c]
                    res["suite_accuracy"][f"passkey@{c}"] = float(np.mean(part))
        print(f"\naccuracy on task_suite(name, model, n={args.suite_n}): {res['suite_accuracy']}")
    if args.heldout and heads:
        trials = wb.task_suite("passkey", model, n=args.heldout, seed=R.HELD_OUT_SEED)
        rng = np.random.default_rng(1)
        others = [(l, h) for l in range(model.n_layers) for h in range(model.n_heads) if (l, h) not in heads]
        random = [R._overall(wb.niah_grid(model, trials, ablate=[others[i] for i in rng.choice(len(others), len(heads),
                                                                                                    replace=False)]))
                  for _ in range(R.RANDOM_DRAWS)]
        res["heldout"] = {"n": args.heldout, "full": R._overall(wb.niah_grid(model, trials)),
                          "ablated": R._overall(wb.niah_grid(model, trials, ablate=heads)),
                          "random": random, "random_median": float(np.median(random))}
        print(f"held-out NIAH ({args.heldout} trials, seed {R.HELD_OUT_SEED}): {res['heldout']}")
    print(f"\ncausal sections: {res['seconds_causal']:.0f} s = {res['seconds_causal'] / forward_s:.0f} plain forwards "
          f"(one plain forward: {forward_s:.2f} s before, {res['forward_s_after']:.2f} s after)")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(res, f, indent=1, default=str)
    return res


if __name__ == "__main__":
    main()
