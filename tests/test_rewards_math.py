"""Math reward on the real benchmark files and on the answer formats the issue lists."""

from __future__ import annotations

import threading
import time

import pytest

from aspo.evalsets import load_benchmark
from aspo.rewards import get_reward, score_records
from aspo.rewards.math import (
    _POOL,
    check_math,
    extract_answer,
    gold_answer,
    math_reward,
    normalize_answer,
    score_batch,
    strip_reasoning,
)


def _rate(results) -> float:
    return sum(r.reward for r in results) / len(results)


@pytest.fixture(scope="module")
def gsm8k():
    return load_benchmark("gsm8k")


@pytest.fixture(scope="module")
def minerva():
    return load_benchmark("minerva_math")


def test_gsm8k_gold_solutions_score_one(gsm8k):
    # the worked solution (ending "#### N") as the response, against the normalised answer and the raw one
    results = score_batch([{"response": r["solution"], "answer": r["answer"]} for r in gsm8k])
    assert len(results) == 1319 and _rate(results) == 1.0
    assert all(r.answer is not None for r in results)  # the answer that earned each reward
    raw = score_batch([{"response": r["solution"], "answer": r["solution"]} for r in gsm8k[:200]])
    assert _rate(raw) == 1.0


def test_gsm8k_crossed_answers_score_zero(gsm8k):
    pairs = [
        (a, b)
        for a, b in zip(gsm8k, gsm8k[1:] + gsm8k[:1], strict=True)
        if float(a["answer"]) != float(b["answer"])
    ]
    # every pair: numeric golds are compared by value, without sympy
    results = score_batch([{"response": a["solution"], "answer": b["answer"]} for a, b in pairs])
    assert len(results) == 1304 and _rate(results) == 0.0


def test_minerva_gold_solutions_score_one(minerva):
    # gold given as the extracted answer and as the whole solution (answer in its last \boxed{})
    results = score_batch([{"response": r["solution"], "answer": r["answer"]} for r in minerva])
    assert len(results) == 272 and _rate(results) == 1.0
    raw = score_batch([{"response": r["solution"], "answer": r["solution"]} for r in minerva[:60]])
    assert _rate(raw) == 1.0


def test_minerva_crossed_answers_score_zero(minerva):
    pairs = [
        (a, b)
        for a, b in zip(minerva, minerva[1:] + minerva[:1], strict=True)
        if normalize_answer(a["answer"]) != normalize_answer(b["answer"])
    ]
    # 120 pairs: a mismatch makes sympy try harder, and this file must stay fast on 2 cores
    results = score_batch([{"response": a["solution"], "answer": b["answer"]} for a, b in pairs[:120]])
    assert _rate(results) == 0.0


@pytest.mark.parametrize("name", ["aime24", "amc23"])
def test_contest_answers(name):
    records = load_benchmark(name)
    right = score_batch(
        [
            {"response": f"Thus the answer is $\\boxed{{{r['answer']}}}$.", "answer": r["answer"]}
            for r in records
        ]
    )
    assert _rate(right) == 1.0
    off_by_one = score_batch(
        [{"response": f"\\boxed{{{int(float(r['answer'])) + 1}}}", "answer": r["answer"]} for r in records]
    )
    assert _rate(off_by_one) == 0.0


@pytest.mark.parametrize(
    "response, gold, expected",
    [
        ("so $x = \\boxed{\\frac{3}{4}}$", "0.75", 1.0),
        # a symbolic answer is written in the gold's form (its numerals): rationalised or not, as the gold
        ("\\boxed{\\frac{\\sqrt{2}}{2}}", "\\frac{1}{\\sqrt 2}", 0.0),
        ("\\boxed{\\frac{\\sqrt{2}}{2}}", "\\frac{\\sqrt 2}{2}", 1.0),
        ("\\boxed{\\sqrt{3}}", "\\sqrt{2}", 0.0),
        ("the set is $\\boxed{[0, \\infty)}$", "[0,\\infty)", 1.0),
        ("\\boxed{(0, \\infty)}", "[0,\\infty)", 0.0),
        ("\\boxed{(1, -2)}", "(1,-2)", 1.0),
        ("\\boxed{(-2, 1)}", "(1,-2)", 0.0),
        ("She earns $1,250 a week.\n#### 1,250", "1250", 1.0),
        ("#### 1250", "1,250", 1.0),
        ("Adding them, the answer is 42.", "42", 1.0),
        ("The final answer is $\\frac{7}{2}$.", "3.5", 1.0),
        # several boxes must all be right: a "correction" is indistinguishable from a hedge
        ("first \\boxed{3}, then corrected: \\boxed{4}", "4", 0.0),
        ("first \\boxed{3}, then corrected: \\boxed{4}", "3", 0.0),
        ("\\boxed{\\dfrac{1}{2}}", "\\frac12", 1.0),
        ("\\boxed{18}", 18.0, 1.0),
        ("no answer here", "7", 0.0),
        ("", "7", 0.0),
    ],
)
def test_answer_formats(response, gold, expected):
    assert math_reward(response=response, answer=gold) == expected


def test_reasoning_outputs():
    assert math_reward(response="<think>maybe \\boxed{5}</think>The answer is \\boxed{5}", answer="5") == 1.0
    # only the text after </think> counts
    assert math_reward(response="<think>\\boxed{4}</think>So \\boxed{5}", answer="4") == 0.0
    # never closed: no answer, even if the thought contains the right one
    assert math_reward(response="<think>it is \\boxed{5} ... still thinking", answer="5") == 0.0
    assert strip_reasoning("<think>unfinished") is None
    # template put <think> in the prompt: the response only closes it
    assert math_reward(response="hmm 4? no.</think>\n\\boxed{5}", answer="5") == 1.0


def test_gold_formats():
    assert gold_answer("Work...\n#### 72") == "72"
    assert gold_answer("so $s=\\boxed{\\frac{a}{b}}$ cm") == "\\frac{a}{b}"
    assert gold_answer(27.0) == "27" and gold_answer(2.5) == "2.5" and gold_answer("204") == "204"
    assert extract_answer("x \\boxed{\\{1, 2\\}} y") == "\\{1, 2\\}"
    assert normalize_answer("1,000.0") == "1000" and normalize_answer(" \\left( 1, 2 \\right) ") == "(1,2)"
    assert check_math("\\boxed{1}", None).error is not None


def test_every_check_is_time_bounded():
    # sympy evaluates tower powers in C, where math-verify's signal.alarm cannot interrupt it
    assert check_math("\\boxed{1}", "1").reward == 1.0  # a worker is up: time the check, not a start-up
    start = time.monotonic()
    # the worker pool that check_math sends every symbolic comparison to (called directly: through
    # check_math, a tower against a number literal is an unevaluated restatement, and against another
    # gold it is not written with the gold's numerals -- neither reaches sympy)
    reward, error = _POOL.run(("\\frac{10}{2}", ["2^{2^{2^{2^{2^{100}}}}}"]), 2.0)
    assert reward == 0.0 and "timed out" in error
    assert time.monotonic() - start < 6.0
    assert check_math("\\boxed{5}", "5").reward == 1.0  # the pool recovered
    assert check_math("\\boxed{\\sqrt{2}}", "\\frac{2}{\\sqrt 2}").reward == 0.0  # and still answers


def test_works_off_the_main_thread():
    # math-verify's own timeouts need the main thread; ours run in worker processes
    out = []
    thread = threading.Thread(target=lambda: out.append(math_reward(response="\\boxed{0.5}", answer="1/2")))
    thread.start()
    thread.join(60)
    assert out == [1.0]


def test_registry_uses_the_batch_scorer():
    assert get_reward("math") is math_reward
    results = score_records(
        "math", [{"response": "\\boxed{3}", "answer": "3"}, {"response": "\\boxed{4}", "answer": "3"}]
    )
    assert [r.reward for r in results] == [1.0, 0.0]
