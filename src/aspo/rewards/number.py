"""``number``: a strict reward for short-answer tasks whose gold answer is one number.

The rule (1.0 only if all hold, else 0.0):

1. Only the text after the last ``</think>`` counts; a ``<think>`` left open scores 0 (no answer yet).
2. The *answer statements* are every outermost ``\\boxed{...}``, every "answer is ... / answer: ..." (to the
   end of its sentence or line; "The answer is:" at a line's end takes the next line) and every GSM8K
   ``#### ...`` (a markdown heading such as ``#### Final Answer`` is not one). If there is at least one,
   each must state exactly one number, all must agree, and no number with another value may follow the
   last one ("The answer is 31. Or 30." scores 0).
3. Without an answer statement, the last non-empty line is the answer.
4. In a statement or that line, the value is in the last side of ``=`` that holds a digit, when every side
   before it is arithmetic on numbers or holds no digit ("Answer: 21 + 10 = 31"; the statement "The answer
   is 30 because 21 + 10 = 31" states no single value). The last line (rule 3) states its final claim:
   after its last ``=``, "is" or "equals" ("Sure! 21 + 10 = 31.", "The sum of 21 and 10 is 31.", "31 is
   the answer."). A negation or an inequality states no value ("not 31", ``x \\neq 31``,
   ``x <= 31``, "at least 31", "31 is wrong"), nor does a box with a negation or relation just before it
   (``x \\le \\boxed{31}``) or taken back just after it (``\\boxed{31} is wrong``).
5. "Exactly one number" means one numeric literal (``31``, ``-4``, ``−4``, ``31.0``, ``1,000``,
   ``1{,}000``, ``$31``) in plain prose: no other digits, and no mathematical notation around it --
   ``21 + 10``, ``30 or 31``, ``\\boxed{30, 31}``, ``\\frac{62}{2}``, ``3.1e1``, ``31%``, ``31\\pi``,
   ``31 i``, ``\\sqrt{31}``, ``e^{31}``, ``\\boxed{31!}`` all fail ("The answer is 31!" in prose
   exclaims); an empty box or an empty right-hand side states nothing. Words are prose ("31 apples"),
   except single letters other than "a" / "I" and the spelled-out symbols and operators of ``_MATH_WORDS``.
6. The stated number equals the gold answer as a decimal (``31.0`` == ``31``; ``-31`` != ``31``).

Finding the statements is linear in the length of the response.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from typing import Any

from aspo.rewards.math_answer import (
    HEADING,
    MAX_ANSWER_CHARS,
    box_spans,
    denies,
    lead_denies,
    strip_reasoning,
    trail_denies,
)
from aspo.rewards.math_number import join_digit_groups, normalise_text

# A numeric literal not glued to a word or another number: 31, -4, 3.5, 1,000 (thousands), and the
# pieces of 3.1e1 or 2x (which then count as two numbers or fail the word boundary).
_NUMBER = re.compile(r"(?<![\w.])[-+]?(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?(?![\w%])(?!\.\d)")
_ANY_DIGIT_RUN = re.compile(r"\d+")
_ANSWER_IS = re.compile(r"answer\s*(?:is\b|was\b|:|=)\s*:?", re.IGNORECASE)
_HASHES = re.compile(r"####[ \t]*")
_NEXT_LINE = re.compile(r"\s*")
_SENTENCE_END = re.compile(r"\.(?:\s|$)|\n|;")
_COPULA = re.compile(r"\bis\b|\bequals\b", re.IGNORECASE)
_ARITHMETIC = re.compile(r"(?:[\d\s.,+\-*/()\[\]^×÷]|\\times|\\cdot|\\div)*")
# formatting that carries no mathematics: boxes, \text, bold, inline-math delimiters, spacing, money
_FORMATTING = re.compile(
    r"\\(?:boxed|fbox|text|textbf|textit|textrm|mathrm|mathbf|mbox|displaystyle|left|right)\b\s*"
    r"|\\[()\[\]]|\\[,;:! ]|\\\$|[{}$*_#`~]"
)
# prose may hold words and punctuation only; these words are mathematics spelled out
_MATH_WORDS = frozenset(
    """pi inf infinity sqrt root roots squared cubed square cube factorial log ln exp sin cos tan
    times plus minus over divided thousand thousands million millions billion billions hundred hundreds
    dozen dozens percent""".split()
)
_IN_MATH = re.compile(r"\\boxed|\\fbox|\$|\\[(\[]")
_PROSE = re.compile(r"[A-Za-z']+(?:-[A-Za-z']+)*|[\s.,:;!?()\"]")


def number_reward(prompt: str, response: str, answer: Any, **fields: Any) -> float:
    """1.0 iff ``response`` states exactly one final number equal to ``answer`` (module docstring)."""
    gold = parse_number(str(answer).strip()) if answer is not None else None
    if gold is None:
        raise ValueError(f"the number reward needs a numeric gold answer, got {answer!r}")
    stated = final_number(response if isinstance(response, str) else "")
    return float(stated is not None and stated == gold)


def final_number(response: str) -> Decimal | None:
    """The one number ``response`` commits to as its final answer, or None (see the module rules)."""
    text = strip_reasoning(response)
    if text is None or "<think>" in text:
        return None
    text = normalise_text(text)
    value: Decimal | None = None
    last_end = None
    for content, end in answer_statements(text):
        stated = single_number(content) if content is not None else None
        if stated is None or (value is not None and stated != value):
            return None  # one statement states no single number, or two disagree: stop reading
        value, last_end = stated, end
    if last_end is not None:
        if any(v != value for v in numbers_in(text[last_end:])):
            return None
        return value
    lines = [line for line in text.splitlines() if line.strip()]
    return single_number(lines[-1], sentence=True) if lines else None


def answer_statements(text: str) -> list[tuple[str | None, int]]:
    """(content, end offset) of every boxed / "answer is" / ``####`` statement, in order of position; the
    content is None when the statement cannot be an answer (a box never closed, more than
    ``MAX_ANSWER_CHARS``, a negation or relation just before it). Linear in ``len(text)``."""
    boxes = box_spans(text)
    found: list[tuple[int, str | None, int]] = [
        # a box's statement is the box itself (\boxed{31!} is mathematics: a factorial)
        (
            start,
            None if b is None or trail_denies(text, b + 1) else _content(text, start, start, b + 1),
            _box_end(span, text),
        )
        for span in boxes
        for start, _, b in [span]
    ]
    markers = sorted(
        [(m.start(), m.end()) for m in _ANSWER_IS.finditer(text)]
        + [(m.start(), m.end()) for m in _HASHES.finditer(text) if not HEADING.match(text, m.end())]
    )
    box, stop, end = 0, None, -1
    for start, after in markers:
        while box < len(boxes) and _box_end(boxes[box], text) <= start:
            box += 1
        if box < len(boxes) and boxes[box][0] <= start:  # inside a box: already counted
            continue
        if end < after:  # one search serves every marker before that end (and none is found only once)
            stop = _SENTENCE_END.search(text, after)
            end = stop.start() if stop else len(text)
        if not text[after:end].strip() and stop is not None and stop.group() == "\n":
            blank = _NEXT_LINE.match(text, stop.end())  # "The answer is:\n31": the next non-empty line
            after = blank.end() if blank else stop.end()
            following = _SENTENCE_END.search(text, after)
            line_end = following.start() if following else len(text)
            found.append((start, _content(text, start, after, line_end), line_end))
        else:
            found.append((start, _content(text, start, after, end), end))
    return [(content, end) for _, content, end in sorted(found, key=lambda f: f[0])]


def _box_end(span: tuple[int, int, int | None], text: str) -> int:
    return len(text) if span[2] is None else span[2] + 1


def _content(text: str, start: int, a: int, b: int | None) -> str | None:
    if b is None or b - a > MAX_ANSWER_CHARS or lead_denies(text, start):
        return None
    return text[a:b]


def single_number(segment: str, sentence: bool = False) -> Decimal | None:
    """The value of the only number ``segment`` states (module rules 4 to 6), else None. ``sentence``: the
    segment is a last line, not an answer statement, so "is" / "equals" also lead to its value."""
    if denies(segment):
        return None
    cleaned = _FORMATTING.sub(" ", join_digit_groups(segment))
    parts = _last_with_digits(cleaned.split("="), any_left=sentence)
    if parts is None:
        return None
    if sentence:  # "The sum of 21 and 10 is 31.", "31 is the answer."
        chosen = _COPULA.split(parts[0])
        index = max((i for i, p in enumerate(chosen) if _ANY_DIGIT_RUN.search(p)), default=0)
        parts = [chosen[index], *chosen[index + 1 :], *parts[1:]]
    found = list(_NUMBER.finditer(parts[0]))
    if len(found) != 1:
        return None
    before, after = parts[0][: found[0].start()], parts[0][found[0].end() :] + " ".join(parts[1:])
    if _ANY_DIGIT_RUN.search(before + " " + after):
        return None  # digits the literal pattern refused: 3.1e1, 31%, 2x
    if not _is_prose(before) or not _is_prose(after):
        return None  # 31\pi, \sqrt{31}, e^{31}, 31 i
    if after.startswith("!") and _IN_MATH.search(segment):
        return None  # a factorial in math ($31!$, \boxed{31!}); in prose "The answer is 31!" exclaims
    return parse_number(found[0].group())


def _last_with_digits(sides: list[str], any_left: bool) -> list[str] | None:
    """The sides of ``a = b = c`` from the last one holding a digit on; None when a side before it is
    neither arithmetic on numbers (``21 + 10``) nor free of digits (``Total``): in an answer statement,
    "30 because 21 + 10 = 31" states no single value. ``any_left``: a last line's final claim counts
    whatever leads up to it ("Sure! 21 + 10 = 31")."""
    index = max((i for i, side in enumerate(sides) if _ANY_DIGIT_RUN.search(side)), default=0)
    for left in [] if any_left else sides[:index]:
        if _ANY_DIGIT_RUN.search(left) and not _ARITHMETIC.fullmatch(left):
            return None
    return sides[index:]


def _is_prose(text: str) -> bool:
    """Words and punctuation only, with no single letter but "a" / "I" and no spelled-out mathematics."""
    pieces = _PROSE.findall(text)
    if sum(map(len, pieces)) != len(text):
        return False  # some character is notation: \pi, ^, π, √, +, ...
    words = [p for p in pieces if p[0].isalpha() and p not in ("a", "A", "I")]  # "i" is the imaginary unit
    return not any(len(w) == 1 or w.lower() in _MATH_WORDS for w in words)


def numbers_in(text: str) -> list[Decimal]:
    out = [parse_number(m.group()) for m in _NUMBER.finditer(_FORMATTING.sub(" ", text))]
    return [v for v in out if v is not None]


def parse_number(literal: str) -> Decimal | None:
    """``31``, ``-4.50``, ``1,000``, ``+7`` -> Decimal (normalised so 31.0 == 31); anything else -> None."""
    literal = literal.strip().lstrip("$").replace(",", "").replace("−", "-")
    if not re.fullmatch(r"[-+]?\d+(?:\.\d+)?", literal):
        return None
    try:
        return Decimal(literal).normalize() + 0  # + 0 turns -0 into 0
    except InvalidOperation:
        return None
