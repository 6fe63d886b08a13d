"""The ``code`` lab task's problem family: small stdin/stdout programs, each a template with a reference.

A template is a problem statement with one integer parameter (``n + 7``, ``divisible by 3``, ...), a
seeded input generator, the expected output computed here in Python (``solve``), and a reference program
(``program``) -- two independent statements of the answer, so a test can run every reference against
every generated case in the real sandbox. ``level`` is the template's difficulty: 1 one transformation
of one input, 2 two inputs or a condition, 3 a loop or a list.

The held-out split is by template: ``HELD_OUT`` templates never appear in training, whatever the seed.
"""

from __future__ import annotations

import operator
import random
from collections.abc import Callable
from dataclasses import dataclass
from math import factorial


@dataclass(frozen=True)
class Template:
    name: str
    level: int
    params: tuple[int, ...]  # the parameter's values: one problem each
    statement: Callable[[int], str]  # param -> what the program reads and prints
    make_input: Callable[[random.Random, int], str]  # (rng, param) -> one stdin
    solve: Callable[[str, int], str]  # (stdin, param) -> the expected stdout
    reads: str  # the lines that read the input: the prompt gives them, the reference starts with them
    body: Callable[[int], str]  # param -> the rest of the reference program

    def program(self, param: int) -> str:
        """The reference program."""
        return self.reads + self.body(param)


def _int(rng: random.Random, lo: int = -50, hi: int = 99) -> str:
    return f"{rng.randint(lo, hi)}\n"


def _pair(rng: random.Random) -> str:
    return f"{rng.randint(-30, 60)} {rng.randint(-30, 60)}\n"


def _word(rng: random.Random, letters: str = "abcdefghijklmnopqrstuvwxyz") -> str:
    return "".join(rng.choice(letters) for _ in range(rng.randint(3, 9))) + "\n"


def _text(rng: random.Random) -> str:
    words = ["red", "Blue", "cat", "dog", "Sun", "tree", "42", "go", "Hello", "world"]
    return " ".join(rng.choice(words) for _ in range(rng.randint(1, 4))) + "\n"


def _list(rng: random.Random) -> str:
    values = [rng.randint(-20, 50) for _ in range(rng.randint(1, 7))]
    return f"{len(values)}\n{' '.join(map(str, values))}\n"


def _ints(stdin: str) -> list[int]:
    return [int(x) for x in stdin.split()]


_READ_INT = "n = int(input())\n"
_READ_PAIR = "a, b = map(int, input().split())\n"
_READ_LINE = "line = input()\n"
_READ_WORD = "word = input().strip()\n"
_READ_DIGITS = "digits = input().strip()\n"
_READ_LIST = "m = int(input())\nvalues = list(map(int, input().split()))\n"
_TWO = ("a + b", "a - b", "a * b")
_TWO_FN: tuple[Callable[[int, int], int], ...] = (operator.add, operator.sub, operator.mul)
_TWO_WORDS = ("the sum a + b", "the difference a - b", "the product a * b")
_CASES = ("upper", "lower")
_AGG = ("sum", "max", "min")
_AGG_WORDS = ("sum", "largest value", "smallest value")
_LETTERS = "aeiou"
_PICK = ("max", "min")
_COUNT_WORDS = ("even", "odd", "positive")
_COUNT_TESTS = ("v % 2 == 0", "v % 2 == 1", "v > 0")
_COUNT_FN: tuple[Callable[[int], bool], ...] = (lambda v: v % 2 == 0, lambda v: v % 2 == 1, lambda v: v > 0)

_PAIR_PROMPT = "two integers a and b on one line, separated by a space,"
_LIST_PROMPT = "a count m on the first line and m integers separated by spaces on the second line,"

TRAIN_TEMPLATES: tuple[Template, ...] = (
    Template(
        "add_const",
        1,
        tuple(range(1, 21)),
        lambda k: f"Read an integer n and print n + {k}.",
        lambda rng, k: _int(rng),
        lambda s, k: str(int(s) + k),
        _READ_INT,
        lambda k: f"print(n + {k})\n",
    ),
    Template(
        "times_const",
        1,
        tuple(range(2, 13)),
        lambda k: f"Read an integer n and print n * {k}.",
        lambda rng, k: _int(rng),
        lambda s, k: str(int(s) * k),
        _READ_INT,
        lambda k: f"print(n * {k})\n",
    ),
    Template(
        "square_plus",
        1,
        tuple(range(0, 10)),
        lambda k: f"Read an integer n and print n * n + {k}.",
        lambda rng, k: _int(rng, -30, 30),
        lambda s, k: str(int(s) ** 2 + k),
        _READ_INT,
        lambda k: f"print(n * n + {k})\n",
    ),
    Template(
        "two_ints",
        1,
        (0, 1, 2),
        lambda p: f"Read {_PAIR_PROMPT} and print {_TWO_WORDS[p]}.",
        lambda rng, p: _pair(rng),
        lambda s, p: str(_TWO_FN[p](*_ints(s))),
        _READ_PAIR,
        lambda p: f"print({_TWO[p]})\n",
    ),
    Template(
        "text_case",
        1,
        (0, 1),
        lambda p: f"Read a line of text and print it in {_CASES[p]} case.",
        lambda rng, p: _text(rng),
        lambda s, p: getattr(s.rstrip("\n"), _CASES[p])(),
        _READ_LINE,
        lambda p: f"print(line.{_CASES[p]}())\n",
    ),
    Template(
        "repeat_word",
        1,
        (2, 3, 4, 5),
        lambda k: f"Read a word and print it {k} times in a row, with nothing between the copies.",
        lambda rng, k: _word(rng),
        lambda s, k: s.strip() * k,
        _READ_WORD,
        lambda k: f"print(word * {k})\n",
    ),
    Template(
        "divisible",
        2,
        tuple(range(2, 10)),
        lambda k: f"Read an integer n and print yes if n is divisible by {k}, otherwise print no.",
        lambda rng, k: _int(rng, 0, 200),
        lambda s, k: "yes" if int(s) % k == 0 else "no",
        _READ_INT,
        lambda k: f"print('yes' if n % {k} == 0 else 'no')\n",
    ),
    Template(
        "abs_diff",
        2,
        (0,),
        lambda p: f"Read {_PAIR_PROMPT} and print the absolute difference between a and b.",
        lambda rng, p: _pair(rng),
        lambda s, p: str(abs(_ints(s)[0] - _ints(s)[1])),
        _READ_PAIR,
        lambda p: "print(abs(a - b))\n",
    ),
    Template(
        "count_letter",
        2,
        tuple(range(len(_LETTERS))),
        lambda p: (
            f"Read a word of lowercase letters and print how many times the letter {_LETTERS[p]} "
            "appears in it."
        ),
        lambda rng, p: _word(rng, "bcdlmnrst" + _LETTERS[p] * 3),
        lambda s, p: str(s.count(_LETTERS[p])),
        _READ_WORD,
        lambda p: f"print(word.count('{_LETTERS[p]}'))\n",
    ),
    Template(
        "sum_range",
        3,
        (0, 1, 2, 3, 4),
        lambda k: f"Read an integer n (n >= {k}) and print the sum of all integers from {k} to n.",
        lambda rng, k: _int(rng, k, k + 40),
        lambda s, k: str(sum(range(k, int(s) + 1))),
        _READ_INT,
        lambda k: f"print(sum(range({k}, n + 1)))\n",
    ),
    Template(
        "multiples",
        3,
        (1, 2, 3, 4, 5),
        lambda k: (
            f"Read an integer n (n >= {k}) and print the multiples of {k} from {k} up to n, on one "
            "line, separated by spaces."
        ),
        lambda rng, k: _int(rng, k, k + 30),
        lambda s, k: " ".join(str(v) for v in range(k, int(s) + 1, k)),
        _READ_INT,
        lambda k: f"print(*range({k}, n + 1, {k}))\n",
    ),
    Template(
        "list_agg",
        3,
        (0, 1, 2),
        lambda p: f"Read {_LIST_PROMPT} and print their {_AGG_WORDS[p]}.",
        lambda rng, p: _list(rng),
        lambda s, p: str({"sum": sum, "max": max, "min": min}[_AGG[p]](_ints(s)[1:])),
        _READ_LIST,
        lambda p: f"print({_AGG[p]}(values))\n",
    ),
)

HELD_OUT: tuple[Template, ...] = (
    Template(
        "cube_minus",
        1,
        (1, 2, 3, 4, 5),
        lambda k: f"Read an integer n and print n * n * n - {k}.",
        lambda rng, k: _int(rng, -20, 20),
        lambda s, k: str(int(s) ** 3 - k),
        _READ_INT,
        lambda k: f"print(n * n * n - {k})\n",
    ),
    Template(
        "text_reversed",
        1,
        (0,),
        lambda p: "Read a line of text and print it reversed.",
        lambda rng, p: _text(rng),
        lambda s, p: s.rstrip("\n")[::-1],
        _READ_LINE,
        lambda p: "print(line[::-1])\n",
    ),
    Template(
        "text_length",
        1,
        (0,),
        lambda p: "Read a line of text and print how many characters it has.",
        lambda rng, p: _text(rng),
        lambda s, p: str(len(s.rstrip("\n"))),
        _READ_LINE,
        lambda p: "print(len(line))\n",
    ),
    Template(
        "mod_const",
        1,
        tuple(range(2, 10)),
        lambda k: f"Read a non-negative integer n and print the remainder of n divided by {k}.",
        lambda rng, k: _int(rng, 0, 500),
        lambda s, k: str(int(s) % k),
        _READ_INT,
        lambda k: f"print(n % {k})\n",
    ),
    Template(
        "pick_of_two",
        2,
        (0, 1),
        lambda p: f"Read {_PAIR_PROMPT} and print the {'larger' if p == 0 else 'smaller'} of the two.",
        lambda rng, p: _pair(rng),
        lambda s, p: str((max, min)[p](_ints(s))),
        _READ_PAIR,
        lambda p: f"print({_PICK[p]}(a, b))\n",
    ),
    Template(
        "sum_times",
        2,
        (2, 3, 4, 5),
        lambda k: f"Read {_PAIR_PROMPT} and print (a + b) * {k}.",
        lambda rng, k: _pair(rng),
        lambda s, k: str(sum(_ints(s)) * k),
        _READ_PAIR,
        lambda k: f"print((a + b) * {k})\n",
    ),
    Template(
        "digit_sum",
        2,
        (0,),
        lambda p: "Read a non-negative integer n and print the sum of its digits.",
        lambda rng, p: _int(rng, 0, 99999),
        lambda s, p: str(sum(int(d) for d in s.strip())),
        _READ_DIGITS,
        lambda p: "print(sum(int(d) for d in digits))\n",
    ),
    Template(
        "list_count",
        3,
        (0, 1, 2),
        lambda p: f"Read {_LIST_PROMPT} and print how many of them are {_COUNT_WORDS[p]}.",
        lambda rng, p: _list(rng),
        lambda s, p: str(sum(1 for v in _ints(s)[1:] if _COUNT_FN[p](v))),
        _READ_LIST,
        lambda p: f"print(sum(1 for v in values if {_COUNT_TESTS[p]}))\n",
    ),
    Template(
        "factorial",
        3,
        (0,),
        lambda p: "Read an integer n between 0 and 12 and print n! (the product 1 * 2 * ... * n; 0! is 1).",
        lambda rng, p: _int(rng, 0, 12),
        lambda s, p: str(factorial(int(s))),
        _READ_INT,
        lambda p: "result = 1\nfor i in range(2, n + 1):\n    result *= i\nprint(result)\n",
    ),
)

# The I/O contract every prompt states. The reading lines are given: without them SmolLM2-135M-Instruct
# solved 1.6 % of training problems (16 x 4 samples), with them 12.5 % (docs/getting-started.md).
CONTRACT = (
    "Write a Python 3 program that reads the input with input() (no prompt text) and prints only the "
    "answer, nothing else. Start with:"
)
ANSWER_FORMAT = "Answer with the whole program in one ```python block and nothing else."


def code_prompt(template: Template, param: int, example: str) -> str:
    """The problem, one worked example of its I/O, the contract and the reading lines to start from."""
    return (
        f"{template.statement(param)}\n\nExample input:\n```\n{example}```\nExample output:\n```\n"
        f"{template.solve(example, param)}\n```\n\n{CONTRACT}\n```python\n{template.reads}```\n"
        + ANSWER_FORMAT
    )


TEMPLATES: dict[str, Template] = {t.name: t for t in TRAIN_TEMPLATES + HELD_OUT}
HELD_OUT_NAMES = frozenset(t.name for t in HELD_OUT)
