"""A small, safe arithmetic-expression evaluator for Countdown answers (never ``eval``).

Grammar (no unary minus, no exponent, integers only)::

    expr   := term (('+' | '-') term)*
    term   := factor (('*' | '/') factor)*
    factor := INTEGER | '(' expr ')'

Values are exact ``Fraction``s, so ``7/2*2`` is 7 and division by zero is an error, not a float.
Length, literal size and nesting depth are bounded, so hostile text cannot exhaust time or memory.
"""

from __future__ import annotations

import re
from fractions import Fraction

MAX_CHARS = 64
MAX_DEPTH = 8
MAX_LITERAL_DIGITS = 4
_TOKEN = re.compile(r"\d+|[-+*/()]")


class ExprError(ValueError):
    """The text is not a well-formed, finite expression in the grammar above."""


def tokenize(text: str) -> list[str]:
    """Split ``text`` into integer literals and operator/parenthesis tokens; spaces are not allowed."""
    if len(text) > MAX_CHARS:
        raise ExprError(f"expression longer than {MAX_CHARS} characters")
    tokens = _TOKEN.findall(text)
    if "".join(tokens) != text:
        raise ExprError("unexpected character")
    for token in tokens:
        if token.isdigit() and (len(token) > MAX_LITERAL_DIGITS or (len(token) > 1 and token[0] == "0")):
            raise ExprError(f"bad integer literal {token!r}")
    return tokens


def evaluate(text: str) -> tuple[Fraction, list[int]]:
    """Value of ``text`` and the integer literals it uses, in order. Raises ``ExprError`` if malformed."""
    tokens = tokenize(text)
    if not tokens:
        raise ExprError("empty expression")
    parser = _Parser(tokens)
    value = parser.expr(0)
    if parser.pos != len(tokens):
        raise ExprError(f"unexpected {tokens[parser.pos]!r}")
    return value, parser.literals


class _Parser:
    def __init__(self, tokens: list[str]) -> None:
        self.tokens, self.pos, self.literals = tokens, 0, []

    def _peek(self) -> str | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def expr(self, depth: int) -> Fraction:
        value = self.term(depth)
        while self._peek() in ("+", "-"):
            op = self.tokens[self.pos]
            self.pos += 1
            rhs = self.term(depth)
            value = value + rhs if op == "+" else value - rhs
        return value

    def term(self, depth: int) -> Fraction:
        value = self.factor(depth)
        while self._peek() in ("*", "/"):
            op = self.tokens[self.pos]
            self.pos += 1
            rhs = self.factor(depth)
            if op == "*":
                value = value * rhs
            elif rhs == 0:
                raise ExprError("division by zero")
            else:
                value = value / rhs
        return value

    def factor(self, depth: int) -> Fraction:
        token = self._peek()
        if token is None:
            raise ExprError("expression ends early")
        self.pos += 1
        if token == "(":
            if depth >= MAX_DEPTH:
                raise ExprError(f"parentheses nested deeper than {MAX_DEPTH}")
            value = self.expr(depth + 1)
            if self._peek() != ")":
                raise ExprError("missing ')'")
            self.pos += 1
            return value
        if token.isdigit():
            self.literals.append(int(token))
            return Fraction(int(token))
        raise ExprError(f"unexpected {token!r}")
