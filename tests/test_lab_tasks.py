"""Lab tasks: seeded disjoint splits, strict verifiers, safe Countdown parsing."""

import random
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aspo.errors import UserError
from aspo.lab.expr import ExprError, evaluate
from aspo.lab.tasks import arithmetic_reward, countdown_reward, get_task, solve_countdown
from aspo.lab.tokenizer import ALPHABET
from aspo.rewards import get_reward, score_records

TASK_NAMES = ["arithmetic", "countdown"]


def _fields(record):
    return {k: v for k, v in record.items() if k not in ("prompt", "answer")}


@pytest.mark.parametrize("name", TASK_NAMES)
def test_splits_are_seeded_distinct_and_disjoint(name):
    task = get_task(name)
    train = task.make_split("train", 3000, seed=0)
    test = task.make_split("test", 500, seed=0)
    assert train == task.make_split("train", 3000, seed=0)
    assert train[:50] != task.make_split("train", 50, seed=1)
    assert len({task.key(r) for r in train}) == 3000 and len({task.key(r) for r in test}) == 500
    other_test = task.make_split("test", 500, seed=7)
    train_keys = {task.key(r) for r in train} | {task.key(r) for r in task.make_split("train", 500, seed=9)}
    assert not train_keys & {task.key(r) for r in test + other_test}
    # the training stream (what the warm start sees) never yields a held-out problem either
    stream = task.stream("train", seed=3)
    assert all(task.split_of(next(stream)) == "train" for _ in range(2000))


@pytest.mark.parametrize("name", TASK_NAMES)
def test_demonstrations_verify_and_fit_the_budget(name):
    task = get_task(name)
    tokens = set(ALPHABET)
    for record in task.make_split("train", 300, seed=1) + task.make_split("test", 300, seed=1):
        demo = task.demonstration(record)
        assert set(demo + record["prompt"]) <= tokens
        assert len(demo) < task.max_new_tokens
        assert task.verify(record["prompt"], demo, record["answer"], **_fields(record)) == 1.0
        # the reward registry reaches the same verifier by name
        assert get_reward(name)(prompt=record["prompt"], response=demo, answer=record["answer"]) == 1.0


def test_arithmetic_demonstration_format():
    task = get_task("arithmetic")
    record = {"prompt": "347+285=", "answer": "632", "a": 347, "b": 285}
    assert task.demonstration(record) == "7+5+0=12,4+8+1=13,3+2+1=06|236"
    record = {"prompt": "847+285=", "answer": "1132", "a": 847, "b": 285}
    assert task.demonstration(record) == "7+5+0=12,4+8+1=13,8+2+1=11|2311"
    assert get_task("arithmetic", digits=2).make_split("test", 5)[0]["prompt"].index("+") == 2


@pytest.mark.parametrize(
    "response",
    [
        "7+5+0=12,4+8+1=13,3+2+1=06|2360",  # extra digit
        "7+5+0=12,4+8+1=13,3+2+1=06|632",  # most-significant first
        "7+5+0=12,4+8+1=13,3+2+1=06|236 ",  # trailing junk
        "7+5+0=12,4+8+1=13,3+2+1=06|",  # no answer
        "|236",  # no scratchpad
        "236",
        "7+5+0=12,4+8+1=13,3+2+1=06|236|236",
        "7+5+0=12,,3+2+1=06|236",
        "",
        "<eos>",
        "\x00" * 100,
        "9" * 10_000,
    ],
)
def test_arithmetic_rejects_malformed_and_wrong(response):
    assert arithmetic_reward("347+285=", response, "632") == 0.0


def test_arithmetic_checks_only_the_answer_after_a_well_formed_pad():
    # a wrong scratchpad digit with the right final answer still has the required shape: reward 1
    assert arithmetic_reward("347+285=", "7+5+0=12,4+8+1=13,3+2+1=06|236", "632") == 1.0
    assert arithmetic_reward("347+285=", "7+5+0=12,4+8+1=13,3+2+1=06|236", 632) == 1.0
    assert arithmetic_reward("347+285=", None, "632") == 0.0
    assert arithmetic_reward("347+285=", "7+5+0=12|236", None) == 0.0


def test_countdown_verifier():
    prompt, answer, numbers = "3,5,7,2>44:", "44", [3, 5, 7, 2]
    for good in ["(3*5+7)*2", "2*(7+3*5)", "(7+5*3)*2", "2*(3*5+7)"]:
        assert countdown_reward(prompt, good, answer, numbers=numbers) == 1.0
        assert countdown_reward(prompt, good, answer) == 1.0  # numbers parsed from the prompt
    for bad in [
        "(3*5+7)*2+0",  # a number not given
        "(3*5+7)*2*1",
        "(3*5+7+7)*2-7",  # 7 used twice
        "3*5+7*2+8",  # wrong numbers
        "(3*5+7)*2 ",  # whitespace is not in the format
        "3*5+7",  # misses a number and the target
        "(3*5+7)*2=44",
        "(3*5+7)**2",
        "3^5",
        "3/0",
        "(3*5+7)*2/(5-5)",
        "eval('44')",
        "__import__('os')",
        "44",
        "",
        ")(",
        "((3*5+7)*2",
        "(" * 50 + "1" + ")" * 50,
        "1" * 10_000,
    ]:
        assert countdown_reward(prompt, bad, answer, numbers=numbers) == 0.0, bad
    assert countdown_reward("garbage", "3*5", "15") == 0.0


def test_countdown_exact_fractions_and_division():
    assert countdown_reward("8,3,6>16:", "8/3*6", "16") == 1.0  # exact, not 15.999...
    assert countdown_reward("7,2,2>7:", "7/2*2", "7") == 1.0
    assert countdown_reward("7,2,2>3:", "7/2", "3") == 0.0


def test_expression_parser_is_bounded_and_exact():
    assert evaluate("(7-2)*4") == (Fraction(20), [7, 2, 4])
    assert evaluate("1-2-3")[0] == -4 and evaluate("12/4/3")[0] == 1  # left-associative
    assert evaluate("2+3*4")[0] == 14
    for bad in [
        "1/0",
        "2**99999",
        "9^9^9",
        "-1",
        "1e9",
        "0x10",
        "01",
        "1.5",
        "99999*9",
        "1 +2",
        "",
        "(" * 9 + "1" + ")" * 9,
        "1+" * 40 + "1",
        "()",
        "1()",
    ]:
        with pytest.raises(ExprError):
            evaluate(bad)


@settings(max_examples=300, deadline=None)
@given(text=st.text(alphabet="0123456789+-*/() ^.eE_x", max_size=80))
def test_parser_never_crashes_on_garbage(text):
    try:
        value, literals = evaluate(text)
    except ExprError:
        return
    assert isinstance(value, Fraction) and all(0 <= n < 10_000 for n in literals)


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=60))
def test_rewards_never_raise_on_arbitrary_text(text):
    assert arithmetic_reward("347+285=", text, "632") == 0.0
    assert countdown_reward(text, text, "5") in (0.0, 1.0)


def test_countdown_solver_and_generator():
    value, used = evaluate(solve_countdown([3, 5, 7, 2], 44))
    assert value == 44 and sorted(used) == [2, 3, 5, 7]
    assert solve_countdown([1, 1, 1, 1], 99) == ""
    task = get_task("countdown")
    rng = random.Random(0)
    for _ in range(200):
        record = task.sample(rng)
        assert 0 < record["target"] <= task.max_target and len(record["numbers"]) == task.count
        assert solve_countdown(record["numbers"], record["target"])  # every problem is solvable


def test_score_records_via_registry():
    task = get_task("arithmetic")
    records = task.make_split("test", 4)
    rows = [{**r, "response": task.demonstration(r) if i % 2 == 0 else "1|1"} for i, r in enumerate(records)]
    assert [s.reward for s in score_records("arithmetic", rows)] == [1.0, 0.0, 1.0, 0.0]


def test_bad_task_names_and_params():
    with pytest.raises(UserError, match="unknown lab task"):
        get_task("chess")
    with pytest.raises(UserError, match="bad parameters"):
        get_task("arithmetic", digitz=3)
    with pytest.raises(UserError, match="split"):
        get_task("arithmetic").make_split("validation", 3)
    with pytest.raises(UserError, match="too few distinct"):
        get_task("arithmetic", digits=1).make_split("train", 1000)


@pytest.mark.parametrize("name", TASK_NAMES)
def test_flawed_demonstrations_look_right_but_score_zero(name):
    task = get_task(name)
    rng = random.Random(0)
    records = task.make_split("train", 500, seed=2)
    pairs = [(r, task.flawed_demonstration(r, rng)) for r in records]
    assert all(task.verify(r["prompt"], f, r["answer"], **_fields(r)) == 0.0 for r, f in pairs)
    # one slip: same length give or take a character
    for record, text in pairs:
        demo = task.demonstration(record)
        assert abs(len(text) - len(demo)) <= 1 and text != demo
    if name == "arithmetic":
        # well formed: only the answer's value is wrong, so a format-only check would pass it
        assert all(arithmetic_reward(r["prompt"], f, f.split("|")[1][::-1]) == 1.0 for r, f in pairs)
        slipped_columns = set()
        for record, text in pairs:
            columns = zip(text.split(","), task.demonstration(record).split(","), strict=True)
            slipped_columns.add(next(i for i, (x, y) in enumerate(columns) if x != y))
        assert slipped_columns == {0, 1, 2}
