"""Task suites for any causal LM, generated for the model's own tokenizer (seeded, offline).

    >>> rows = wb.task_suite("ioi", model, n=40, seed=0)
    >>> rows[0]["prompt"], rows[0]["answer"], rows[0]["model_correct"]

Suites (`SUITES`): ``ioi`` (Wang et al. 2022's templates with an ABC-corrupted twin),
``colored_objects`` (three coloured objects, one asked about, a twin asking about another),
``induction`` (repeated random tokens) and ``passkey`` (needle in an English haystack). Every
row carries ``prompt``, ``answer`` (its exact continuation: greedy decoding of len(answer
tokens) tokens reproduces it when the model is right), ``model_correct`` (whether this model
does, by the shared greedy scorer `workbench.tasks.scoring`) and ``id`` (its index); the
circuit tasks add ``corrupted_prompt``, ``corrupted_answer`` and ``template``. See
`workbench.tasks.generators` for each suite's fields.

The demo model keeps its own bundled suites (``data/suites``, the analyses' defaults there):
``task_suite(name, demo)`` returns them (seed 0) or draws new rows from the demo's own corpus
generators (other seeds), since the demo's word-level vocabulary cannot spell the English
templates. Its bundled ioi twin swaps the subject's second mention (the answer flips) rather
than the ABC names.
"""

from __future__ import annotations

import copy
import math
import weakref

import numpy as np

from workbench.checks import choice, integer, positive_int
from workbench.errors import WorkbenchError
from workbench.tasks import generators
from workbench.tasks.scoring import greedy_match, greedy_match_ids, sdpa

SUITES = ("ioi", "colored_objects", "induction", "passkey")
CIRCUIT_TASKS = ("ioi", "colored_objects")

# Passkey context lengths, tokens with specials (Wu et al. go to 128k on GPUs; a CPU run of a
# 135M model reads ~1k tokens a second, so 1024 is the default top) and needle depths.
PASSKEY_LENGTHS = (256, 512, 1024)
PASSKEY_DEPTHS = (0.0, 0.25, 0.5, 0.75, 1.0)
#: The rows the registered analyses (circuits, retrieval heads, NIAH, task accuracy) read on a
#: non-demo model. Sizes fit smollm2 (270 heads) on 2 CPU cores: activation patching runs one
#: patched copy of every example per head (8 x 270 sequences a task), and NIAH reads the passkey
#: suite 7 times (full, retrieval heads ablated, 5 random sets), so passkey is one trial per
#: (length, depth) cell of 3 lengths x 3 depths. Measured by `python -m workbench.tasks.bench`.
ANALYSIS_SUITES: dict[str, dict] = {
    "ioi": {"n": 8}, "colored_objects": {"n": 8}, "induction": {"n": 40},
    "passkey": {"n": 9, "depths": (0.0, 0.5, 1.0)},
}
_DEMO_SEED = 12345  # the bundled suites' seed (workbench.demo.corpus.make_suites)

__all__ = ["ANALYSIS_SUITES", "CIRCUIT_TASKS", "SUITES", "analysis_suite", "greedy_match", "greedy_match_ids", "memo",
           "passkey_lengths", "supports", "task_suite"]


def passkey_lengths(model, lengths=PASSKEY_LENGTHS) -> list[int]:
    """The passkey lengths that fit the model's context (with room for the answer); a model whose
    context is shorter than all of them gets one length, its context less 8 tokens."""
    room = model.n_ctx - 8
    fit = [int(c) for c in lengths if c <= room]
    return fit or [room]


def supports(model, name: str) -> str | None:
    """None if `task_suite(name, model)` can be built for this model, else why not (cheap:
    tokenizer checks only, no forward). Used by the analyses' ``applies``."""
    choice("suite", name, SUITES)
    if not model.is_causal:
        return f"the {name} suite is scored by next-token prediction; {model.name} is an encoder"
    if model.source == "demo":
        return None
    try:
        _rows(model, name, 1, np.random.default_rng(0), {})
    except WorkbenchError as exc:
        return f"no {name} suite for this tokenizer: {exc}"
    return None


def analysis_suite(name: str, model, seed: int = 0) -> list[dict]:
    """The suite the registered analyses use: `ANALYSIS_SUITES` rows for a generated suite, the
    whole bundled suite for the demo (seed 0; other seeds: as many rows from its generators).
    Seed 1 gives the held-out rows that causal checks of a ranking made on seed 0 read."""
    if model.source == "demo" and name != "induction":
        return task_suite(name, model, n=40, seed=seed)
    return task_suite(name, model, seed=seed, **ANALYSIS_SUITES[choice("suite", name, SUITES)])


def task_suite(name: str, model, n: int = 40, seed: int = 0, **options) -> list[dict]:
    """A task suite for ``model``'s tokenizer, each row scored by the model.

    Args:
        name: ``"ioi"``, ``"colored_objects"``, ``"induction"`` or ``"passkey"``.
        model: a causal `ModelHandle`.
        n: rows.
        seed: the draw; the same seed gives the same rows (and different seeds independent
            ones, e.g. held-out prompts).
        options: per suite, keyword-only — ioi / colored_objects: ``templates`` (ids of
            `generators.IOI_TEMPLATES` / `COLORED_TEMPLATES`, default all); induction:
            ``span`` (16); passkey: ``lengths`` (`PASSKEY_LENGTHS` cut to the model's context,
            `passkey_lengths`) and ``depths`` (`PASSKEY_DEPTHS`).
    Returns:
        A list of ``n`` dicts (see the module docstring); a fresh copy on every call.
    Raises:
        WorkbenchError: unknown suite or option, bad n or seed, an encoder, a tokenizer that
            cannot spell the suite (e.g. no one-token English names).
    """
    choice("suite", name, SUITES)
    n = positive_int("n", n)
    seed = integer("seed", seed, low=0)
    allowed = {"ioi": {"templates"}, "colored_objects": {"templates"}, "induction": {"span"},
               "passkey": {"lengths", "depths"}}[name]
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise WorkbenchError(f"unknown option {unknown[0]!r} for the {name} suite: expected some of {sorted(allowed)}")
    if not model.is_causal:
        raise WorkbenchError(f"task suites are scored by next-token prediction; {model.name} is an encoder")

    def build() -> list[dict]:
        rows = _rows(model, name, n, np.random.default_rng([seed, SUITES.index(name)]), options, seed=seed)
        with sdpa(model.hf_model):
            correct = greedy_match(model.hf_model, model.tokenizer, rows)
        return [{**row, "id": i, "model_correct": hit} for i, (row, hit) in enumerate(zip(rows, correct))]

    return memo(model, ("task_suite", name, n, seed, repr(sorted(options.items()))), build)


def _rows(model, name: str, n: int, rng, options: dict, seed: int = 0) -> list[dict]:
    tok = model.tokenizer
    if model.source == "demo" and name != "induction":
        return _demo_rows(name, n, seed)
    if name == "ioi":
        return generators.ioi(tok, n, rng, **options)
    if name == "colored_objects":
        return generators.colored_objects(tok, n, rng, **options)
    if name == "induction":
        span = positive_int("span", options.get("span", 16))
        return generators.induction(tok, n, rng, span=span)
    lengths = options.get("lengths")
    lengths = passkey_lengths(model) if lengths is None else [positive_int("passkey length", c) for c in lengths]
    too_long = [c for c in lengths if c + 8 > model.n_ctx]
    if too_long or not lengths:
        raise WorkbenchError(f"passkey lengths must be non-empty and leave 8 tokens of {model.name}'s context of "
                             f"{model.n_ctx}; got {list(lengths)}")
    depths = [float(d) for d in options.get("depths", PASSKEY_DEPTHS)]
    if not depths or any(not 0 <= d <= 1 for d in depths):
        raise WorkbenchError(f"passkey depths must be a non-empty list of numbers in [0, 1]; got {depths}")
    return generators.passkey(tok, n, rng, lengths=lengths, depths=depths)


def _demo_rows(name: str, n: int, seed: int) -> list[dict]:
    """The demo's bundled rows (seed 0) or new rows from its corpus generators (other seeds);
    passkey rows interleave the (context_length, depth) cells so the first n cover them all."""
    from workbench.demo.corpus import load_suite, make_suites
    from workbench.models import data_dir

    if seed == 0 and n <= 40:
        rows = load_suite(data_dir() / "suites" / f"{name}.jsonl")
    else:
        rows = make_suites(_DEMO_SEED + seed, n_per_cell=math.ceil(n / 20), n_task=n)[name]
    if name == "passkey":
        rank: dict = {}
        order = []
        for i, row in enumerate(rows):
            cell = (row["context_length"], row["depth"])
            order.append((rank.get(cell, 0), i))
            rank[cell] = rank.get(cell, 0) + 1
        rows = [rows[i] for _, i in sorted(order)]
    elif name == "ioi":
        rows = [{**r, "template": f"demo-{r['prompt'].split()[0].lower()}"} for r in rows]
    else:
        rows = [{**r, "template": "demo"} for r in rows]
    return [dict(r) for r in rows[:n]]


# -- memo: suites are scored once per model, weights and arguments ------------------------
_CACHE: dict[int, tuple] = {}  # id(model) -> (weakref to the model, {key: rows})


def memo(model, key, compute):
    """``compute()`` once per model, weights and ``key``; later calls get a deep copy (used for
    results that several registered analyses read, e.g. the retrieval scores NIAH ablates)."""
    for dead in [k for k, (ref, _) in _CACHE.items() if ref() is None]:
        del _CACHE[dead]
    key = (key, _weights_version(model))
    cached = _CACHE.get(id(model))
    if cached is None or cached[0]() is not model:
        cached = _CACHE[id(model)] = (weakref.ref(model), {})
    if key not in cached[1]:
        cached[1][key] = compute()
    return copy.deepcopy(cached[1][key])


def _weights_version(model) -> tuple:
    """Changes whenever a parameter is replaced or edited in place (torch's version counter)."""
    return tuple((p.data_ptr(), p._version) for p in model.hf_model.parameters())
