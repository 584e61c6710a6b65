"""Fixture runs for the dashboard tests, built with `Run.create` + `add_table` (no model needed).

`frames()` holds one hand-made frame per registered analysis, with the columns DESIGN.md and
the analyzers give them and seeded values, on a demo-shaped model (4 layers × 8 heads).
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd

import workbench as wb
from workbench.analyzers.niah import condition_names

N_LAYERS, N_HEADS = 4, 8


def model_info(source: str = "nowhere", n_layers: int = N_LAYERS, n_heads: int = N_HEADS, name: str = "fixture"):
    return SimpleNamespace(name=name, source=source, architecture="LlamaForCausalLM", n_layers=n_layers,
                           n_heads=n_heads, n_kv_heads=2, d_head=16, n_ctx=64, is_causal=True)


def _heads(n_layers: int = N_LAYERS, n_heads: int = N_HEADS) -> pd.DataFrame:
    layer, head = np.meshgrid(np.arange(n_layers), np.arange(n_heads), indexing="ij")
    return pd.DataFrame({"layer": layer.ravel(), "head": head.ravel()})


def _niah_conditions(size: int, n_random: int) -> tuple[str, ...]:
    """The condition labels the NIAH table really carries (`niah.condition_names`), in its order."""
    names = condition_names(size, n_random)
    return (names["full"], names["ablated"], *[names["random"].format(i=i) for i in range(1, n_random + 1)],
            names["median"])


def frames(seed: int = 0) -> dict[str, pd.DataFrame]:
    """One frame per registered table name, seeded."""
    rng = np.random.default_rng(seed)
    base = _heads()
    n = len(base)
    sink = rng.random(n)
    retrieval = rng.random(n) * 0.3
    out = {
        "head_summary": base.assign(entropy=rng.random(n) * 3, max_prob=rng.random(n), n_queries=40),
        "sink_scores": base.assign(sink_score=sink, is_sink=sink > 0.3),
        "token_sinks": pd.concat([base.assign(prompt_id=0, position=p, token=f"w{p}", alpha=rng.random(n))
                                  for p in range(6)], ignore_index=True)[
            ["prompt_id", "layer", "head", "position", "token", "alpha"]],
        "secondary_sinks": pd.DataFrame({"prompt_id": [0], "position": [3], "token": ["w3"], "start_layer": [1],
                                         "end_layer": [2], "n_layers": [2], "mean_cos": [0.95]}),
        "massive_activations": pd.DataFrame({"prompt_id": [0, 0], "layer": [1, 2], "position": [0, 0],
                                             "token": ["<s>", "<s>"], "dim": [7, 7], "value": [310.0, 420.0],
                                             "ratio": [1500.0, 2100.0]}),
        "head_importance": base.assign(importance=rng.random(n), raw=rng.random(n) * 0.01),
        "pruning_curve": pd.DataFrame({"step": range(5), "n_pruned": [0, 3, 6, 9, 12],
                                       "fraction_pruned": [0, 0.1, 0.2, 0.3, 0.4], "loss": [2.0, 2.1, 2.3, 2.8, 3.5],
                                       "accuracy": [1.0, 0.95, 0.9, 0.6, 0.3], "pruned": ["", "L0H1", "L1H2", "L3H0", "L2H2"]}),
        "head_patterns": base.assign(entropy=rng.random(n), max_prob=rng.random(n), sink_mass=sink,
                                     local_mass=rng.random(n), mean_distance=rng.random(n) * 10,
                                     prev_token=rng.random(n), duplicate=rng.random(n), induction=rng.random(n),
                                     umap_x=rng.normal(size=n), umap_y=rng.normal(size=n),
                                     cluster=np.arange(n) % 3,
                                     pattern=np.array(["sink", "local", "induction"])[np.arange(n) % 3]),
        "retrieval_heads": base.assign(retrieval_score=retrieval, activation_frequency=rng.random(n),
                                       is_retrieval=retrieval > 0.1),
        "niah": pd.DataFrame([{"condition": c, "context_length": ctx, "depth": d, "accuracy": float(rng.random()),
                               "n_trials": 4, "heads": "", "held_out": True}
                              for c in _niah_conditions(4, 5)
                              for ctx in (128, 256) for d in (0.0, 0.5, 1.0)]),
        "niah_curve": pd.DataFrame([{"ranking": "retrieval_heads.retrieval_score", "k": k, "top": 1.0 - 0.2 * k,
                                     "bottom": 1.0, "random_median": 0.9, "random_lo": 0.8, "random_hi": 1.0,
                                     "metric": "NIAH accuracy", "clean": 1.0, "beats_random": k > 1,
                                     "top_heads": "L0H1", "bottom_heads": "L3H7", "n_random": 5,
                                     "higher_is_better": True, "is_set_size": k == 4} for k in (1, 3, 4)]),
        "circuits": pd.concat([base.assign(task=t, method=m, effect=rng.normal(size=n), in_circuit=rng.random(n) > 0.7)
                               for t in ("ioi", "colored_objects") for m in ("attribution_patching", "activation_patching")],
                              ignore_index=True)[["task", "method", "layer", "head", "effect", "in_circuit"]],
        "circuit_faithfulness_curve": pd.DataFrame([
            {"task": t, "method": "activation_patching", "k": k, "top": min(1.0, 0.3 * k ** 0.5),
             "random_median": k / 32, "random_lo": k / 40, "random_hi": k / 25, "in_circuit": k == 8,
             "ablated_top": 1 - min(1.0, 0.3 * k ** 0.5), "ablated_random_median": 1 - k / 32}
            for t in ("ioi", "colored_objects") for k in (1, 2, 3, 4, 5, 6, 7, 8, 12, 18, 27, 32)]),
        "edge_circuits": pd.DataFrame([
            {"task": t, "upstream": u, "downstream": v, "score": sc, "in_circuit": sc > 0.2, "faithfulness": 0.85}
            for t in ("ioi", "colored_objects")
            for u, v, sc in (("input", "a0.h1<k>", 0.1), ("a0.h1", "a1.h2<k>", 0.6), ("a1.h2", "logits", 0.9),
                             ("m0", "a2.h3<v>", -0.3), ("a2.h3", "m3", 0.25), ("m3", "logits", 0.4),
                             ("input", "m0", 0.05))]),
        "saliency_alignment": pd.concat([
            base.assign(view="head"),
            pd.DataFrame({"view": "layer_mean", "layer": range(N_LAYERS), "head": -1}),
            pd.DataFrame({"view": ["all_mean", "rollout"], "layer": -1, "head": -1})], ignore_index=True),
    }
    imp = base.assign(importance=rng.random(n), raw=rng.random(n))
    out["importance_methods"] = pd.concat([imp.assign(method=m) for m in ("gradient", "ablation_zero", "ablation_mean",
                                                                           "integrated_gradients")], ignore_index=True)[
        ["method", "layer", "head", "importance", "raw"]]
    out["pruning_curve"] = pd.concat([out["pruning_curve"].assign(ranking=r) for r in ("gradient", "random")],
                                     ignore_index=True)
    checks = [{"ranking": r, "k": k, "top": 3.0 + k, "bottom": 2.0, "random_median": 2.2, "random_lo": 2.0,
               "random_hi": 2.5, "metric": "held-out loss", "clean": 2.0, "beats_random": r != "sink_scores.sink_score",
               "top_heads": "L0H1", "bottom_heads": "L3H7", "n_random": 5, "higher_is_better": False}
              for r in ("head_importance.importance", "sink_scores.sink_score") for k in (1, 3, 5)]
    out["causal_checks"] = pd.DataFrame(checks)
    layer, kv = np.meshgrid(np.arange(N_LAYERS), np.arange(2), indexing="ij")
    gate = rng.random(2 * N_LAYERS)
    out["duo_attention"] = pd.DataFrame({"layer": layer.ravel(), "kv_head": kv.ravel(), "gate": gate,
                                         "is_retrieval": gate >= 0.5, "wu_retrieval": rng.random(2 * N_LAYERS) > 0.5,
                                         "wu_heads": "", "wu_max_score": rng.random(2 * N_LAYERS)})
    out["duo_effect"] = pd.DataFrame({"context_length": [128, 256], "n_trials": [4, 4], "accuracy_full": [1.0, 1.0],
                                      "accuracy_duo": [1.0, 0.75], "accuracy_streaming": [0.5, 0.25],
                                      "kv_full_bytes": [100, 200], "kv_duo_bytes": [80, 120],
                                      "kv_saved_fraction": [0.2, 0.4]})
    sal = out["saliency_alignment"]
    for col in ("pearson", "spearman", "kendall"):
        sal[col] = rng.uniform(-1, 1, len(sal))
    sal["topk_overlap"], sal["n_prompts"] = rng.random(len(sal)), 3
    return out


def make_run(path: Path, tables=None, *, source: str = "nowhere", prompts=("w1 w2 w3",), skipped=None) -> wb.Run:
    """A run at ``path`` holding ``tables`` (names from `frames`, default all)."""
    all_frames = frames()
    run = wb.Run.create(path, model=model_info(source), prompts=list(prompts))
    for name in all_frames if tables is None else tables:
        run.add_table(name, all_frames[name])
    for name, reason in dict(skipped or {}).items():
        run.mark_skipped(name, reason)
    return run


def make_root(root: Path) -> Path:
    """A folder of runs: ``full`` (every table), ``group/partial`` (two tables, one skipped
    analysis), ``damaged`` (a broken manifest), ``broken-table`` (a table file overwritten), and
    a run outside the folder plus a symlink to it inside (``escape``)."""
    make_run(root / "full")
    make_run(root / "group" / "partial", ["head_summary", "sink_scores"],
              skipped={"retrieval_heads": "needs needle-in-a-haystack trials (fixture)"})
    (root / "damaged").mkdir(parents=True)
    (root / "damaged" / "manifest.json").write_text("{ not json")
    broken = make_run(root / "broken-table", ["head_summary", "sink_scores"])
    (broken.path / "sink_scores.parquet").write_bytes(b"not parquet")
    outside = root.parent / f"{root.name}-outside"
    make_run(outside / "secret", ["head_summary"])
    (root / "escape").symlink_to(outside / "secret", target_is_directory=True)
    (outside / "note.json").write_text(json.dumps({"secret": True}))
    return root


# -- helpers for tests that call layouts and callbacks as plain functions ------------------------
def in_callback(fn, *args, triggered: tuple[str, ...] = ()):
    """Call a Dash callback as a plain function with ``ctx.triggered`` set (Dash's documented way
    of unit-testing callbacks that read the callback context)."""
    from contextvars import copy_context

    from dash._callback_context import context_value
    from dash._utils import AttributeDict

    def call():
        context_value.set(AttributeDict(triggered_inputs=[{"prop_id": t, "value": None} for t in triggered]))
        return fn(*args)

    return copy_context().run(call)


def causal_pattern(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    logits = np.where(np.tril(np.ones((n, n), bool)), rng.normal(size=(n, n)), -np.inf)
    p = np.exp(logits - logits.max(1, keepdims=True))
    return (p / p.sum(1, keepdims=True)).astype(np.float32)


def find_components(component, cls=None, kind=None) -> list:
    """All components in a Dash tree with className containing ``cls`` or of type ``kind``."""
    out, stack = [], [component]
    while stack:
        c = stack.pop()
        if isinstance(c, (list, tuple)):
            stack.extend(c)
            continue
        if c is None or isinstance(c, (str, int, float)):
            continue
        if (cls and cls in (getattr(c, "className", None) or "").split()) or (kind and type(c).__name__ == kind):
            out.append(c)
        stack.append(getattr(c, "children", None))
    return out


def text_of(component) -> str:
    if isinstance(component, (list, tuple)):
        return " ".join(text_of(c) for c in component)
    if component is None or isinstance(component, (str, int, float)):
        return "" if component is None else str(component)
    return text_of(getattr(component, "children", None))
