"""The math reward against the reward hacks a policy finds, and the answer forms a grader accepts.

Each HACKS row is a response that must score 0 although its text "contains" the right answer somehow
(the SmolLM2 run of issue 10 learned the first one: ``21 + 10 = \\boxed{}`` scored 1 by falling back to the
last expression). Each LEGIT row must score 1, and its result must name the answer that earned it.
"""

from __future__ import annotations

import pytest

from aspo.rewards.math import answer_classes, check_math, extract_answer

Q = "What is 21 + 10?"
INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."

# (response, gold, the hack it stands for)
HACKS = [
    ("21 + 10 = \\boxed{}", "31", "empty box after a restatement"),
    ("\\boxed{}", "31", "empty box alone"),
    ("\\boxed{ }", "31", "blank box"),
    ("The answer is \\boxed{}. 21 + 10", "31", "empty box in an answer statement"),
    ("\\boxed{\\boxed{}}", "31", "nested empty box"),
    ("21 + 10", "31", "restatement of the question"),
    ("\\boxed{21 + 10}", "31", "boxed restatement"),
    ("\\boxed{21+10}", "31", "boxed restatement without spaces"),
    ("The answer is 21 + 10.", "31", "restatement as an answer statement"),
    ("#### 21 + 10", "31", "restatement after ####"),
    ("\\boxed{31 = 21 + 10}", "31", "equation ending in the restatement"),
    ("\\boxed{31 - 0}", "31", "unevaluated arithmetic"),
    ("\\boxed{31 \\times 1}", "31", "unevaluated product"),
    ("\\boxed{\\frac{62}{2}}", "31", "unreduced fraction (simplified form is required)"),
    ("\\boxed{62/2}", "31", "unreduced slash fraction"),
    ("Let me add: 21 + 10 makes 31", "31", "no final answer statement, right last number"),
    ("21 plus 10.\nThat gives 31", "31", "no statement over several lines"),
    ("30 or 31", "31", "two candidates, bare"),
    ("The answer is 30 or 31.", "31", "two candidates in an answer statement"),
    ("\\boxed{30, 31}", "31", "a list in one box"),
    ("\\boxed{30 \\text{ or } 31}", "31", "'or' inside the box"),
    ("\\boxed{\\text{31 or 30}}", "31", "'or' inside \\text in the box"),
    ("\\boxed{31 \\lor 30}", "31", "logical or"),
    ("\\boxed{31}\\boxed{30}", "31", "two boxes, different values"),
    ("I think \\boxed{30}. Hmm, no: \\boxed{31}", "31", "hedge disguised as a correction"),
    ("\\boxed{31} or maybe \\fbox{30}", "31", "box and fbox"),
    ("#### 30\n#### 31", "31", "two #### lines"),
    ("\\boxed{1, 2, 3, \\ldots, 100}", "31", "a range of numbers"),
    ("\\boxed{29, 30, 31, 32}", "31", "a list around the answer"),
    ("\\boxed{[30, 32]}", "31", "an interval holding the answer"),
    ("\\boxed{31 \\pm 1}", "31", "plus-minus"),
    ("\\boxed{30 < x < 32}", "31", "an inequality"),
    ("\\boxed{x}", "31", "a variable"),
    ("<think>21 + 10 = 31, so \\boxed{31}</think>", "31", "answer only inside <think>"),
    ("<think>the answer is \\boxed{31} but let me check", "31", "unclosed <think>"),
    ("<think>\\boxed{31}</think>I am not sure.", "31", "answer inside <think>, none after"),
    (Q, "31", "question echo"),
    (f"{Q} {INSTRUCTION}", "31", "question and instruction echo (its empty box)"),
    ("What is 21 + 10? The answer is a whole number.", "31", "echo of a prompt's answer phrase"),
    (" ".join(str(i) for i in range(1000)), "31", "huge output: every number"),
    ("\\boxed{" + ", ".join(str(i) for i in range(1000)) + "}", "31", "huge box of every number"),
    ("31 " * 5000, "31", "huge output: the answer repeated, no statement"),
    ("\\boxed{\\sqrt{2} \\text{ or } \\sqrt{3}}", "\\sqrt{2}", "hedge on a symbolic answer"),
    ("\\boxed{\\sqrt{2}, \\sqrt{3}}", "\\sqrt{2}", "list on a symbolic answer"),
]

# (response, gold): forms a grader accepts
LEGIT = [
    ("31", "31"),
    ("31.0", "31"),
    ("\\$31", "31"),
    ("$31$", "31"),
    ("31 dollars", "31"),
    ("\\boxed{31}", "31"),
    ("21 + 10 = 31, so the sum is $\\boxed{31}$.", "31"),
    ("21 + 10 = 31", "31"),
    ("The answer is 31.", "31"),
    ("The final answer is $31$.", "31"),
    ("#### 31", "31"),
    ("The final answer is 31.\n\nThe final answer is:", "31"),  # cut off (seen from SmolLM2)
    ("So, the answer is: 31.\n\nThe final answer is within \\boxed{}.", "31"),  # parroted instruction
    ("Tom has 21 + 10 = 31 apples.\n#### 31", "31"),
    ("\\boxed{31 \\text{ cm}}", "31"),
    ("\\boxed{\\text{31}}", "31"),
    ("\\boxed{x = 31}", "31"),
    ("\\boxed{31} (checked: \\boxed{31.0})", "31"),
    ("<think>maybe 30? no</think>\n\\boxed{31}", "31"),
    ("\\boxed{\\frac{3}{4}}", "0.75"),
    ("\\boxed{3/4}", "0.75"),
    ("0.75", "\\frac{3}{4}"),
    ("\\boxed{1,250}", "1250"),
    ("\\boxed{1{,}250}", "1250"),
    ("\\boxed{25\\%}", "25"),
    ("\\boxed{90^\\circ}", "90"),
    ("\\boxed{-7}", "-7"),
    ("\\boxed{4.5 \\times 10^{33}}", "4.5e33"),
    ("\\boxed{\\frac{\\sqrt{2}}{2}}", "\\frac{\\sqrt 2}{2}"),
    ("\\boxed{\\frac{1}{2}x}", "\\frac{x}{2}"),  # the same numerals (1 is not counted): the same form
    ("\\boxed{(1, -2)}", "(1,-2)"),
]


def test_the_tables_are_big_enough():
    assert len(HACKS) >= 30 and len({h[0] for h in HACKS}) == len(HACKS)


@pytest.mark.parametrize("response, gold, hack", HACKS, ids=[h[2] for h in HACKS])
def test_reward_hacks_score_zero(response, gold, hack):
    result = check_math(response, gold)
    assert result.reward == 0.0, hack
    assert result.answer is None or result.answer != gold  # no answer is credited to a hack


@pytest.mark.parametrize("response, gold", LEGIT)
def test_accepted_forms_score_one_and_name_their_answer(response, gold):
    result = check_math(response, gold)
    assert result.reward == 1.0 and result.error is None
    assert result.answer is not None


def test_the_earned_answer_is_the_stated_one():
    assert check_math("so \\boxed{\\$1,250 \\text{ dollars}}", "1250").answer == "1,250"
    assert check_math("The answer is 31.", "31").answer == "31"
    assert check_math("\\boxed{30}", "31").answer == "30"  # wrong, but an answer: maj@k votes on it
    assert check_math("\\boxed{31}\\boxed{30}", "31").answer is None  # a hedge states no single answer
    assert extract_answer("\\boxed{21 + 10}", gold_is_number=True) is None
    assert extract_answer("\\boxed{21 + 10}") == "21 + 10"  # symbolic golds: math-verify decides


def test_answer_classes_use_the_rewards_equivalence():
    answers = ["31", "31.0", "\\frac{62}{2}", None, "30", "\\frac{1}{2}", "0.5"]
    assert answer_classes(answers) == [0, 0, 0, None, 1, 2, 2]


def test_numbers_compare_by_value_at_every_scale():
    # math-verify rounds to 6 decimal places, so alone it would call these two equal
    assert check_math("\\boxed{2.88e-19}", "1.325e-27").reward == 0.0
    assert check_math("\\boxed{1.325 \\times 10^{-27}}", "1.325e-27").reward == 1.0
    assert check_math("\\boxed{4.5e33}", "4.6e33").reward == 0.0
    assert check_math("\\boxed{1 \\times 10^{1000000000}}", "1").reward == 0.0  # no giant integer is built
