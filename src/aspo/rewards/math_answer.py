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
  ``1{,}250``, ``1\\,250``, ``1 250``), ``x = 31`` and units *from the list below* are accepted; any other
  letter or symbol after the number (``4\\pi``, ``2x^2``, ``3i``, ``2e``, ``31 \\text{ apples}``) makes
  it not a number, so a symbol can never be dropped as if it were a unit. When both the gold and the answer
  name a unit, it must be the same unit (``5 \\text{ cm}`` is not ``5 \\text{ m}``).
* A symbolic answer must be written in the gold's form: with the same numerals (``numerals``).
* Reasoning models: only the text after the last ``</think>`` counts; an unclosed ``<think>`` has no answer.

Finding the statements is linear in the length of the response (one pass matches every brace).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from fractions import Fraction

MAX_ANSWER_CHARS = 1000  # an answer longer than this is not an answer
_BARE_MAX_CHARS = 100  # a whole final text this short (one line) may be the answer itself
_LEAD_CHARS = 60  # how far before a statement a negation / relation is looked for

_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_BOXED_BARE = re.compile(r"\\boxed +([^\s${}\\]+)")
_HASHES = re.compile(r"####[ \t]*([^\n]+)")
# "#### Final Answer", "#### Step 2", "#### 1. Add": a markdown heading, not GSM8K's answer marker
_HEADING = re.compile(r"[A-Za-z]{2}|\*\*|\d+[.)]\s+[A-Za-z]")
_ANSWER_IS = re.compile(r"answer\s*(?:is\b|was\b|[:：=])\s*[:：]?\s*(.+?)(?:\.\s|\.?$|\n)", re.IGNORECASE)
_HEDGE = re.compile(r"\b(?:or|either)\b|\\lor\b|\\vee\b", re.IGNORECASE)

# Negations and relations other than "=": such a statement is not an answer (unless the gold is one).
_DENIAL = re.compile(
    r"\\(?:neq?|not|neg|lnot|notin|nless|ngtr|nleq?q?|ngeq?q?|lt|gt|leq?q?|geq?q?|leqslant|geqslant"
    r"|lesssim|gtrsim|ll|gg|prec|succ|preceq|succeq)(?![A-Za-z])"
    r"|[<>≤≥≠≮≯≰≱≪≫⩽⩾]|!=|=/="
    r"|\b(?:not|no|never|neither|nor|cannot|isn'?t|aren'?t|wasn'?t|doesn'?t|don'?t|won'?t|can'?t"
    r"|less|fewer|greater|more|larger|smaller|bigger|higher|lower|least|most|exceeds?|exceeding"
    r"|below|above|under|over|unequal|except|besides|other\s+than|different\s+from|up\s+to"
    r"|wrong|incorrect|false|impossible)\b",
    re.IGNORECASE,
)
# a negation / relation ending the text in front of a statement, a few words at most before it
_DENIED_LEAD = re.compile(rf"(?:{_DENIAL.pattern})(?:[ \t]+[A-Za-z']+){{0,3}}[ \t$(\[\\]*$", re.IGNORECASE)

_DENIED_TRAIL = re.compile(
    r"[\s$)\]\\]*(?:is|was|are|would\s+be|seems|looks)?\s*(?:not|n't|never|wrong|incorrect|false|impossible)\b",
    re.IGNORECASE,
)

# a number written out: 31, -31, 1,250, 31.0, .5, 4.5e33, 4.5 \times 10^{33}
_DECIMAL = r"[-+]?\s*(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?|[-+]?\.\d+"
_SCI = rf"(?:{_DECIMAL})\s*(?:\\times|\\cdot|\*)\s*10\s*\^\s*(?:\{{\s*[-+]?\d+\s*\}}|[-+]?\d)"
_FRACTION = r"([-+]?)\\frac\s*(?:\{\s*([-+]?\d+)\s*\}|(\d))\s*(?:\{\s*(\d+)\s*\}|(\d))"
_SLASH = r"([-+]?\d+)\s*/\s*(\d+)"
_NUMBER = re.compile(rf"(?:{_SCI}|{_FRACTION}|{_SLASH}|{_DECIMAL})")
# digit groups separated by a space: 1 200, 1\,200, 1~200 (every group after the first has 3 digits)
_SPACED_GROUPS = re.compile(r"(?<![\d.])\d{1,3}(?:(?:\s|~|\\[,;: !])+\d{3})+(?![\d])")
_APPROXIMATELY = re.compile(r"^\s*(?:approximately|approx\.?|about|around|roughly)\s+", re.IGNORECASE)
_WRAPPERS = re.compile(
    r"\\(?:textbf|textit|mathbf|mathit|boxed|fbox|displaystyle)\s*\{([^{}]*)\}"
    r"|\\(?:text|textrm|mathrm|mbox)\s*\{(\s*[-+]?\d[^{}]*)\}"  # \text{31}, \text{31 cm}: a number in text
)
_NOISE = re.compile(r"\\left|\\right|\\displaystyle|\\[!,;:]|\\ |~|\$|\\[()\[\]]|\*\*|__|`")

# Units: only these words (singular; a plural "s"/"es" is accepted) count as a unit after a number.
# Single letters (m, g, s, ...) only inside \text{} / \mathrm{} -- in math mode a letter is a variable.
_UNIT_ALIASES = {
    "meter": "m", "metre": "m", "centimeter": "cm", "centimetre": "cm", "millimeter": "mm",
    "millimetre": "mm", "kilometer": "km", "kilometre": "km", "inch": "in", "inche": "in", "foot": "ft",
    "feet": "ft", "yard": "yd", "mile": "mi", "liter": "l", "litre": "l", "milliliter": "ml",
    "millilitre": "ml", "gallon": "gal", "gram": "g", "kilogram": "kg", "milligram": "mg", "pound": "lb",
    "lbs": "lb", "ounce": "oz", "second": "s", "sec": "s", "minute": "min", "hour": "h", "hr": "h",
    "year": "yr", "dollar": "$", "usd": "$", "cent": "cent", "percent": "%", "degree": "°", "deg": "°",
    "radian": "rad", "kelvin": "k", "joule": "j", "newton": "n", "watt": "w", "volt": "v", "ohm": "ω",
}  # fmt: skip
_UNITS = frozenset(
    [*_UNIT_ALIASES, *_UNIT_ALIASES.values()]
    + """cm mm km nm um μm µm in ft yd mi ly au pc kpc mpc sq square cubic cu acre hectare ha l ml gal
    quart pint cup tbsp tsp oz g kg mg ton tonne lb s ms ns min h day week month yr mph kph kmh knot
    rad cent euro yen rupee rs hz khz mhz ghz ev kev mev gev pa kpa atm bar erg mol cal kcal kw kwh mw
    dyn dyne arcsec arcmin angstrom å unit point way integer digit student meal edge multiple
    per""".split()
)
_UNIT_TOKEN = re.compile(
    r"(?P<space>\s+|~|\\[,;:! ])"
    r"|\\(?:text|textrm|textnormal|mathrm|mbox|rm|operatorname)\s*\{(?P<text>[^{}]*)\}"
    r"|(?P<power>\^\s*\{\s*-?\s*[1-3]\s*\}|\^\s*-?[1-3])"
    r"|(?P<word>[A-Za-zμµÅå]+)"
    r"|(?P<sep>/|\\cdot|\.|\{|\})"
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
    closing: dict[int, int] = {}
    opened: list[int] = []
    for i, char in enumerate(text):
        if char == "{":
            opened.append(i)
        elif char == "}" and opened:
            closing[opened.pop()] = i
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
    line_start = text.rfind("\n", max(0, start - _LEAD_CHARS), start) + 1  # the same line only
    return _DENIED_LEAD.search(text, max(line_start, start - _LEAD_CHARS), start) is not None


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
        if m.group(1).strip() and not _HEADING.match(m.group(1).strip())
    ]
    if hashes:
        return hashes
    # "The final answer is:" cut off, or "... is within \boxed{}" parroting the instruction: no statement
    phrased = [
        (m.start(), p)
        for m in _ANSWER_IS.finditer(text)
        if (p := m.group(1).strip().lstrip(":：").strip()) and not _BOXED.search(p)
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


def normalise_text(text: str) -> str:
    """Typography that does not change an answer: ``−`` (U+2212) for ``-``, ``{,}`` for ``,``,
    ``\\dfrac`` / ``\\tfrac`` for ``\\frac``."""
    text = text.replace("−", "-").replace("{,}", ",")
    return re.sub(r"\\[dt]frac", r"\\frac", text)


def _unwrap(text: str) -> str:
    for _ in range(4):  # \textbf{\boxed{31}}: a few levels are plenty
        text, count = _WRAPPERS.subn(lambda m: f" {m.group(1) or m.group(2) or ''} ", text)
        if not count:
            break
    text = text.strip()
    while text.startswith("{") and text.endswith("}"):  # \boxed{{31}}
        inner = text[1:-1]
        if inner.count("{") != inner.count("}"):
            break
        text = inner.strip()
    return text


def _unit_word(word: str, letter_ok: bool) -> str | None:
    """The canonical name of a unit word from the list, or None."""
    low = word.lower()
    for candidate in (low, low[:-1] if low.endswith("s") else "", low[:-2] if low.endswith("es") else ""):
        if candidate in _UNITS and (len(candidate) > 1 or letter_ok):
            return _UNIT_ALIASES.get(candidate, candidate)
    return None


def unit_of(tail: str) -> str | None:
    """The canonical unit that ``tail`` (the text after a number) names: ``""`` for none, None when it
    holds anything that is not a listed unit (a symbol, a variable, an operator, a digit)."""
    units: list[str] = []
    pos, last_unit = 0, False
    while pos < len(tail):
        token = _UNIT_TOKEN.match(tail, pos)
        if token is None:
            return None
        pos = token.end()
        if token.group("text") is not None:
            words = re.sub(r"\\[,;:! ]|[~/.\s\-]", " ", token.group("text")).split()
            names = [_unit_word(w, letter_ok=True) for w in words]
            if None in names:
                return None
            units += names  # type: ignore[arg-type]
            last_unit = bool(names)
        elif token.group("word") is not None:
            name = _unit_word(token.group("word"), letter_ok=False)
            if name is None:
                return None
            units.append(name)
            last_unit = True
        elif token.group("power") is not None:
            if not last_unit:  # 31^2: an exponent on the number, not on a unit
                return None
            units.append(re.sub(r"[\s{}^]", "", token.group("power")))
            last_unit = False
    return " ".join(u for u in units if u != "per")


def join_digit_groups(text: str) -> str:
    """``1 200``, ``1\\,200``, ``1~200`` -> ``1200`` (groups of three digits after the first)."""
    return _SPACED_GROUPS.sub(lambda m: re.sub(r"\D", "", m.group(0)), text)


def _split_equation(text: str) -> str | None:
    """The right-hand side of ``x = 31`` / ``21 + 10 = 31`` / ``\\pi \\approx 3.14``; None when a left
    side is neither a name nor arithmetic on numbers (``2x - 4 = 0`` is an equation, not a value)."""
    parts = re.split(r"=|\\approx|\\simeq|≈", text)
    for left in parts[:-1]:
        name = re.fullmatch(r"\s*(?:[A-Za-z]+|\\[A-Za-z]+|\\text\s*\{[^{}]*\})(?:_\{?\w+\}?)?'?\s*", left)
        numbers = re.sub(r"\\(?:times|cdot|div|frac)", "", left)
        if not (name or re.fullmatch(r"[\d\s.,+\-*/()\[\]^{}]*", numbers)):
            return None
    return parts[-1]


def number_and_unit(text: str) -> tuple[str, str] | None:
    """The number ``text`` states, as plain text, and its unit (``\\$1,250`` -> ``("1,250", "$")``); None if
    it is not a single number written out (an expression, a list, a hedge, an unreduced fraction, a
    symbol after the number ...)."""
    text = _unwrap(normalise_text(text))
    unit = ""
    if re.search(r"\\\$|\\text\{\s*\\?\$\s*\}", text):
        unit = "$"
    if re.search(r"\\?%|\\percent\b", text):
        unit = "%"
    if re.search(r"\^\s*\{?\s*\\circ\s*\}?|°|\\degree\b", text):
        unit = "°"
    text = re.sub(
        r"\\\$|\\text\{\s*\\?\$\s*\}|\\?%|\\percent\b|\^\s*\{?\s*\\circ\s*\}?|°|\\degree\b", " ", text
    )
    text = _NOISE.sub(" ", text)
    text = _APPROXIMATELY.sub("", text)  # "approximately 3.14" states 3.14
    text = join_digit_groups(text)
    right = _split_equation(text)
    if right is None:
        return None
    text = right.strip().rstrip(".").strip()
    match = _NUMBER.match(text)
    if match is None:
        return None
    tail = unit_of(text[match.end() :])
    if tail is None or (tail and unit and tail != unit):
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
        return number, tail or unit
    a, b = int(numerator), int(denominator)
    if b <= 1 or math.gcd(a, b) != 1:  # 62/2, 4/1: a computation left undone
        return None
    negative = (sign.strip() == "-") != (a < 0)
    return f"{'-' if negative else ''}\\frac{{{abs(a)}}}{{{b}}}", tail or unit


def as_number(text: str) -> str | None:
    """The number ``text`` states, as plain text (``\\$1,250 dollars`` -> ``1,250``); None if it is not a
    single number written out (see ``number_and_unit``)."""
    found = number_and_unit(text)
    return found[0] if found else None


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


def _items(text: str) -> list[str]:
    """``text`` cut at its top-level commas (``2, 3`` -> two items; ``(1, 2)`` and ``[0, 1)`` are one)."""
    items, depth, start = [], 0, 0
    for i, char in enumerate(text):
        depth += (char in "([{") - (char in ")]}")
        if char == "," and depth == 0:
            items.append(text[start:i])
            start = i + 1
    return [*items, text[start:]]


def _is_list(gold: str) -> bool:
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
    text = _unwrap(normalise_text(statement))
    if not text:  # \boxed{\boxed{}}
        return None
    if _HEDGE.search(_NOISE.sub(" ", text)):
        if not _is_list(gold_text):
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
