"""Which text of a math response is its final answer, and whether that text is an answer at all.

Pure regex, no sympy: this decides *what* is compared; ``aspo.rewards.math`` asks math-verify *whether*
it equals the gold. The rules close the reward hacks a policy finds when any text can earn a point:

* Only an explicit final answer statement counts: every non-empty ``\\boxed{}`` / ``\\fbox{}`` of the
  final text (outermost boxes only; a box never closed means no answer at all); else every GSM8K
  ``#### N`` line (a markdown heading such as ``#### Final Answer`` is not one); else the last "the
  (final) answer is ..." / "Answer: ..."; else a final text that *is* one short line (``31``, ``$31$``,
  ``**31**``). Anything else -- reasoning that merely ends with a number, an empty ``\\boxed{}`` -- has no
  answer (there is no "last expression" fallback).
* Several statements of the chosen kind (``\\boxed{31}\\boxed{30}``) must all be correct: a hedge is wrong.
* A statement that names several candidates ("30 or 31", ``\\boxed{30, 31}``) is no answer -- unless the
  gold itself is a list (``2, 3``): then "2 or 3" / "x = 2 or x = 3" is that list.
* A negation or an inequality is no answer ("not 31", ``x \\neq 31``, ``x \\le 31``, "at least 31",
  ``x \\le \\boxed{31}``, ``\\boxed{31}`` is wrong), unless the gold is itself a relation (``x < 3``;
  math-verify compares them).
  "approximately 31" / ``\\approx 31`` states 31 (compared like any 31).
* When the gold is a number, the answer must be a number written out: an integer, a decimal, scientific
  notation, or a fraction *in lowest terms* (``21 + 10``, ``\\frac{62}{2}`` for 31 are unevaluated
  restatements and score 0). Currency, percent and degree signs, thousands separators (``1,250``,
  ``1{,}250``, ``1\\,250``, ``1 250``), ``x = 31`` and units *from the list* in
  ``aspo.rewards.math_number`` are accepted; any other letter or symbol after the number (``4\\pi``,
  ``2x^2``, ``3i``, ``2e``, ``31 \\text{ apples}``) makes it not a number, so a symbol can never be
  dropped as if it were a unit. When both the gold and the answer name a unit, it must be the same unit
  (``5 \\text{ cm}`` is not ``5 \\text{ m}``).
* A symbolic answer must be written in the gold's form: with the same numerals (``numerals``).
* Reasoning models: only the text after the last ``</think>`` counts; an unclosed ``<think>`` has no answer.

Finding the statements is linear in the length of the response (one pass matches every brace).
"""

from __future__ import annotations

import re
from collections import Counter

from aspo.rewards.math_number import (  # noqa: F401  (as_number & co: part of this module's vocabulary)
    NOISE,
    as_number,
    normalise_text,
    number_and_unit,
    number_value,
    same_number,
    unwrap,
)

MAX_ANSWER_CHARS = 1000  # an answer longer than this is not an answer
_BARE_MAX_CHARS = 100  # a whole final text this short (one line) may be the answer itself
_LEAD_CHARS = 60  # how far before a statement a negation / relation is looked for

_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_BRACE = re.compile(r"[{}]")
_BOXED_BARE = re.compile(r"\\boxed +([^\s${}\\]+)")
_HASHES = re.compile(r"####[ \t]*([^\n]+)")
# "#### Final Answer", "#### Step 2", "#### 1. Add": a markdown heading, not GSM8K's answer marker
HEADING = re.compile(r"[A-Za-z]{2}|\*\*|\d+[.)]\s+[A-Za-z]")
_ANSWER_IS = re.compile(r"answer\s*(?:is\b|was\b|[:：=])\s*[:：]?\s*(.+?)(?:\.\s|\.?$|\n)", re.IGNORECASE)
_ANSWER_MARK = re.compile(r"answer\s*(?:is\b|was\b|[:：=])", re.IGNORECASE)
_HEDGE = re.compile(r"\b(?:or|either)\b|\\lor\b|\\vee\b", re.IGNORECASE)

# Negations and relations other than "=": such a statement is not an answer (unless the gold is one).
_DENIAL = re.compile(
    r"\\(?:neq?|not|neg|lnot|notin|nless|ngtr|nleq?q?|ngeq?q?|lt|gt|leq?q?|geq?q?|leqslant|geqslant"
    r"|lesssim|gtrsim|ll|gg|prec|succ|preceq|succeq)(?![A-Za-z])"
    r"|[<>≤≥≠≮≯≰≱≪≫⩽⩾]|!=|=/="
    r"|\b(?:not|no|never|neither|nor|cannot|isn'?t|aren'?t|wasn'?t|doesn'?t|don'?t|won'?t|can'?t"
    r"|less|fewer|greater|more|larger|smaller|bigger|higher|lower|least|most|exceeds?|exceeding"
    r"|below|above|under|over|unequal|except|besides|other\s+than|different\s+from|up\s+to"
    r"|wrong|incorrect|false|impossible)\b|n[’']t\b",
    re.IGNORECASE,
)
# a relation symbol ending the previous line(s) just before a statement: "x \\le" then a line "\\boxed{31}"
_RELATION_END = re.compile(
    r"(?:\\(?:neq?|not|nleq?q?|ngeq?q?|lt|gt|leq?q?|geq?q?|leqslant|geqslant|ll|gg)(?![A-Za-z])"
    r"|[<>≤≥≠⩽⩾]|!=)[\s$(\[\\]*$"
)
# a negation / relation ending the text in front of a statement, a few words at most before it
_DENIED_LEAD = re.compile(rf"(?:{_DENIAL.pattern})(?:[ \t]+[A-Za-z']+){{0,3}}[ \t$(\[\\]*$", re.IGNORECASE)

_DENIED_TRAIL = re.compile(
    r"[\s$)\]\\]*(?:is|was|are|would\s+be|seems|looks)?\s*(?:not|n't|never|wrong|incorrect|false|impossible)\b",
    re.IGNORECASE,
)


def strip_reasoning(response: str) -> str | None:
    """The part of a response that may hold the answer; None when a ``<think>`` is never closed."""
    if "</think>" in response:
        return response.rsplit("</think>", 1)[1]
    if response.lstrip().startswith("<think>"):
        return None
    return response


def box_spans(text: str) -> list[tuple[int, int, int | None]]:
    """(start, content start, content end or None when never closed) of every outermost ``\\boxed{`` /
    ``\\fbox{``, in order. One pass matches every brace, so this is linear in ``len(text)``."""
    if "\\boxed" not in text and "\\fbox" not in text:
        return []
    closing: dict[int, int] = {}
    opened: list[int] = []
    for brace in _BRACE.finditer(text):
        if brace.group() == "{":
            opened.append(brace.start())
        elif opened:
            closing[opened.pop()] = brace.start()
    spans: list[tuple[int, int, int | None]] = []
    inside_until = -1
    for match in _BOXED.finditer(text):
        if match.start() < inside_until:  # a box inside a box: part of the outer one's content
            continue
        end = closing.get(match.end() - 1)
        spans.append((match.start(), match.end(), end))
        if end is not None:
            inside_until = end
    return spans


def _bare_boxes(text: str, spans: list[tuple[int, int, int | None]]) -> list[tuple[int, str]]:
    """(start, content) of every ``\\boxed x`` outside the braced boxes ``spans``."""
    closed = [(start, end) for start, _, end in spans if end is not None]
    out, i = [], 0
    for match in _BOXED_BARE.finditer(text):
        while i < len(closed) and closed[i][1] < match.start():
            i += 1
        if i < len(closed) and closed[i][0] < match.start():  # inside a braced box: part of its content
            continue
        out.append((match.start(), match.group(1)))
    return out


def boxed_contents(text: str) -> list[str]:
    """Contents of every outermost ``\\boxed{...}`` / ``\\fbox{...}`` and ``\\boxed x``, in order (a box
    that is never closed has none)."""
    spans = box_spans(text)
    found = [(start, text[a:b].strip()) for start, a, b in spans if b is not None]
    return [content for _, content in sorted(found + _bare_boxes(text, spans))]


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (or ``\\boxed x``); None if there is none."""
    contents = boxed_contents(text)
    return contents[-1] if contents else None


def denies(text: str) -> bool:
    """Whether ``text`` negates or bounds rather than states: "not", ``\\neq``, ``<=``, "at least" ..."""
    return _DENIAL.search(text) is not None


def lead_denies(text: str, start: int) -> bool:
    """Whether the words just before ``start`` negate or bound the statement there (``x \\le \\boxed{31}``,
    "is not \\boxed{31}", "is at least \\boxed{31}"); looks back ``_LEAD_CHARS`` at most."""
    window = max(0, start - _LEAD_CHARS)
    line_start = text.rfind("\n", window, start) + 1  # words: the same line only
    if _DENIED_LEAD.search(text, max(line_start, window), start):
        return True
    return _RELATION_END.search(text, window, start) is not None  # a relation symbol, across lines too


def trail_denies(text: str, end: int) -> bool:
    """Whether the words just after a box ending at ``end`` take it back (``\\boxed{31} is wrong``,
    "\\boxed{31} is not right"); the same line, ``_LEAD_CHARS`` at most."""
    return _DENIED_TRAIL.match(text[end : end + _LEAD_CHARS].split("\n", 1)[0]) is not None


def _led(text: str, start: int, content: str, end: int | None = None) -> str:
    """A statement's content, marked as denied (prefixed with "not") when the words just before it, or
    just after a box, negate or bound it."""
    denied = lead_denies(text, start) or (end is not None and trail_denies(text, end))
    return f"not {content}" if denied else content


def answer_statements(response: str) -> list[str]:
    """Every final answer the response commits to (see the module rules); [] when it states none."""
    text = strip_reasoning(response)
    if text is None:
        return []
    spans = box_spans(text)
    if any(end is None for _, _, end in spans):  # a box begun and never closed: no answer was finished
        return []
    boxes = [
        _led(text, start, text[a:b].strip(), b + 1)
        for start, a, b in spans
        if b is not None and text[a:b].strip()
    ]
    if boxes:
        return boxes
    bare = _bare_boxes(text, spans)
    if bare:
        return [_led(text, start, content) for start, content in bare]
    hashes = [
        _led(text, m.start(), m.group(1).strip())
        for m in _HASHES.finditer(text)
        if m.group(1).strip() and not HEADING.match(m.group(1).strip())
    ]
    if hashes:
        return hashes
    # "The final answer is:" cut off, or "... is within \boxed{}" parroting the instruction: no statement
    phrased = [
        (m.start(), p)
        for m in _ANSWER_IS.finditer(text)
        # "Final Answer: The final answer is 31": the innermost statement
        if (p := _ANSWER_MARK.split(m.group(1))[-1].strip().lstrip(":：").strip()) and not _BOXED.search(p)
    ]
    if phrased:
        return [_led(text, *phrased[-1])]
    bare_text = text.strip()
    if (
        bare_text
        and len(bare_text) <= _BARE_MAX_CHARS
        and "\n" not in bare_text
        and not _BOXED.search(bare_text)
        and "?" not in bare_text
    ):
        return [bare_text]
    return []


def _items(text: str) -> list[str]:
    """``text`` cut at its top-level commas (``2, 3`` -> two items; ``(1, 2)`` and ``[0, 1)`` are one)."""
    items, depth, start = [], 0, 0
    for i, char in enumerate(text):
        depth += (char in "([{") - (char in ")]}")
        if char == "," and depth == 0:
            items.append(text[start:i])
            start = i + 1
    return [*items, text[start:]]


def is_list(gold: str) -> bool:
    """Whether the gold is several answers (``2, 3``, ``2 \\text{ or } 3``, ``1 \\pm \\sqrt{2}``)."""
    return len(_items(gold)) > 1 or bool(_HEDGE.search(gold)) or bool(re.search(r"\\pm|\\mp|±", gold))


def admissible(statement: str, gold: str | None = None, gold_unit: str | None = None) -> str | None:
    """The text to compare for one answer statement, or None when it is not an answer (see module
    rules). ``gold`` is the gold answer's text (for a numeric gold, ``gold_unit`` is its unit)."""
    if not statement.strip() or len(statement) > MAX_ANSWER_CHARS:
        return None
    gold_text = gold or ""
    if denies(statement) and not denies(gold_text):
        return None
    if gold_unit is not None:  # the gold is a number
        found = number_and_unit(statement)
        if found is None or (found[1] and gold_unit and found[1] != gold_unit):
            return None
        return found[0]
    text = unwrap(normalise_text(statement))
    if not text:  # \boxed{\boxed{}}
        return None
    if _HEDGE.search(NOISE.sub(" ", text)):
        if not is_list(gold_text):
            return None
        text = re.sub(r"\\text\s*\{\s*(?:or|and)\s*\}|\b(?:or|and)\b|\\lor|\\vee", ",", text)
        text = re.sub(r",\s*,", ",", text)
    return text.strip()


def numerals(text: str) -> Counter[str]:
    """The numerals an answer is written with, except 1 (``\\frac{x}{2}`` is ``\\frac{1}{2}x``): the
    reward's test of *form* for symbolic answers. ``\\sqrt{12}`` is not written like ``2\\sqrt{3}``, nor
    ``(x+3)(2x-6)`` like ``2x^2-18``: an answer left unsimplified, unexpanded or unfactored uses other
    numbers than the gold's. A list counts each numeral as often as its item that uses it most
    (``1+\\sqrt{2}, 1-\\sqrt{2}`` is written like ``1 \\pm \\sqrt{2}``)."""
    text = re.sub(r"(?<=\d),(?=\d{3}\b)", "", normalise_text(text))
    out: Counter[str] = Counter()
    for item in _items(text):
        out |= Counter(n for n in re.findall(r"\d+(?:\.\d+)?", item) if n.lstrip("0") not in ("1", "1.0"))
    return out


def extract_answer(response: str, gold_is_number: bool = False) -> str | None:
    """The single final answer a response commits to, or None (no statement, an inadmissible one, or
    several that differ as text)."""
    answers = {admissible(s, None, "" if gold_is_number else None) for s in answer_statements(response)}
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
