"""Task suites for any causal LM: well-formed rows for the demo's and SmolLM2's tokenizers, seeds
that reproduce, the one greedy scorer against `generate`, and causal sections in runs of models
other than the demo (a tiny in-memory Llama with SmolLM2's tokenizer; one short SmolLM2 check)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

import workbench as wb
from tests.workbench.conftest import GGUF, gguf_dir
from tests import tiny_models
from workbench import tasks
from workbench.analyzers import circuits as C
from workbench.analyzers import retrieval as R
from workbench.errors import WorkbenchError
from workbench.tasks import generators as G
from workbench.tasks.scoring import greedy_match, greedy_match_ids
from workbench.tasks.vocabulary import word_tokens

CAUSAL = ["task_accuracy", "circuits", "retrieval_heads", "niah", "niah_curve"]


@pytest.fixture(scope="module")
def demo():
    return wb.load_model("demo")


def _ids(tok, text, special=True):
    return tok(text, add_special_tokens=special)["input_ids"]


def check_common(model, name, rows, n):
    tok = model.tokenizer
    assert len(rows) == n and [r["id"] for r in rows] == list(range(n))
    for r in rows:
        p, a = _ids(tok, r["prompt"]), _ids(tok, r["answer"], False)
        assert a and _ids(tok, r["prompt"] + r["answer"]) == p + a  # the answer round-trips
        assert tok.unk_token_id not in p + a
        assert isinstance(r["model_correct"], bool)
    assert [r["model_correct"] for r in rows] == greedy_match(model.hf_model, tok, rows)
    if name in tasks.CIRCUIT_TASKS:
        by_template = {}
        for r in rows:
            p, c = _ids(tok, r["prompt"]), _ids(tok, r["corrupted_prompt"])
            assert len(p) == len(c)  # patching needs equal lengths
            a, b = _ids(tok, r["answer"], False), _ids(tok, r["corrupted_answer"], False)
            assert len(a) == len(b) == 1 and a != b
            by_template.setdefault(r["template"], set()).add(len(p))
        assert all(len(lengths) == 1 for lengths in by_template.values())  # position-aware means are defined


def check_ioi(tok, rows, demo=False):
    for r in rows:
        io, s = r["answer"].strip(), r["corrupted_answer"].strip()
        words = re.findall(r"\w+", r["prompt"])
        assert words.count(io) == 1 and words.count(s) == 2  # IO once, S twice: an IOI sentence
        for name in (io, s):
            (token,) = _ids(tok, f" {name}", False)  # one token mid-sentence, with its leading space
            assert _ids(tok, r["prompt"]).count(token) == words.count(name)
        if not demo:  # ABC: three new names, none of the clean ones
            assert r["template"] in G.IOI_TEMPLATES and (r["io"], r["s"]) == (io, s)
            fmt = G.IOI_TEMPLATES[r["template"]]
            first, second = (io, s) if r["template"].startswith("abba") else (s, io)
            assert r["prompt"].startswith(fmt.split("{")[0]) and r["prompt"].index(first) < r["prompt"].index(second)
            corrupt = set(re.findall(r"\w+", r["corrupted_prompt"])) - set(words)
            assert len(corrupt) == 3 and not {io, s} & set(re.findall(r"\w+", r["corrupted_prompt"]))


def check_colored(rows):
    for r in rows:
        scene = {o: c for c, o in re.findall(r"\ban? (\w+) (\w+)", r["prompt"].split(".")[0])}
        asked = [w for w in re.findall(r"\b[Tt]he (\w+)", r["prompt"]) if w in scene][-1]
        other = [w for w in re.findall(r"\b[Tt]he (\w+)", r["corrupted_prompt"]) if w in scene][-1]
        assert len(scene) == 3 and asked != other
        assert r["answer"] == f" {scene[asked]}" and r["corrupted_answer"] == f" {scene[other]}"


def check_induction(tok, rows):
    special = _ids(tok, "")
    for r in rows:
        ids = _ids(tok, r["prompt"])[len(special):]
        span, repeat = r["span"], r["repeat"]
        assert len(ids) == span + repeat and ids[span:] == ids[:repeat] and len(set(ids[:span])) == span
        assert _ids(tok, r["answer"], False) == [ids[repeat]]


def check_passkey(tok, rows, n_ctx):
    for r in rows:
        needle = re.search(r"The pass key is (\d+)\. Remember it\.", r["prompt"])
        assert needle and r["prompt"].count("pass key is") == 2  # the needle verbatim, once, and the question
        assert r["answer"] == f" {needle.group(1)}" and r["prompt"].endswith("The pass key is")
        p, a = _ids(tok, r["prompt"]), _ids(tok, r["answer"], False)
        assert sum(p[i:i + len(a)] == a for i in range(len(p))) == 1  # copied from the needle only
        assert len(p) <= r["context_length"] and len(p) + len(a) <= n_ctx
        before = r["prompt"][:needle.start()].count(".")
        after = r["prompt"][needle.end():].count(".")
        if r["depth"] == 0.0:
            assert before == 0
        if r["depth"] == 1.0:
            assert after == 0  # the needle right before the question


@pytest.mark.parametrize("name", tasks.SUITES)
def test_generated_suites_are_well_formed_for_smollm2s_tokenizer(english, name):
    n = 15 if name == "passkey" else 24
    rows = wb.task_suite(name, english, n=n, seed=3)
    check_common(english, name, rows, n)
    tok = english.tokenizer
    if name == "ioi":
        check_ioi(tok, rows)
        assert len({r["template"] for r in rows}) > 5
    elif name == "colored_objects":
        check_colored(rows)
    elif name == "induction":
        check_induction(tok, rows)
    else:
        check_passkey(tok, rows, english.n_ctx)
        cells = {(r["context_length"], r["depth"]) for r in rows}
        assert cells == {(c, d) for c in tasks.PASSKEY_LENGTHS for d in tasks.PASSKEY_DEPTHS}
        assert sum(r["n_tokens"] == r["context_length"] for r in rows) >= 12  # the gap filled exactly


@pytest.mark.parametrize("name", tasks.SUITES)
def test_demo_suites_are_the_bundled_ones_and_well_formed(demo, name):
    rows = wb.task_suite(name, demo, n=40)
    check_common(demo, name, rows, 40)
    if name == "induction":
        check_induction(demo.tokenizer, rows)
        chance = 1 / len(word_tokens(demo.tokenizer))  # a guess among the span's word pool
        assert np.mean([r["model_correct"] for r in rows]) > 10 * chance  # the demo was trained on repeated spans
        return
    bundled = R.read_trials(Path(wb.models.data_dir()) / "suites" / f"{name}.jsonl")
    key = ["prompt", "answer", "corrupted_prompt", "corrupted_answer", "context_length", "depth"]
    def as_set(rs):
        return sorted(tuple(r.get(k) for k in key) for r in rs)

    assert as_set(rows) == as_set(bundled)
    if name == "ioi":
        check_ioi(demo.tokenizer, rows, demo=True)
    elif name == "colored_objects":
        assert all(r["answer"] != r["corrupted_answer"] for r in rows)
    else:  # word-level text: "The pass key is 9 9 3 4 7 . Remember it ."
        for r in rows:
            assert r["prompt"].count(f"The pass key is{r['answer']} . Remember it .") == 1
        firsts = wb.task_suite("passkey", demo, n=20)  # the first rows cover every (length, depth) cell
        assert len({(r["context_length"], r["depth"]) for r in firsts}) == 20
    assert np.mean([r["model_correct"] for r in rows]) >= 0.9  # the demo's designed accuracy


def test_seeds_reproduce_and_calls_return_fresh_copies(english, demo):
    for name in ("ioi", "passkey"):
        a = wb.task_suite(name, english, n=6, seed=1)
        assert a == wb.task_suite(name, english, n=6, seed=1)
        assert {r["prompt"] for r in a}.isdisjoint(r["prompt"] for r in wb.task_suite(name, english, n=6, seed=2))
    a[0]["prompt"] = "changed"
    assert wb.task_suite("passkey", english, n=6, seed=1)[0]["prompt"] != "changed"
    held_out = wb.task_suite("ioi", demo, n=10, seed=1)  # the demo's own generators, new draws
    assert not {r["prompt"] for r in held_out} & {r["prompt"] for r in wb.task_suite("ioi", demo)}
    only = wb.task_suite("ioi", english, n=8, templates=["baba-05"])
    assert {r["template"] for r in only} == {"baba-05"} and len({r["prompt"] for r in only}) == 8


def test_model_correct_follows_the_weights():
    model = wb.load_model("demo")
    assert all(r["model_correct"] for r in wb.task_suite("ioi", model, n=8))
    with torch.no_grad():
        model.hf_model.lm_head.weight.mul_(-1.0)  # in place: the suite must be scored again
    try:
        assert not any(r["model_correct"] for r in wb.task_suite("ioi", model, n=8))
    finally:
        with torch.no_grad():
            model.hf_model.lm_head.weight.mul_(-1.0)


def test_the_greedy_scorer_equals_generate_in_any_batch():
    hf = tiny_models.hf_model("llama", seed=1)
    hf.generation_config.eos_token_id = None  # greedy through </s> too: no early stop, no suppressed token
    torch.manual_seed(0)
    pairs, expected = [], []
    for length in (3, 5, 5, 8, 13, 21):
        prompt = torch.randint(7, 97, (1, length))
        new = hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=4, do_sample=False,
                          pad_token_id=0)[0, length:].tolist()
        assert len(new) == 4
        wrong = new[:3] + [(new[3] + 1 - 7) % 90 + 7]  # same first three tokens, another fourth
        pairs += [(prompt[0].tolist(), new), (prompt[0].tolist(), new[:2]), (prompt[0].tolist(), wrong)]
        expected += [True, True, False]
    assert greedy_match_ids(hf, pairs) == expected  # one padded batch
    assert greedy_match_ids(hf, pairs, max_tokens=1) == expected  # one row per forward


def test_the_greedy_scorer_matches_generate_on_the_demo_text(demo):
    from workbench.demo.evaluate import accuracy, greedy_generate

    rows = [r for r in wb.task_suite("passkey", demo, n=40) if r["context_length"] <= 256][:6]
    rows += [dict(rows[0], answer=" 0 0 0 0 0"), *wb.task_suite("colored_objects", demo, n=4)]
    hits = greedy_match(demo.hf_model, demo.tokenizer, rows)
    for row, hit in zip(rows, hits):
        answer = demo.tokenizer(row["answer"], add_special_tokens=False)["input_ids"]
        assert hit == (greedy_generate(demo.hf_model, demo.tokenizer, row["prompt"], len(answer)) == answer)
    assert hits[-5] is False and sum(hits) >= 8
    assert accuracy(demo.hf_model, demo.tokenizer, rows) == hits  # the demo's evaluation shares the scorer


def test_bad_input_gives_one_clear_error(english, minilm):
    word_level = wb.load_model("tiny", hf_model=tiny_models.hf_model("llama"), tokenizer=tiny_models.tokenizer("llama"))
    cases = [
        (lambda: wb.task_suite("greater_than", english), "unknown suite 'greater_than'"),
        (lambda: wb.task_suite("ioi", english, n=0), "n must be a positive int; got 0"),
        (lambda: wb.task_suite("ioi", english, seed=-1), "seed must be an int >= 0"),
        (lambda: wb.task_suite("ioi", english, lengths=[64]), "unknown option 'lengths' for the ioi suite"),
        (lambda: wb.task_suite("ioi", english, templates=["abba-99"]), "unknown ioi template 'abba-99'"),
        (lambda: wb.task_suite("passkey", english, lengths=[4096]), "leave 8 tokens of tiny-english's context"),
        (lambda: wb.task_suite("passkey", english, lengths=[16]), "too short for the needle"),
        (lambda: wb.task_suite("passkey", english, depths=[1.5]), r"depths must be .* in \[0, 1\]"),
        (lambda: wb.task_suite("induction", english, span=2), "span must be an int >= 3"),
        (lambda: wb.task_suite("ioi", minilm), "is an encoder"),
        (lambda: wb.task_suite("ioi", word_level), "reads only 0 of the names as one token"),
        (lambda: wb.circuit(word_level, "ioi"), "task 'ioi' cannot be built for tiny"),
        (lambda: wb.retrieval_scores(word_level), "no default trials for tiny"),
    ]
    for call, message in cases:
        with pytest.raises(WorkbenchError, match=message):
            call()
    assert tasks.supports(word_level, "induction") is None  # random word tokens exist in any vocabulary


def test_causal_sections_run_on_an_in_memory_causal_lm(english, tmp_path):
    run = wb.analyze(english, tiny_models.PROMPTS, out=tmp_path / "run", analyses=CAUSAL, progress=False)
    assert run.manifest["model"]["source"] == "in-memory" and not run.manifest.get("skipped")
    acc = run.table("task_accuracy")
    whole = acc[acc["context_length"].isna()].set_index("suite")
    assert list(whole.index) == list(tasks.SUITES) and (whole["n"] > 0).all()
    for name in tasks.SUITES:  # the table reports the very rows the sections read
        rows = tasks.analysis_suite(name, english)
        assert whole.loc[name, "n_correct"] == sum(r["model_correct"] for r in rows)
    per_length = acc[acc["suite"] == "passkey"].dropna(subset=["context_length"])
    assert sorted(per_length["context_length"]) == list(tasks.PASSKEY_LENGTHS)
    circuits = run.table("circuits")
    assert set(circuits["task"]) == set(C.TASKS) and len(circuits) == 2 * 2 * english.n_layers * english.n_heads
    ioi = wb.circuit(english, "ioi")  # the public call reads the same generated suite
    mine = circuits[(circuits["task"] == "ioi") & (circuits["method"] == "attribution_patching")]
    np.testing.assert_allclose(ioi["effect"].to_numpy(), mine["effect"].to_numpy(), rtol=1e-5, atol=1e-6)
    assert len(run.table("retrieval_heads")) == english.n_layers * english.n_heads
    niah = run.table("niah")
    assert set(niah["context_length"]) == set(tasks.PASSKEY_LENGTHS)
    if not run.table("retrieval_heads")["is_retrieval"].any():  # a random model copies no needle: no set, no curve
        assert niah["condition"].unique().tolist() == ["full"] and run.table("niah_curve").empty
    path = wb.report(run, tmp_path / "report.html", compute=False, progress=False)
    text = path.read_text()
    for name in CAUSAL:
        section = re.search(rf'<section id="analysis-{name}"[^>]*>(.*?)</section>', text, re.DOTALL).group(1)
        assert "Not applicable" not in section and f"table <code>{name}</code>" in section


def test_a_tokenizer_without_english_skips_with_the_reason(tmp_path):
    word_level = wb.load_model("tiny", hf_model=tiny_models.hf_model("llama"), tokenizer=tiny_models.tokenizer("llama"))
    run = wb.analyze(word_level, tiny_models.PROMPTS, out=tmp_path / "run", analyses=CAUSAL, progress=False)
    skipped = run.manifest["skipped"]
    assert set(skipped) == {"circuits", "retrieval_heads", "niah", "niah_curve"}
    assert "reads only 0 of the names as one token" in skipped["circuits"]
    acc = run.table("task_accuracy").set_index("suite")
    assert acc.loc["induction", "n"] == 40 and acc.loc["ioi", "n"] == 0 and "no ioi suite" in acc.loc["ioi", "note"]


# -- SmolLM2-135M: one short check ---------------------------------------------------------
@pytest.fixture(scope="module")
def smollm2(smol_tok):
    if "smollm2" in wb.SOURCES:
        return wb.load_model("smollm2")
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(gguf_dir(), gguf_file=GGUF, attn_implementation="eager",
                                              dtype=torch.float32)
    return wb.load_model("smollm2", hf_model=hf.eval(), tokenizer=smol_tok)


def test_smollm2_suites_and_retrieval_sections(smollm2, tmp_path, monkeypatch):
    monkeypatch.setitem(tasks.ANALYSIS_SUITES, "passkey", {"n": 3, "lengths": [256], "depths": [0.0, 0.5, 1.0]})
    for name in ("ioi", "colored_objects", "induction"):
        monkeypatch.setitem(tasks.ANALYSIS_SUITES, name, {"n": 4})
    ioi = wb.task_suite("ioi", smollm2, n=4)
    check_common(smollm2, "ioi", ioi, 4)
    check_ioi(smollm2.tokenizer, ioi)
    assert sum(r["model_correct"] for r in ioi) >= 3  # SmolLM2 does IOI (0.94 on the default 16)
    run = wb.analyze(smollm2, ["The cat sat on the mat."], out=tmp_path / "run",
                     analyses=["task_accuracy", "retrieval_heads"], progress=False)
    assert not run.manifest.get("skipped") and run.manifest["model"]["n_heads"] == 9
    acc = run.table("task_accuracy").set_index("suite")
    assert acc.loc["ioi", "n_correct"] == sum(r["model_correct"] for r in ioi)
    scores = run.table("retrieval_heads")
    assert len(scores) == 270 and scores["retrieval_score"].max() > 0.5  # real copy heads exist
    frame = wb.circuit(smollm2, "ioi")  # attribution patching on the generated ABC suite
    assert frame.attrs["ld_clean"] > frame.attrs["ld_corrupted"] and frame.attrs["n"] == 4


def test_the_word_pool_follows_tokens_added_to_the_tokenizer():
    from transformers import AutoTokenizer

    from workbench.models import data_dir

    tok = AutoTokenizer.from_pretrained(data_dir() / "demo")  # its own copy: the fixture's stays as it is
    before = word_tokens(tok)
    assert before and word_tokens(tok) == before  # asked again (a cached scan): the same pool
    tok.add_tokens(["zebrafish"])
    assert word_tokens(tok) == before + [tok.convert_tokens_to_ids("zebrafish")]  # a new word is in the pool
