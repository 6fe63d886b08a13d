"""Which text of a math response is its final answer, and whether that text is an answer at all.

Pure regex, no sympy: this decides *what* is compared; ``aspo.rewards.math`` asks math-verify *whether*
it equals the gold. The rules close the reward hacks a policy finds when any text can earn a point:

* Only an explicit final answer statement counts: every non-empty ``\\boxed{}`` / ``\\fbox{}`` of the
  final text; else every GSM8K ``#### N`` line; else the last "the (final) answer is ..."; else a final
  text that *is* one short line (``31``, ``$31$``). Anything else -- reasoning that merely ends with a
  number, an empty ``\\boxed{}`` -- has no answer (reward 0; there is no "last expression" fallback).
* Several statements of the chosen kind (``\\boxed{31}\\boxed{30}``) must all be correct: a hedge is wrong.
* A statement that names several candidates ("30 or 31", ``\\boxed{30, 31}``, a list) is no answer.
* When the gold is a number, the answer must be a number written out: an integer, a decimal, scientific
  notation, or a fraction *in lowest terms* (so ``\\frac{3}{4}`` for 0.75 counts; ``21 + 10``,
  ``\\boxed{21 + 10}`` and ``\\frac{62}{2}`` for 31 are unevaluated restatements and score 0). Currency
  (``\\$31``), percent, degree signs, thousands separators, ``x = 31`` and trailing unit words
  (``31 dollars``, ``31 \\text{ cm}``) are accepted. Such answers are compared by value (``same_number``:
  exact rationals, relative tolerance 1e-6); symbolic golds by math-verify alone.
* Reasoning models: only the text after the last ``</think>`` counts; an unclosed ``<think>`` has no answer.
"""

from __future__ import annotations

import math
import re
from fractions import Fraction

MAX_ANSWER_CHARS = 1000  # an answer longer than this is not an answer
_BARE_MAX_CHARS = 100  # a whole final text this short (one line) may be the answer itself

_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_BOXED_BARE = re.compile(r"\\boxed +([^\s${}\\]+)")
_EMPTY_BOX = re.compile(r"\\(?:boxed|fbox)\s*\{\s*\}")
_HASHES = re.compile(r"####\s*(.+)")
_ANSWER_IS = re.compile(r"answer\s+is\s*[:：]?\s*(.+?)(?:\.\s|\.?$|\n)", re.IGNORECASE)
_HEDGE = re.compile(r"\b(?:or|either)\b|\\lor\b|\\vee\b", re.IGNORECASE)

# a number written out: 31, -31, 1,250, 31.0, .5, 4.5e33, 4.5 \times 10^{33}
_DECIMAL = r"[-+]?\s*(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?|[-+]?\.\d+"
_SCI = rf"(?:{_DECIMAL})\s*(?:\\times|\\cdot|\*)\s*10\s*\^\s*(?:\{{\s*[-+]?\d+\s*\}}|[-+]?\d)"
_FRACTION = r"([-+]?)\\frac\s*(?:\{\s*([-+]?\d+)\s*\}|(\d))\s*(?:\{\s*(\d+)\s*\}|(\d))"
_SLASH = r"([-+]?\d+)\s*/\s*(\d+)"
_NUMBER = re.compile(rf"(?:{_SCI}|{_FRACTION}|{_SLASH}|{_DECIMAL})")
# what may follow the number: unit words, no digits except exponents (cm^2), nothing that computes
_UNIT_WORDS = r"[A-Za-z\\\s/.{}]*"
_UNITS = re.compile(rf"\s*(?:[A-Za-z\\]{_UNIT_WORDS}(?:\^\s*\{{?-?\d\}}?{_UNIT_WORDS})*)?")
_WRAPPERS = re.compile(r"\\(?:text|textbf|textrm|textit|mathrm|mathbf|mathit|mbox|boxed|fbox)\s*\{([^{}]*)\}")
_NOISE = re.compile(r"\\left|\\right|\\[!,;:]|\\ |~|\\?\$|\\?%|\^\s*\{?\\circ\}?|\\circ|°")


def strip_reasoning(response: str) -> str | None:
    """The part of a response that may hold the answer; None when a ``<think>`` is never closed."""
    if "</think>" in response:
        return response.rsplit("</think>", 1)[1]
    if response.lstrip().startswith("<think>"):
        return None
    return response


def _balanced(text: str, start: int) -> str | None:
    """Text from ``start`` up to the brace closing the one just before it; None if never closed."""
    depth, i = 1, start
    while i < len(text) and depth:
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        i += 1
    return text[start : i - 1].strip() if depth == 0 else None


def boxed_contents(text: str) -> list[str]:
    """Contents of every ``\\boxed{...}`` / ``\\fbox{...}`` (balanced braces) and ``\\boxed x``, in order."""
    found = [(m.start(), _balanced(text, m.end())) for m in _BOXED.finditer(text)]
    found += [(m.start(), m.group(1)) for m in _BOXED_BARE.finditer(text)]
    return [content for _, content in sorted(found) if content is not None]


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (or ``\\boxed x``); None if there is none."""
    contents = boxed_contents(text)
    return contents[-1] if contents else None


def answer_statements(response: str) -> list[str]:
    """Every final answer the response commits to (see the module rules); [] when it states none."""
    text = strip_reasoning(response)
    if text is None:
        return []
    boxes = [b for b in boxed_contents(text) if b]
    if boxes:
        return boxes
    hashes = [h.strip() for h in _HASHES.findall(text) if h.strip()]
    if hashes:
        return hashes
    # "The final answer is:" cut off, or "... is within \boxed{}" parroting the instruction: no statement
    phrased = [p.strip().lstrip(":：").strip() for p in _ANSWER_IS.findall(text)]
    phrased = [p for p in phrased if p and not _EMPTY_BOX.search(p)]
    if phrased:
        return [phrased[-1]]
    bare = text.strip()
    if (
        bare
        and len(bare) <= _BARE_MAX_CHARS
        and "\n" not in bare
        and not _BOXED.search(bare)
        and "?" not in bare
    ):
        return [bare]
    return []


def _unwrap(text: str) -> str:
    for _ in range(4):  # \text{\textbf{31}}: a few levels are plenty
        text, count = _WRAPPERS.subn(r" \1 ", text)
        if not count:
            break
    return text


def as_number(text: str) -> str | None:
    """The number ``text`` states, as plain text (``\\$1,250 dollars`` -> ``1,250``); None if it is not a
    single number written out (an expression, a list, a hedge, an unreduced fraction ...)."""
    text = _NOISE.sub("", _unwrap(text)).replace("{,}", ",").replace("−", "-")
    text = re.sub(r"\\[dt]frac", r"\\frac", text)
    text = re.split(r"=|\\approx|\\simeq", text)[-1].strip().rstrip(".").strip()
    match = _NUMBER.match(text)
    if match is None or _UNITS.fullmatch(text[match.end() :]) is None or _HEDGE.search(text[match.end() :]):
        return None
    number = match.group(0).strip()
    exponent = re.fullmatch(r"([-+]?\s*[\d.,]+)[eE]([-+]?\d+)", number)
    if exponent:  # math-verify reads 4.5e33 as 4.5 * e * 33
        number = f"{exponent.group(1)} \\times 10^{{{int(exponent.group(2))}}}"
    if match.group(1) is not None:  # \frac{a}{b}
        sign, numerator, denominator = (
            match.group(1),
            match.group(2) or match.group(3),
            match.group(4) or match.group(5),
        )
    elif match.group(6) is not None:  # a/b
        sign, numerator, denominator = "", match.group(6), match.group(7)
    else:
        return number
    a, b = int(numerator), int(denominator)
    if b <= 1 or math.gcd(a, b) != 1:  # 62/2, 4/1: a computation left undone
        return None
    negative = (sign.strip() == "-") != (a < 0)
    return f"{'-' if negative else ''}\\frac{{{abs(a)}}}{{{b}}}"


_MAX_EXPONENT = 400  # 10^(10^9) is not a number anyone meant, and Fraction would build it


def number_value(number: str) -> Fraction | None:
    """The exact value of a number ``as_number`` returned (None for anything else)."""
    text = re.sub(r"[\s,]", "", number)
    fraction = re.fullmatch(r"([-+]?)\\frac\{(\d+)\}\{(\d+)\}", text)
    if fraction:
        value = Fraction(int(fraction.group(2)), int(fraction.group(3)))
        return -value if fraction.group(1) == "-" else value
    decimal = re.fullmatch(r"([-+]?(?:\d+\.?\d*|\.\d+))(?:(?:\\times|\\cdot|\*)10\^\{?([-+]?\d+)\}?)?", text)
    if decimal is None or abs(int(decimal.group(2) or 0)) > _MAX_EXPONENT:
        return None
    return Fraction(decimal.group(1)) * Fraction(10) ** int(decimal.group(2) or 0)


def same_number(a: str, b: str) -> bool:
    """Numbers are equal when their values agree to a relative 1e-6 (math-verify rounds to 6 decimal
    *places*, which makes 2.88e-19 equal 1.325e-27)."""
    x, y = number_value(a), number_value(b)
    if x is None or y is None:
        return False
    return x == y or abs(x - y) <= Fraction(1, 10**6) * max(abs(x), abs(y))


def admissible(statement: str, gold_is_number: bool) -> str | None:
    """The text to compare for one answer statement, or None when it is not an answer (see module rules)."""
    if not statement.strip() or len(statement) > MAX_ANSWER_CHARS:
        return None
    if gold_is_number:
        return as_number(statement)
    if _HEDGE.search(_unwrap(statement)):
        return None
    return statement.strip()


def extract_answer(response: str, gold_is_number: bool = False) -> str | None:
    """The single final answer a response commits to, or None (no statement, an inadmissible one, or
    several that differ as text)."""
    answers = {admissible(s, gold_is_number) for s in answer_statements(response)}
    if len(answers) != 1:
        return None
    return answers.pop()


def normalize_answer(answer: str | None) -> str | None:
    """A light canonical form (spacing, ``\\left``, trailing ``.0``); a shortcut before math-verify, not
    an equivalence check."""
    if answer is None:
        return None
    text = re.sub(r"\\left|\\right|\\!|\\,|\s+|\$", "", answer)
    text = re.sub(r"(?<=\d),(?=\d{3}\b)", "", text)
    return re.sub(r"^(-?\d+)\.0+$", r"\1", text)
