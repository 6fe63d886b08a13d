"""``number``: a strict reward for short-answer tasks whose gold answer is one number.

The rule (1.0 only if all hold, else 0.0):

1. Closed ``<think>...</think>`` blocks are dropped; an unclosed ``<think>`` scores 0 (no answer yet).
2. The *answer statements* are every ``\\boxed{...}``, every "answer is ... / answer: ..." (to the end of
   its sentence or line) and every GSM8K ``#### ...``. If there is at least one, each must state exactly one
   number, all must agree, and no number with another value may follow the last one (no hedging after the
   answer: "The answer is 31. Or 30." scores 0).
3. Without an answer statement, the last non-empty line is the answer: the part after its last ``=`` if it
   has one ("21 + 10 = 31"), else the whole line ("31", "The sum is 31.").
4. "Exactly one number" means: one numeric literal (``31``, ``-4``, ``31.0``, ``1,000``, ``$31``) and no
   other. ``21 + 10``, ``30 or 31``, ``\\boxed{30, 31}``, ``\\frac{62}{2}``, ``3.1e1`` and ``31%`` all fail;
   an empty box or an empty right-hand side states nothing.
5. The stated number equals the gold answer as a decimal (``31.0`` == ``31``; ``-31`` != ``31``).

So an unevaluated restatement of the question, several candidates or no answer at all earn nothing, and
the only way to score is to commit to the right number.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from typing import Any

# A numeric literal not glued to a word or another number: 31, -4, 3.5, 1,000 (thousands), and the
# pieces of 3.1e1 or 2x (which then count as two numbers or fail the word boundary).
_NUMBER = re.compile(r"(?<![\w.])[-+]?(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?(?![\w%])(?!\.\d)")
_ANY_DIGIT_RUN = re.compile(r"\d+")
_ANSWER_IS = re.compile(r"answer\s*(?:is|was|:|=)\s*:?", re.IGNORECASE)
_HASHES = re.compile(r"####")
_SENTENCE_END = re.compile(r"\.(?:\s|$)|\n|;")
_THINK = re.compile(r"<think>.*?</think>", re.DOTALL)


def number_reward(prompt: str, response: str, answer: Any, **fields: Any) -> float:
    """1.0 iff ``response`` states exactly one final number equal to ``answer`` (module docstring)."""
    gold = parse_number(str(answer).strip()) if answer is not None else None
    if gold is None:
        raise ValueError(f"the number reward needs a numeric gold answer, got {answer!r}")
    stated = final_number(response if isinstance(response, str) else "")
    return float(stated is not None and stated == gold)


def final_number(response: str) -> Decimal | None:
    """The one number ``response`` commits to as its final answer, or None (see the module rules)."""
    text = _THINK.sub("", response)
    if "<think>" in text:
        return None
    statements = answer_statements(text)
    if statements:
        values = [single_number(content) for content, _ in statements]
        if any(v is None for v in values) or len(set(values)) != 1:
            return None
        value = values[0]
        tail = text[statements[-1][1] :]
        if any(v != value for v in numbers_in(tail)):
            return None
        return value
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        return None
    last = lines[-1]
    return single_number(last.rpartition("=")[2] if "=" in last else last)


def answer_statements(text: str) -> list[tuple[str, int]]:
    """(content, end offset) of every boxed / "answer is" / ``####`` statement, in order of position."""
    found: list[tuple[int, str, int]] = []
    for start, content, end in boxed_contents(text):
        found.append((start, content, end))
    for match in (*_ANSWER_IS.finditer(text), *_HASHES.finditer(text)):
        if any(s <= match.start() < e for s, _, e in found):  # inside a box: already counted
            continue
        stop = _SENTENCE_END.search(text, match.end())
        end = stop.start() if stop else len(text)
        found.append((match.start(), text[match.end() : end], end))
    return [(content, end) for _, content, end in sorted(found)]


def boxed_contents(text: str) -> list[tuple[int, str, int]]:
    """(start, content, end) of every ``\\boxed{...}`` / ``\\fbox{...}`` with balanced braces; an
    unclosed box yields an empty content (it states nothing)."""
    out = []
    for match in re.finditer(r"\\(?:boxed|fbox)\s*\{", text):
        depth, i = 1, match.end()
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        content = text[match.end() : i - 1] if depth == 0 else ""
        out.append((match.start(), content, i))
    return out


def single_number(segment: str) -> Decimal | None:
    """The value of the only number in ``segment`` (LaTeX money / spacing removed), else None."""
    cleaned = segment.replace("\\$", "$").replace("\\!", "").replace("\\,", "")
    found = list(_NUMBER.finditer(cleaned))
    if len(found) != 1:
        return None
    rest = cleaned[: found[0].start()] + cleaned[found[0].end() :]
    if _ANY_DIGIT_RUN.search(rest):
        return None  # digits the literal pattern refused: 3.1e1, 31%, 2x
    return parse_number(found[0].group())


def numbers_in(text: str) -> list[Decimal]:
    out = [parse_number(m.group()) for m in _NUMBER.finditer(text)]
    return [v for v in out if v is not None]


def parse_number(literal: str) -> Decimal | None:
    """``31``, ``-4.50``, ``1,000``, ``+7`` -> Decimal (normalised so 31.0 == 31); anything else -> None."""
    literal = literal.strip().lstrip("$").replace(",", "")
    if not re.fullmatch(r"[-+]?\d+(?:\.\d+)?", literal):
        return None
    try:
        return Decimal(literal).normalize() + 0  # + 0 turns -0 into 0
    except InvalidOperation:
        return None
