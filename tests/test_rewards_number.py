"""The strict `number` reward: a table of reward hacks that must score 0 and of legitimate answers that score
1."""

from __future__ import annotations

import pytest

from aspo.rewards import get_reward, score_records
from aspo.rewards.number import final_number, number_reward

GOLD = "31"  # "What is 21 + 10?"

HACKS = [
    ("empty output", ""),
    ("whitespace only", "  \n\n "),
    ("restates the question", "21 + 10"),
    ("restatement with trailing equals", "21 + 10 ="),
    ("restatement in a box", "\\boxed{21 + 10}"),
    ("empty box after the sum", "21 + 10 = \\boxed{}"),
    ("empty box", "\\boxed{}"),
    ("unclosed box", "The answer is \\boxed{31"),
    ("two candidates", "30 or 31"),
    ("two candidates in a box", "\\boxed{30, 31}"),
    ("a list of numbers", "29, 30, 31, 32"),
    ("candidate list in the answer statement", "The answer is 30 or 31."),
    ("answer statement restating the sum", "The answer is 21 + 10."),
    ("two boxes that disagree", "\\boxed{30} \\boxed{31}"),
    ("two answer statements that disagree", "The answer is 30. The answer is 31."),
    ("hedging after the answer", "The answer is 31. Or maybe 30."),
    ("box then another number", "\\boxed{31} (or 32)"),
    ("unsimplified fraction", "\\boxed{\\frac{62}{2}}"),
    ("scientific notation", "3.1e1"),
    ("percentage", "31%"),
    ("a different number", "32"),
    ("negated answer", "-31"),
    ("digits glued to words", "x31"),
    ("unclosed think", "<think>21 + 10 = 31"),
    ("answer only inside think", "<think>31</think>"),
    ("right-hand side is another sum", "21 + 10 = 30 + 1"),
    ("last line has several numbers", "I added 21 and 10 and got 31"),
    ("answer then echo of question", "31\nWhat is 21 + 10?"),
    ("gsm8k marker with a restatement", "#### 21+10"),
]

LEGIT = [
    ("a lone number", "31"),
    ("a lone number with a period", "31."),
    ("a decimal form", "31.0"),
    ("money", "$31"),
    ("boxed", "\\boxed{31}"),
    ("boxed after reasoning", "21 + 10: add the tens, 20 + 10 = 30, then 1 more.\n\\boxed{31}"),
    ("latex money in a box", "\\boxed{\\$31}"),
    ("the answer is", "The answer is 31."),
    ("answer colon in bold", "Answer: **31**"),
    ("gsm8k marker", "21 + 10 = 31\n#### 31"),
    ("an equation", "21 + 10 = 31"),
    ("an equation with a period", "21 + 10 = 31."),
    ("a sentence with one number", "The sum is 31."),
    ("reasoning then the last line", "First 20 + 10 = 30.\nThen 30 + 1.\nSo 31"),
    ("restatement after the same answer", "The answer is 31. So 31 it is."),
    ("think block then answer", "<think>20 + 10 = 30, plus 1</think>\n31"),
    ("two boxes that agree", "\\boxed{31} ... so \\boxed{31}"),
]


@pytest.mark.parametrize(("why", "response"), HACKS, ids=[w for w, _ in HACKS])
def test_reward_hacks_score_zero(why, response):
    assert number_reward("What is 21 + 10?", response, GOLD) == 0.0, why


@pytest.mark.parametrize(("why", "response"), LEGIT, ids=[w for w, _ in LEGIT])
def test_legitimate_answers_score_one(why, response):
    assert number_reward("What is 21 + 10?", response, GOLD) == 1.0, why


def test_table_sizes():
    assert len(HACKS) >= 15 and len(LEGIT) >= 10


def test_gold_forms_thousands_and_negatives():
    assert number_reward("", "1,000", "1000") == 1.0
    assert number_reward("", "The answer is -4", "-4") == 1.0
    assert number_reward("", "-4", "4") == 0.0
    assert number_reward("", "2.50", "2.5") == 1.0
    assert final_number("10,00") is None  # not a thousands grouping


def test_registered_and_a_non_numeric_gold_is_an_error_not_a_wrong_answer():
    assert get_reward("number") is number_reward
    [good, bad] = score_records(
        "number",
        [
            {"prompt": "p", "response": "31", "answer": "31"},
            {"prompt": "p", "response": "31", "answer": "thirty-one"},
        ],
    )
    assert good.reward == 1.0 and good.error is None
    assert bad.reward == 0.0 and "numeric gold answer" in bad.error
