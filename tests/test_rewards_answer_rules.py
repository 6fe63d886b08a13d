"""Issue 22's findings on the `math` and `number` rewards, and their neighbours, one row per probe.

Each rule below is stated in docs/rewards.md. Rows marked "finding" are the red team's examples; the others
are the neighbouring holes of the same class (other symbols, other relation spellings, other formats).
"""

from __future__ import annotations

import pytest

from aspo.rewards.math import check_math, extract_answer
from aspo.rewards.number import final_number, number_reward


def math_score(response: str, gold: str) -> float:
    return check_math(response, gold).reward


# --- math: a symbol after a number is never dropped as a unit (both directions) -----------------------
SYMBOL_DROPPED = [
    ("\\boxed{4}", "4\\pi"),  # finding
    ("\\boxed{4\\pi}", "4"),  # finding, the other direction
    ("\\boxed{2}", "2x^2"),  # finding
    ("\\boxed{2x^2}", "2"),  # finding, the other direction
    ("\\boxed{3}", "3i"),
    ("\\boxed{3i}", "3"),
    ("\\boxed{2}", "2e"),
    ("\\boxed{2e}", "2"),
    ("\\boxed{5 \\theta}", "5"),
    ("\\boxed{5}", "5\\theta"),
    ("\\boxed{7 y}", "7"),
    ("\\boxed{7}", "7 y"),
    ("\\boxed{2.2}", "2.2 \\tau"),  # a Minerva gold that used to read as the number 2.2
    ("\\boxed{2}", "2 \\pi / \\omega"),  # another one (read as 2)
    ("\\boxed{0}", "x^{\\prime}+\\frac{r}{V} x-r c=0"),  # an equation gold (read as 0)
    ("\\boxed{4 \\mathrm{i}}", "4"),
    ("\\boxed{4 \\text{ pi}}", "4"),  # a symbol spelled in text is not on the unit list either
    ("\\boxed{4\\pi \\text{ cm}}", "4"),
    ("\\boxed{31^2}", "31"),  # an exponent on the number, not on a unit
    ("\\boxed{31 \\text{ apples}}", "31"),  # a word that is not on the unit list: not a number answer
    ("\\boxed{5 \\text{ m}}", "5 \\text{ cm}"),  # two named units must agree
    ("\\boxed{50^\\circ}", "50\\%"),
    ("\\boxed{2x - 4 = 0}", "0"),  # an equation in a variable states no value
]

UNITS_KEPT = [
    ("\\boxed{5}", "5 \\text{ cm}"),
    ("\\boxed{5 \\text{ cm}}", "5"),
    ("\\boxed{5 \\text{ centimeters}}", "5 \\text{ cm}"),
    ("\\boxed{12 \\text{ inches}}", "12"),
    ("\\boxed{3 \\text{ m}^2}", "3"),
    ("\\boxed{60 \\text{ km/h}}", "60"),
    ("\\boxed{60 \\mathrm{~km} / \\mathrm{h}}", "60"),
    ("\\boxed{45 \\text{ minutes}}", "45"),
    ("\\boxed{90^\\circ}", "90"),
    ("\\boxed{25\\%}", "25"),
    ("The answer is 31 dollars.", "31"),
    ("\\boxed{\\$1{,}250}", "1250"),
    ("\\boxed{4\\pi}", "4\\pi"),
    ("\\boxed{4 \\pi}", "4\\pi"),
    ("\\boxed{2x^2}", "2x^2"),
    ("\\boxed{x = 31}", "31"),
    ("\\boxed{\\theta = 30^\\circ}", "30"),
]


@pytest.mark.parametrize("response, gold", SYMBOL_DROPPED)
def test_math_never_drops_a_symbol_as_a_unit(response, gold):
    assert math_score(response, gold) == 0.0


@pytest.mark.parametrize("response, gold", UNITS_KEPT)
def test_math_accepts_listed_units_and_the_symbol_itself(response, gold):
    assert math_score(response, gold) == 1.0


# --- math: a symbolic answer must be written in the gold's form ----------------------------------------
NOT_IN_GOLDS_FORM = [
    ("\\boxed{\\sqrt{12}}", "2\\sqrt{3}"),  # finding: unsimplified radical
    ("\\boxed{(x+3)(2x-6)}", "2x^2-18"),  # finding: the question's product, unexpanded
    ("\\boxed{2x^2-18}", "2(x-3)(x+3)"),  # the reverse: asked to factor, echoes the polynomial
    ("\\boxed{(x+1)^2}", "x^2+2x+1"),
    ("\\boxed{2x+2x}", "4x"),
    ("\\boxed{\\sqrt{18}}", "3\\sqrt{2}"),
    ("\\boxed{\\frac{6}{\\sqrt{3}}}", "2\\sqrt{3}"),
    ("\\boxed{\\frac{1}{\\sqrt{2}}}", "\\frac{\\sqrt{2}}{2}"),  # denominator not rationalised
    ("\\boxed{\\frac{4\\pi}{2}}", "2\\pi"),
]

IN_GOLDS_FORM = [
    ("\\boxed{-18+2x^2}", "2x^2-18"),  # reordered
    ("\\boxed{2 \\sqrt 3}", "2\\sqrt{3}"),
    ("\\boxed{(x+3)(x-3)}", "(x-3)(x+3)"),
    ("\\boxed{\\frac{1}{2}x}", "\\frac{x}{2}"),  # a 1 is not counted
    ("\\boxed{\\dfrac{\\pi}{4}}", "\\frac{\\pi}{4}"),
]


@pytest.mark.parametrize("response, gold", NOT_IN_GOLDS_FORM)
def test_math_symbolic_answer_not_in_the_golds_form_scores_zero(response, gold):
    assert math_score(response, gold) == 0.0


@pytest.mark.parametrize("response, gold", IN_GOLDS_FORM)
def test_math_symbolic_answer_in_the_golds_form_scores_one(response, gold):
    assert math_score(response, gold) == 1.0


# --- both rewards: a negation or an inequality is no answer --------------------------------------------
DENIALS = [
    "The answer is not 31",  # finding
    "The answer is not 31.",
    "x \\neq 31",  # finding
    "\\boxed{x \\neq 31}",
    "\\boxed{x \\ne 31}",
    "x <= 31",  # finding
    "\\boxed{x <= 31}",
    "\\boxed{x >= 31}",
    "\\boxed{x \\leq 31}",
    "\\boxed{x \\le 31}",
    "\\boxed{x \\geq 31}",
    "\\boxed{31 \\leq x}",
    "x != 31",
    "x ≠ 31",
    "x ≤ 31",
    "The answer is not equal to 31.",
    "The answer is at least 31.",
    "The answer is less than or equal to 31.",
    "The answer is \\boxed{\\text{not } 31}",
    "x \\le \\boxed{31}",  # the relation just before the box
    "It is not $\\boxed{31}$",
    "The answer is at most \\boxed{31}.",
    "Answer: not 31",
    "\\boxed{31} is wrong.",  # taken back just after the box
    "\\boxed{31} isn't right",
    "$\\boxed{31}$ is not the answer",
    "The answer isn't 31",
    "The answer isn’t 31.",  # U+2019
    "x \\le\n\\boxed{31}",  # a relation symbol ending the line before the box
    "$$x \\geq$$\n\n$$\\boxed{31}$$",
]


@pytest.mark.parametrize("response", DENIALS)
def test_negations_and_inequalities_score_zero_under_both(response):
    assert math_score(response, "31") == 0.0
    assert number_reward("What is 21 + 10?", response, "31") == 0.0


def test_a_relation_is_an_answer_only_when_the_gold_is_one():
    assert math_score("\\boxed{x < 3}", "x < 3") == 1.0
    assert math_score("\\boxed{x \\le 3}", "x < 3") == 0.0  # math-verify tells the relations apart
    assert math_score("\\boxed{x \\neq 4\\pi}", "4\\pi") == 0.0
    # a relation elsewhere in the sentence is not one in front of the answer
    assert math_score("Since 30 < 31, the answer is \\boxed{31}.", "31") == 1.0
    assert math_score("She has 9 more chairs.\n#### 9", "9") == 1.0
    assert number_reward("", "Since 30 < 31, the answer is \\boxed{31}.", "31") == 1.0
    assert math_score("\\boxed{31}. Not that it was easy.", "31") == 1.0  # a new sentence
    assert math_score("She has 9 more chairs\n\\boxed{9}", "9") == 1.0  # words on the line before: not
    assert number_reward("", "She has 9 more chairs\n\\boxed{9}", "9") == 1.0


def test_approximately_states_the_number():
    # the rule chosen: an approximation states its number, compared like the number written plainly
    assert math_score("\\boxed{\\pi \\approx 3.14}", "3.14") == 1.0
    assert math_score("The answer is approximately 3.14.", "3.14") == 1.0
    assert math_score("\\boxed{\\approx 3.1}", "3.14") == 0.0
    assert number_reward("", "The answer is approximately 31.", "31") == 1.0


# --- common correct formats score 1 --------------------------------------------------------------------
MATH_FORMATS = [
    ("Answer: 31", "31"),  # finding
    ("**31**", "31"),  # finding
    ("The answer is \\(31\\)", "31"),  # finding
    ("\\boxed{{31}}", "31"),  # finding
    ("\\boxed{1 200}", "1200"),  # finding
    ("x = 2 or x = 3", "2, 3"),  # finding: a correct solution list joined by "or"
    ("\\boxed{2 \\text{ or } 3}", "2,3"),
    ("\\boxed{x = 3 \\text{ or } x = 2}", "2, 3"),
    ("**Final Answer:** 31", "31"),
    ("**Answer:** $31$", "31"),
    ("The final answer is \\[31\\]", "31"),
    ("\\boxed{1\\,200}", "1200"),
    ("\\boxed{1{,}200}", "1200"),
    ("\\boxed{\\text{31}}", "31"),
    ("\\boxed{−31}", "-31"),  # U+2212
    ("#### Final Answer\nThe answer is 31.", "31"),  # a markdown heading is not GSM8K's marker
    ("## Final Answer\n\\boxed{31}", "31"),
    ("\\textbf{\\boxed{31}}", "31"),
    ("Final Answer: The final answer is 31. I hope it is correct.", "31"),  # Minerva's few-shot format
    ("\\boxed{1+\\sqrt{2}, 1-\\sqrt{2}}", "1 \\pm \\sqrt{2}"),  # a list written out for a gold with \pm
    ("\\boxed{3 \\text{ or } 2}", "2 \\text{ or } 3"),
]


@pytest.mark.parametrize("response, gold", MATH_FORMATS)
def test_math_common_formats_score_one(response, gold):
    assert math_score(response, gold) == 1.0


def test_a_list_gold_may_be_answered_box_by_box():
    assert math_score("\\boxed{2} and \\boxed{3}", "2, 3") == 1.0
    assert math_score("\\boxed{2} and \\boxed{4}", "2, 3") == 0.0
    assert math_score("\\boxed{2} and \\boxed{3}", "2") == 0.0  # against one value: a hedge


def test_or_is_still_a_hedge_against_a_single_gold():
    assert math_score("\\boxed{2 \\text{ or } 3}", "2") == 0.0
    assert math_score("x = 2 or x = 3", "3") == 0.0
    assert math_score("\\boxed{30 31}", "31") == 0.0  # not a digit group: two numbers
    assert math_score("\\boxed{2, 3, 4}", "2, 3") == 0.0  # a longer list is a different answer


NUMBER_FORMATS = [
    ("The sum of 21 and 10 is 31.", "31"),  # finding
    ("Answer: 21 + 10 = 31", "31"),  # finding
    ("The answer is:\n31", "31"),  # finding
    ("#### Final Answer\n\\boxed{31}", "31"),  # finding: a markdown heading before the box
    ("### Step 1: add the tens\n20 + 10 = 30\n#### Final Answer\nThe answer is $\\boxed{31}$.", "31"),
    ("1{,}000", "1000"),  # finding
    ("−31", "-31"),  # finding: U+2212
    ("The answer is \\boxed{−31}.", "-31"),
    ("31 is the answer.", "31"),
    ("**31**", "31"),
    ("The answer is \\(31\\).", "31"),
    ("So 21 + 10 equals 31", "31"),
    ("The answer is 31!", "31"),  # ... an exclamation in prose
    ("Total = 31", "31"),
    ("To add them:\n\n21 + 10 = 31\n\nSo, the sum of 21 and 10 is 31.", "31"),
    ("\\boxed{1\\,000}", "1000"),
]


@pytest.mark.parametrize("response, gold", NUMBER_FORMATS)
def test_number_common_formats_score_one(response, gold):
    assert number_reward("", response, gold) == 1.0


NUMBER_NOTATION = [
    "\\boxed{31\\pi}",
    "\\boxed{31 \\pi}",
    "31 i",
    "The answer is 31 pi.",
    "\\boxed{\\sqrt{31}}",
    "e^{31}",
    "$31!$",  # a factorial in mathematics ...
    "\\boxed{31!}",
    "\\log 31",
    "x_{31}",
    "- 31 apples",  # a dash apart from the number is not its sign: 31 must not be read
    "The answer is 31 squared.",
    "The answer is 31 thousand.",
    "The answer is 30 because 21 + 10 = 31",  # the value after "=" only when what precedes is arithmetic
    "The answer is 30 because 21 + 10 is 31",
    "\\boxed{31 = 21 + 10}",
]


@pytest.mark.parametrize("response", NUMBER_NOTATION)
def test_number_refuses_notation_around_the_literal(response):
    assert number_reward("What is 21 + 10?", response, "31") == 0.0


def test_number_statement_rules_still_hold():
    assert final_number("The answer is:\n\nThe answer is 30.") == 30  # blank line: the next statement
    assert final_number("The answer is: 31. Or 30.") is None
    assert final_number("#### 31\n#### Final Answer") == 31
    assert final_number("The answer is 31 is wrong") is None
    assert extract_answer("#### Final Answer\n#### 31", gold_is_number=True) == "31"


# --- finding the answer is linear in the response ------------------------------------------------------
HUGE = 50_000  # 350k characters of unclosed boxes: quadratic extraction needs ~10^10 steps


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "response",
    [
        "\\boxed{" * HUGE + "31",  # finding: every box unclosed
        "\\boxed{" * HUGE + "31" + "}" * HUGE,  # every box closed, nested
        "The answer is \\boxed{31}. " + "\\boxed{" * HUGE,
        "answer:" * HUGE + " thirty-one",  # statements that all run to one far sentence end
        "#### Final Answer\n" * HUGE,
        "x \\le " * HUGE + "\\boxed{31}",
    ],
    ids=["unclosed", "nested", "answer-then-unclosed", "answer-markers", "headings", "relations"],
)
def test_extraction_is_linear(response):
    # under pytest-timeout's limit: a quadratic pass over these inputs takes hours
    assert check_math(response, "31").reward == 0.0
    assert number_reward("", response, "31") == 0.0
    assert check_math(response, "x+1").reward == 0.0
