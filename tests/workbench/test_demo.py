"""The bundled demo model (data/demo) and suites (data/suites): load, bars (sampled), smoke run.

The full model is never trained here; the smoke runs use a tiny config for a few steps.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"

import numpy as np
import pytest
import torch

from workbench.demo import corpus
from workbench.demo.evaluate import (ablate_heads, accuracy, greedy_generate, load_demo,
                                     sink_scores, sink_share_past_layer0)
from workbench.demo.train import TINY  # the CLI's --tiny model
from workbench.errors import WorkbenchError

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "data" / "demo"
SUITES = ROOT / "data" / "suites"
TASKS = ("passkey", "ioi", "colored_objects")


@pytest.fixture(scope="module")
def demo():
    """(model, tokenizer) loaded with plain transformers, eager attention (for α₀)."""
    torch.set_num_threads(1)
    return load_demo(DEMO, attn="eager")


@pytest.fixture(scope="module")
def suites():
    return {t: corpus.load_suite(SUITES / f"{t}.jsonl") for t in TASKS}


@pytest.fixture(scope="module")
def report():
    return json.loads((DEMO / "training_report.json").read_text())


# ---------------------------------------------------------------- files and suites

def test_demo_dir_is_plain_hf_llama_under_10mb():
    from transformers import AutoConfig

    conf = AutoConfig.from_pretrained(DEMO)
    assert conf.model_type == "llama"
    assert conf.num_key_value_heads < conf.num_attention_heads  # GQA
    assert conf.num_hidden_layers >= 2 and conf.num_attention_heads >= 2
    assert conf.max_position_embeddings >= 4096
    assert (DEMO / "model.safetensors").stat().st_size <= 10 * 2**20


def test_suites_have_required_fields(suites):
    assert all(len(rows) >= 20 for rows in suites.values())
    for row in suites["passkey"]:
        assert {"prompt", "answer", "context_length", "depth"} <= row.keys()
    for task in ("ioi", "colored_objects"):
        for row in suites[task]:
            assert {"prompt", "answer", "corrupted_prompt", "corrupted_answer"} <= row.keys()
            assert row["answer"] != row["corrupted_answer"]
    lengths = {r["context_length"] for r in suites["passkey"]}
    depths = {r["depth"] for r in suites["passkey"]}
    assert min(lengths) <= 128 and max(lengths) >= 1024
    assert min(depths) == 0.0 and max(depths) == 1.0


def test_answers_round_trip_through_tokenizer(suites):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(DEMO)
    for task, rows in suites.items():
        for row in rows:
            for key in ("answer", "corrupted_answer"):
                if key in row:
                    ids = tok(row[key], add_special_tokens=False).input_ids
                    assert tok.unk_token_id not in ids, (task, row[key])
                    assert row[key].startswith(" ")
                    assert " " + tok.decode(ids) == row[key]
    for row in suites["passkey"]:  # one token per digit, prompt length = context_length
        assert len(tok(row["answer"], add_special_tokens=False).input_ids) == 5
        assert len(tok(row["prompt"]).input_ids) == row["context_length"]


def test_corrupted_prompts_have_clean_length(suites):
    tok = corpus.build_tokenizer()
    for task in ("ioi", "colored_objects"):
        for row in suites[task]:
            assert len(tok(row["prompt"]).input_ids) == len(tok(row["corrupted_prompt"]).input_ids)


def test_tokenizer_prepends_bos():
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(DEMO)
    ids = tok("the sky is blue").input_ids
    assert ids[0] == tok.bos_token_id and len(ids) == 5
    assert tok.pad_token is not None and tok.eos_token is not None and tok.unk_token is not None


def test_suites_are_regenerated_identically(tmp_path):
    corpus.write_suites(tmp_path)
    for task in TASKS:
        assert (tmp_path / f"{task}.jsonl").read_text() == (SUITES / f"{task}.jsonl").read_text()


# ---------------------------------------------------------------- sampled bars

def test_greedy_generate_reproduces_answers_sampled(demo, suites):
    model, tok = demo
    sample = [next(r for r in suites["passkey"] if r["context_length"] == n and r["depth"] == d)
              for n, d in ((128, 0.75), (256, 0.5), (512, 1.0), (1024, 0.25))]
    for row in sample:
        want = tok(row["answer"], add_special_tokens=False).input_ids
        assert greedy_generate(model, tok, row["prompt"], len(want)) == want, row["context_length"]
    for task in ("ioi", "colored_objects"):
        assert sum(accuracy(model, tok, suites[task][:10])) >= 9, task
    rows = suites["colored_objects"][:10]
    corrupted = [{"prompt": r["corrupted_prompt"], "answer": r["corrupted_answer"]} for r in rows]
    assert sum(accuracy(model, tok, corrupted)) >= 9


def test_ioi_corrupted_prompts_sampled(demo, suites):
    # the swapped name order: a model that copies the first name fails every one of these
    model, tok = demo
    rows = suites["ioi"][:10]
    corrupted = [{"prompt": r["corrupted_prompt"], "answer": r["corrupted_answer"]} for r in rows]
    assert sum(accuracy(model, tok, corrupted)) >= 8


def test_passkey_depth_zero_sampled(demo, suites):
    # a needle right after <bos>, where the sink heads park their attention
    model, tok = demo
    rows = [r for r in suites["passkey"] if r["depth"] == 0.0]
    assert all(accuracy(model, tok, rows))


def test_first_token_sink_sampled(demo, suites):
    model, tok = demo
    alpha0 = sink_scores(model, tok, [r["prompt"] for r in suites["passkey"][2:5]])
    assert alpha0.shape == (model.config.num_hidden_layers, model.config.num_attention_heads)
    assert sink_share_past_layer0(alpha0) >= 0.5


def test_retrieval_heads_ablation_sampled(demo, suites, report):
    model, tok = demo
    rows = [r for r in suites["passkey"] if r["context_length"] in (128, 256)][::2]  # 10 rows
    heads = [tuple(h) for h in report["ablation"]["heads"]]
    assert sum(accuracy(model, tok, rows)) >= 9
    with ablate_heads(model, heads):
        assert sum(accuracy(model, tok, rows)) <= 5
    with ablate_heads(model, [tuple(h) for h in report["ablation"]["random_heads"][0]]):
        assert sum(accuracy(model, tok, rows)) >= 8


def test_ablate_heads_removes_hooks_on_error(demo):
    model, _ = demo
    o_proj = model.model.layers[1].self_attn.o_proj
    with pytest.raises(RuntimeError):
        with ablate_heads(model, [(1, 0)]):
            assert len(o_proj._forward_pre_hooks) == 1
            raise RuntimeError("boom")
    assert len(o_proj._forward_pre_hooks) == 0
    with pytest.raises(WorkbenchError, match="out of range"):
        with ablate_heads(model, [(99, 0)]):
            pass


# ---------------------------------------------------------------- smoke runs (tiny config)

def test_training_smoke_cli_end_to_end(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from typer.testing import CliRunner

    from workbench.demo.cli import app

    out, suites_out = tmp_path / "demo", tmp_path / "suites"
    res = CliRunner().invoke(app, ["train", "--tiny", "--steps", "20", "--out", str(out),
                                   "--suites-out", str(suites_out), "--no-evaluate"])
    assert res.exit_code == 0, res.output
    assert "step    19" in res.output and "report:" in res.output
    model = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    assert model.config.num_key_value_heads == 2 and tok("the sky").input_ids[0] == 2
    info = json.loads((out / "training_report.json").read_text())
    assert info["steps"] == 20 and info["seed"] == 0 and info["loss_curve"]
    last = info["monitor"][-1]  # the final progress evaluation also watches the shortcut and sink
    assert last["step"] == 19 and 0.0 <= last["ioi_swapped"] <= 1.0
    assert 0.0 <= last["sink_share"] <= 1.0
    assert {p.name for p in suites_out.iterdir()} == {f"{t}.jsonl" for t in TASKS}


def test_training_is_seeded_and_reproducible():
    from workbench.demo.train import DemoConfig, train

    cfg = replace(DemoConfig(**TINY), steps=6)
    a, _, _ = train(cfg, None, log=lambda s: None)
    b, _, _ = train(cfg, None, log=lambda s: None)
    c, _, _ = train(replace(cfg, seed=1), None, log=lambda s: None)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_ioi_training_chunks_use_both_name_orders():
    # trained on one order only, "answer the first name" solves every example (a shortcut)
    import numpy as np

    rng = np.random.default_rng(3)
    first = 0
    for _ in range(200):
        words, mask = corpus._ioi_chunk(rng, swap=0.5)
        answer = words[mask.index(1.0)]
        names = [w for w in words if w in corpus.NAMES]  # A, B, S2 (then the answer)
        assert names[2] != answer and answer in names[:2] and names[:2].count(answer) == 1
        first += answer == names[0]
    assert 70 <= first <= 130  # about half each way


def test_sink_tracking_attention_matches_eager_attention():
    # ground truth: α₀ read off the full eager attention matrix; the tracked value comes from the
    # P x P corner only, and the attention output itself must be plain SDPA's
    from workbench.demo.train import (SINK_ATTENTION, DemoConfig, _register_sink_attention,
                                      make_model)

    torch.manual_seed(0)
    model = make_model(DemoConfig(**TINY), len(corpus.vocabulary())).eval()
    ids = torch.randint(4, len(corpus.vocabulary()), (3, 40))
    ids[:, 0] = 2
    with torch.no_grad():
        model.set_attn_implementation("eager")
        eager = model(input_ids=ids, output_attentions=True)
        model.set_attn_implementation("sdpa")
        plain = model(input_ids=ids).logits
        _register_sink_attention()
        model.set_attn_implementation(SINK_ATTENTION)
        for layer in model.model.layers:
            layer.self_attn._wb_sink_prefix = 16
        tracked = model(input_ids=ids).logits
    torch.testing.assert_close(tracked, plain)
    for layer, att in zip(model.model.layers, eager.attentions):
        torch.testing.assert_close(layer.self_attn._wb_alpha0, att[:, :, 1:16, 0].mean(2),
                                   rtol=1e-4, atol=1e-5)


def test_sink_term_grows_a_first_token_sink_and_exports_a_plain_model(tmp_path):
    from transformers import AutoModelForCausalLM

    from workbench.demo.train import DemoConfig, train

    cfg = replace(DemoConfig(**TINY), steps=120, lr=3e-3, sink_target=0.6, sink_start=0.0)
    on, tok, _ = train(replace(cfg, sink_weight=1.0), tmp_path / "on", log=lambda s: None)
    off, _, _ = train(replace(cfg, sink_weight=0.0), None, log=lambda s: None)
    prompts = [" ".join(corpus.filler(np.random.default_rng(i), 60)) for i in range(3)]
    alpha = {}
    for name, model in (("on", on), ("off", off)):
        model.set_attn_implementation("eager")
        alpha[name] = sink_scores(model, tok, prompts)[1:]  # heads past layer 0
    assert alpha["on"].min() > 0.3 and alpha["off"].max() < 0.3
    assert not hasattr(on.model.layers[1].self_attn, "_wb_sink_prefix")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "on")  # plain transformers
    assert loaded.config._attn_implementation == "sdpa"


def test_sink_penalty_reads_only_the_selected_rows():
    from workbench.demo.train import DemoConfig, make_model, sink_penalty

    model = make_model(DemoConfig(**TINY), len(corpus.vocabulary()))
    # layer 1 (the only layer past 0): row 0 parks 0.9 on <bos> in every head, row 1 only 0.1
    model.model.layers[1].self_attn._wb_alpha0 = torch.tensor([[0.9] * 4, [0.1] * 4])
    assert float(sink_penalty(model, 0.5, torch.tensor([True, False]))) == 0.0
    assert float(sink_penalty(model, 0.5, torch.tensor([False, True]))) == pytest.approx(0.4)
    assert float(sink_penalty(model, 0.5, torch.tensor([True, True]))) == pytest.approx(0.0, abs=1e-6)
    assert float(sink_penalty(model, 0.5, torch.tensor([False, False]))) == 0.0


def test_sink_penalty_covers_only_the_chosen_heads():
    from workbench.demo.train import DemoConfig, make_model, sink_penalty

    model = make_model(DemoConfig(**TINY), len(corpus.vocabulary()))
    # heads 0-1 park 0.9 on <bos>, heads 2-3 only 0.1
    model.model.layers[1].self_attn._wb_alpha0 = torch.tensor([[0.9, 0.9, 0.1, 0.1]])
    rows = torch.tensor([True])
    assert float(sink_penalty(model, 0.5, rows, heads=2)) == 0.0  # the free heads are ignored
    assert float(sink_penalty(model, 0.5, rows, heads=3)) == pytest.approx(0.4 / 3)
    assert float(sink_penalty(model, 0.5, rows)) == pytest.approx(0.2)  # 0: every head


def test_sink_term_switches_on_at_sink_start():
    from workbench.demo.train import DemoConfig, train

    cfg = replace(DemoConfig(**TINY), steps=20, lr=3e-3, sink_target=0.6)
    curves = {}
    for name, over in (("off", dict(sink_weight=0.0)),
                       ("late", dict(sink_weight=1.0, sink_start=0.5)),
                       ("on", dict(sink_weight=1.0, sink_start=0.0))):
        _, _, info = train(replace(cfg, **over), None, log=lambda s: None)
        curves[name] = dict((step, loss) for step, loss in info["loss_curve"])
    # the logged task loss of step s comes from the weights after s updates: the term of step 0
    # shows from step 1 on, the late term (on from step 10) from step 11 on
    assert curves["on"][10] != curves["off"][10]
    assert curves["late"][10] == curves["off"][10]
    assert curves["late"][19] != curves["off"][19]
