"""A number written out as an answer: its value, its unit, and whether it is a number at all.

``number_and_unit`` is the math reward's reading of an answer against a numeric gold (see
``aspo.rewards.math_answer`` for the rules); ``number_value`` / ``same_number`` compare two such numbers
exactly. Units come only from an explicit list (``_UNITS``): a letter or a symbol after a number that is
not a listed unit (``4\\pi``, ``2x``, ``3i``) makes the text not a number, so it is never dropped.
"""

from __future__ import annotations

import math
import re
from fractions import Fraction

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
NOISE = re.compile(r"\\left|\\right|\\displaystyle|\\[!,;:]|\\ |~|\$|\\[()\[\]]|\*\*|__|`")

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


def normalise_text(text: str) -> str:
    """Typography that does not change an answer: ``−`` (U+2212) for ``-``, ``{,}`` for ``,``,
    ``\\dfrac`` / ``\\tfrac`` for ``\\frac``."""
    text = text.replace("−", "-").replace("{,}", ",")
    return re.sub(r"\\[dt]frac", r"\\frac", text)


def unwrap(text: str) -> str:
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
    text = unwrap(normalise_text(text))
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
    text = NOISE.sub(" ", text)
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
