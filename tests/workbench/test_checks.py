"""Every numeric argument and selection is checked (issue 19 items 8 and 10, issue 20 item 6):
NaN, infinities, negatives, floats where ints are expected, bools, empty selections and answers
outside the vocabulary each end in one WorkbenchError naming the value and what was expected,
while numpy integers and floats are accepted and give the same result as Python numbers."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

import workbench as wb
from tests import tiny_models
from workbench.analyzers import circuits
from workbench.checks import choice, fraction, integer, names, number, positive, positive_int

NAN, INF = float("nan"), float("inf")
PROMPTS = ["w1 w2 w3 w4", "w5 w6 w7"]
TASK = [{"prompt": "w1 w2 w3", "answer": " w4", "corrupted_prompt": "w1 w2 w5", "corrupted_answer": " w6"}]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    handle = wb.load_model("tiny-llama", hf_model=tiny_models.hf_model("llama"), tokenizer=tiny_models.tokenizer("llama"))
    handle.meta["scratch"] = tmp_path_factory.mktemp("scratch")  # where a run would go (none may be made)
    return handle


#: (what is called, the bad input, the message it must give). The comment says what main did
#: before this change: "ok" where it already refused the input (the message may be reworded).
BAD = [
    ("circuit", lambda m: wb.circuit(m, TASK, threshold=NAN), r"threshold must be a positive number; got nan"),  # 0 heads
    ("circuit", lambda m: wb.circuit(m, TASK, threshold=-0.5), r"threshold must be a positive number; got -0.5"),  # all
    ("circuit", lambda m: wb.circuit(m, TASK, threshold=INF), r"threshold must be a positive number; got inf"),  # 0 heads
    ("circuit", lambda m: wb.circuit(m, TASK, top_n=1.5), r"top_n must be an int in \[1, 8\]; got 1.5 \(float\)"),  # ok
    ("circuit", lambda m: wb.circuit(m, TASK, top_n=True), r"top_n must be an int in \[1, 8\]; got the bool True"),  # 1 head
    ("select", lambda m: circuits.select(pd.Series([0.2, -0.3]), threshold=-0.5),  # all heads
     r"threshold must be a positive number"),
    ("circuit", lambda m: wb.circuit(m, TASK, method="exact"), r"unknown method 'exact': expected one of"),  # ok
    ("hidden_sinks", lambda m: wb.hidden_sinks(m, PROMPTS, threshold=INF),  # returned nothing
     r"threshold must be a number in \(0, 1\); got inf"),
    ("hidden_sinks", lambda m: wb.hidden_sinks(m, PROMPTS, threshold=1.0),  # returned nothing
     r"threshold must be a number in \(0, 1\); got 1.0"),
    ("hidden_sinks", lambda m: wb.hidden_sinks(m, PROMPTS, min_queries=2.0), r"min_queries must be a positive int; got 2.0"),  # ok
    ("sink_scores", lambda m: wb.sink_scores(m, PROMPTS, eps=NAN), r"eps must be a number in \(0, 1\]; got nan"),  # ok
    ("massive_activations", lambda m: wb.massive_activations(m, PROMPTS, abs_threshold=INF),  # returned nothing
     r"abs_threshold must be a positive number; got inf"),
    ("massive_activations", lambda m: wb.massive_activations(m, PROMPTS, ratio_threshold="1000"),  # ok
     r"ratio_threshold must be a positive number; got the string '1000'"),
    ("secondary_sinks", lambda m: wb.secondary_sinks(m, PROMPTS, cos_threshold=-0.9),  # ok
     r"cos_threshold must be a number in \(0, 1\); got -0.9"),
    ("secondary_sinks", lambda m: wb.secondary_sinks(m, PROMPTS, batch_size=0), r"batch_size must be a positive int; got 0"),  # ok
    ("capture_stats", lambda m: wb.capture_stats(m, PROMPTS, batch_size=True),  # ran as batch_size 1
     r"batch_size must be a positive int; got the bool True"),
    ("capture_stats", lambda m: wb.capture_stats(m, PROMPTS, batch_size=2.0), r"batch_size must be a positive int; got 2.0"),  # ok
    ("capture_stats", lambda m: wb.capture_stats(m, PROMPTS, window=-1), r"window must be an int >= 0; got -1"),  # ok (kernel)
    ("head_summary", lambda m: wb.head_summary(m, PROMPTS, batch_size=0),  # ValueError traceback (range step 0)
     r"batch_size must be a positive int; got 0"),
    ("head_importance", lambda m: wb.head_importance(m, PROMPTS, method="integrated_gradients", n_steps=2.5),  # ok
     r"n_steps must be an int >= 2; got 2.5 \(float\)"),
    ("head_importance", lambda m: wb.head_importance(m, PROMPTS, seed=-1), r"seed must be an int >= 0; got -1"),  # accepted
    ("head_importance", lambda m: wb.head_importance(m, PROMPTS, batch_size=np.float64(2.0)),  # ok
     r"batch_size must be a positive int; got np.float64\(2.0\) \(float64\)"),
    ("pruning_curve", lambda m: wb.pruning_curve(m, PROMPTS, step=NAN), r"step must be a number in \(0, 1\]; got nan"),  # ok
    ("head_patterns", lambda m: wb.head_patterns(m, PROMPTS, local_window=0), r"local_window must be a positive int; got 0"),  # ok
    ("head_patterns", lambda m: wb.head_patterns(m, PROMPTS, seed=1.5),  # RuntimeError traceback (manual_seed)
     r"seed must be an int >= 0; got 1.5"),
    ("retrieval_scores", lambda m: wb.retrieval_scores(m, [{"prompt": "w1 w2", "answer": " w2"}], threshold=NAN),  # ok
     r"threshold must be a number in \[0, 1\); got nan"),
    ("retrieval_scores", lambda m: wb.retrieval_scores(m, [{"prompt": "w1 w2", "answer": " w2"}], threshold="0.1"),
     r"threshold must be a number in \[0, 1\); got the string '0.1'"),  # TypeError traceback
    ("saliency_alignment", lambda m: wb.saliency_alignment(m, PROMPTS, topk=0.5), r"topk must be a positive int; got 0.5"),  # ok
    ("saliency_alignment", lambda m: wb.saliency_alignment(m, PROMPTS, n_steps=0),  # Captum AssertionError traceback
     r"n_steps must be a positive int; got 0"),
    ("token_attributions", lambda m: wb.token_attributions(m, "w1 w2 w3", n_steps=-1),  # Captum AssertionError traceback
     r"n_steps must be a positive int"),
    ("analyze", lambda m: wb.analyze(m, PROMPTS, out=m.meta["scratch"] / "r", analyses=[]),  # an empty run was made
     r"analyses is empty: expected at least one of \["),
    ("analyze", lambda m: wb.analyze(m, PROMPTS, out=m.meta["scratch"] / "r", analyses=["head_sumary"]),  # ok
     r"unknown analysis 'head_sumary': expected one of \["),
    ("check_layer", lambda m: m.check_layer(1.5), r"layer must be an int; got 1.5 \(float\)"),  # "out of range"
    ("check_head", lambda m: m.check_head("1"), r"head must be an int; got '1' \(str\)"),  # "out of range"
    ("capture_patterns", lambda m: wb.capture_patterns(m, PROMPTS, layers=[0.0]),  # "out of range"
     r"layer must be an int; got 0.0"),
    ("head_importance", lambda m: wb.head_importance(m, PROMPTS, answers=[" w1", " zzz"]),  # scored the <unk> logit
     r"answer 1 ' zzz' holds text outside tiny-llama's vocabulary: it tokenizes to the unknown token '<unk>'"),
    ("circuit", lambda m: wb.circuit(m, [{**TASK[0], "corrupted_answer": " nope"}]),  # scored the <unk> logit
     r"task example 0: corrupted_answer ' nope' holds text outside tiny-llama's vocabulary"),
    ("retrieval_scores", lambda m: wb.retrieval_scores(m, [{"prompt": "w1 qq w2", "answer": " qq"}]),
     r"trial 0: the answer ' qq' holds text outside"),  # the <unk> needle matched itself; "answered none" here
]


@pytest.mark.parametrize("where, call, message", BAD, ids=[f"{i}-{b[0]}" for i, b in enumerate(BAD)])
def test_bad_arguments_are_one_clear_error(model, where, call, message):
    with pytest.raises(wb.WorkbenchError, match=message):
        call(model)
    assert not (model.meta["scratch"] / "r").exists()  # refused before anything was written


def test_numpy_numbers_are_accepted_and_mean_the_same(model):
    assert model.check_layer(np.int64(1)) == 1 and model.check_head(np.int32(3)) == 3  # before: "out of range"
    patterns = wb.capture_patterns(model, PROMPTS, layers=[np.int64(1)])
    assert list(patterns) == [1] and type(list(patterns)[0]) is int
    pd.testing.assert_frame_equal(wb.capture_stats(model, PROMPTS, batch_size=np.int64(1), window=np.int16(4)),
                                  wb.capture_stats(model, PROMPTS, batch_size=1, window=4))
    pd.testing.assert_frame_equal(wb.sink_scores(model, PROMPTS, eps=np.float32(0.25)),
                                  wb.sink_scores(model, PROMPTS, eps=0.25), check_exact=False)
    effect = pd.Series([0.5, -0.2, 0.05, 0.3])
    assert circuits.select(effect, top_n=np.int64(2)).tolist() == [True, False, False, True]
    assert circuits.select(effect, threshold=np.float64(0.25)).tolist() == [True, False, False, True]


def test_one_analysis_name_is_not_its_letters(model, tmp_path):
    run = wb.analyze(model, PROMPTS, out=tmp_path / "r", analyses="head_summary", progress=False)
    assert run.tables == ["head_summary"]  # before: "unknown analysis 'h'"


def test_the_check_helpers():
    assert integer("n", np.uint8(7), low=0, high=9) == 7 and positive_int("n", np.int64(2)) == 2
    assert number("x", np.float32(0.5)) == 0.5 and positive("x", 3) == 3.0 and fraction("x", 1) == 1.0
    assert number("x", INF, finite=False) == INF and math.isinf(number("x", -INF, finite=False))
    assert choice("mode", "a", ("a", "b")) == "a" and names("analyses", "b", ["a", "b"]) == ["b"]
    for call, message in [
        (lambda: integer("n", 3, low=0, high=2), r"n must be an int in \[0, 2\]; got 3"),
        (lambda: integer("n", -1, high=0) and integer("n", 1, high=0), r"n must be an int <= 0; got 1"),
        (lambda: number("x", NAN, finite=False), r"x must be a number; got nan"),
        (lambda: number("x", [1.0]), r"x must be a finite number; got \[1.0\] \(list\)"),
        (lambda: fraction("x", 1, high_open=True), r"x must be a number in \(0, 1\); got 1"),
        (lambda: fraction("x", np.float32(2)), r"x must be a number in \(0, 1\]; got 2.0"),
        (lambda: choice("mode", None, ("a",)), r"unknown mode None: expected one of \['a'\]"),
        (lambda: names("analyses", ("a", "c"), ["a", "b"]), r"unknown analysis 'c': expected one of \['a', 'b'\]"),
    ]:
        with pytest.raises(wb.WorkbenchError, match=message):
            call()
