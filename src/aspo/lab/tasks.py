"""Synthetic verifiable tasks for the tiny lab: seeded generators, strict verifiers, demonstrations.

Each problem belongs to exactly one split, decided by a stable hash of its identity (``Task.key``), so
held-out problems can never appear in training whatever seeds or sizes are asked for. A prompt ends where
the response starts; a demonstration is the response text without any end-of-sequence marker.

- ``arithmetic``: ``347+285=`` -> ``7+5+0=12,4+8+1=13,3+2+1=06|236``. One scratchpad column per digit,
  least-significant first (``a+b+carry=two-digit sum``), then ``|`` and the sum written least-significant
  digit first (632 -> ``236``), the order in which a left-to-right model can compute it.
- ``countdown``: ``3,5,7,2>44:`` -> ``(3*5+7)*2``. Any expression over ``+ - * /`` and parentheses that uses
  each given number exactly once (as a multiset) and equals the target scores 1.
- ``add``: ``What is 21 + 10?`` -> a short answer stating ``31``, scored by the strict ``number`` reward. A
  task for pretrained chat models (``model=smollm2-135m-instruct``), not for the lab's character model.
- ``code``: a small stdin/stdout problem (``Read an integer n and print n * 7.``, an example, the I/O
  contract) -> a Python program, run against generated tests by the sandboxed ``code`` reward. Held out
  by template (``aspo.lab.code_problems.HELD_OUT``), not by hash. For pretrained chat models.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from aspo.errors import UserError
from aspo.lab.code_problems import HELD_OUT_NAMES, TEMPLATES, code_prompt
from aspo.lab.expr import ExprError, evaluate

SPLITS = ("train", "test")


def _split_of(key: str, test_fraction: float) -> str:
    digest = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big")
    return "test" if digest / 2**64 < test_fraction else "train"


@dataclass(frozen=True)
class Task:
    """Base class: subclasses define ``sample``, ``key``, ``verify`` and ``demonstration``."""

    name: str = "task"
    max_new_tokens: int = 48
    test_fraction: float = 0.2
    reward: str = ""  # the registered reward that scores it ("": the task's own name)
    lab_model: bool = True  # the lab's character model can learn it (has demonstrations in its alphabet)

    def sample(self, rng: random.Random) -> dict[str, Any]:  # one random problem from either split
        raise NotImplementedError

    def key(self, record: dict[str, Any]) -> str:  # the problem's identity (decides its split)
        raise NotImplementedError

    def verify(self, prompt: str, response: str, answer: Any, **fields: Any) -> float:
        raise NotImplementedError

    def demonstration(self, record: dict[str, Any]) -> str:
        raise NotImplementedError

    def flawed_demonstration(self, record: dict[str, Any], rng: random.Random) -> str:
        """A well-formed demonstration with one slip that makes it wrong (an imperfect teacher's sample)."""
        raise NotImplementedError

    def split_of(self, record: dict[str, Any]) -> str:
        return _split_of(f"{self.name}:{self.key(record)}", self.test_fraction)

    def stream(self, split: str, seed: int) -> Iterator[dict[str, Any]]:
        """Endless problems from ``split`` (repeats possible), reproducible from ``seed``."""
        if split not in SPLITS:
            raise UserError(f"split must be one of {SPLITS}, got {split!r}")
        rng = random.Random(f"{self.name}/{split}/{seed}")
        while True:
            record = self.sample(rng)
            if self.split_of(record) == split:
                yield record

    def make_split(self, split: str, n: int, seed: int = 0) -> list[dict[str, Any]]:
        """``n`` distinct problems of ``split`` ("train" or "test"), reproducible from ``seed``."""
        out, seen = [], set()
        for tries, record in enumerate(self.stream(split, seed)):
            if len(out) == n:
                break
            if tries > 50 * n + 1000:
                raise UserError(f"task {self.name!r} has too few distinct {split} problems for n={n}")
            key = self.key(record)
            if key not in seen:
                seen.add(key)
                out.append(record)
        return out


# ---------------------------------------------------------------- arithmetic

_ARITH_PROMPT = re.compile(r"(\d+)\+(\d+)=")
_ARITH_RESPONSE = re.compile(r"(?:\d\+\d\+\d=\d\d,)*\d\+\d\+\d=\d\d\|(\d+)")


@dataclass(frozen=True)
class ArithmeticTask(Task):
    """Addition of two ``digits``-digit numbers with a column-by-column scratchpad."""

    name: str = "arithmetic"
    digits: int = 3
    max_new_tokens: int = 40

    def sample(self, rng: random.Random) -> dict[str, Any]:
        lo, hi = 10 ** (self.digits - 1), 10**self.digits - 1
        a, b = rng.randint(lo, hi), rng.randint(lo, hi)
        return {"prompt": f"{a}+{b}=", "answer": str(a + b), "a": a, "b": b}

    def key(self, record: dict[str, Any]) -> str:
        return record["prompt"]

    def demonstration(self, record: dict[str, Any]) -> str:
        return self._worked(record["a"], record["b"])

    def flawed_demonstration(self, record: dict[str, Any], rng: random.Random) -> str:
        """One column's sum is off by one; later carries and the answer follow the wrong sum."""
        return self._worked(record["a"], record["b"], slip=(rng.randrange(self.digits), rng.choice((-1, 1))))

    @staticmethod
    def _worked(a: int, b: int, slip: tuple[int, int] | None = None) -> str:
        digits_a, digits_b = str(a)[::-1], str(b)[::-1]
        width = max(len(digits_a), len(digits_b))
        columns, answer, carry = [], [], 0
        for i, (da, db) in enumerate(
            zip(digits_a.ljust(width, "0"), digits_b.ljust(width, "0"), strict=True)
        ):
            total = int(da) + int(db) + carry
            if slip is not None and slip[0] == i:
                total = total + slip[1] if 0 <= total + slip[1] <= 19 else total - slip[1]
            columns.append(f"{da}+{db}+{carry}={total:02d}")
            answer.append(str(total % 10))
            carry = total // 10
        if carry:
            answer.append("1")
        return ",".join(columns) + "|" + "".join(answer)

    def verify(self, prompt: str, response: str, answer: Any, **fields: Any) -> float:
        return arithmetic_reward(prompt, response, answer)


def arithmetic_reward(prompt: str, response: str, answer: Any, **fields: Any) -> float:
    """1.0 iff ``response`` is scratchpad columns, ``|``, then exactly ``answer`` least-significant first."""
    if not isinstance(response, str) or answer is None:
        return 0.0
    match = _ARITH_RESPONSE.fullmatch(response)
    if match is None:
        return 0.0
    return float(match.group(1)[::-1] == str(answer).strip())


# ---------------------------------------------------------------- countdown

_CD_PROMPT = re.compile(r"(\d+(?:,\d+)*)>(\d+):")


@dataclass(frozen=True)
class CountdownTask(Task):
    """Reach ``target`` from ``count`` numbers in 1..``max_number``; each number used exactly once."""

    name: str = "countdown"
    count: int = 4
    max_number: int = 9
    max_target: int = 99
    max_new_tokens: int = 24

    def sample(self, rng: random.Random) -> dict[str, Any]:
        while True:
            numbers = [rng.randint(1, self.max_number) for _ in range(self.count)]
            solution, value = _random_expression(numbers, rng)
            if value.denominator == 1 and 0 < value <= self.max_target:
                target = int(value)
                prompt = ",".join(map(str, numbers)) + f">{target}:"
                return {
                    "prompt": prompt,
                    "answer": str(target),
                    "numbers": numbers,
                    "target": target,
                    "solution": solution,
                }

    def key(self, record: dict[str, Any]) -> str:
        # order of the given numbers does not make a new problem
        return ",".join(map(str, sorted(record["numbers"]))) + f">{record['target']}"

    def demonstration(self, record: dict[str, Any]) -> str:
        return record.get("solution") or solve_countdown(record["numbers"], record["target"])

    def flawed_demonstration(self, record: dict[str, Any], rng: random.Random) -> str:
        """The demonstration with one operator changed so that it misses the target (or a number changed)."""
        text = self.demonstration(record)
        spots = [i for i, ch in enumerate(text) if ch in "+-*/"]
        rng.shuffle(spots)
        for i in spots:
            for op in rng.sample("+-*/", 4):
                candidate = text[:i] + op + text[i + 1 :]
                if countdown_reward(record["prompt"], candidate, record["answer"], record["numbers"]) == 0.0:
                    return candidate
        literal = re.search(r"\d+", text)
        assert literal is not None
        other = int(literal.group()) % self.max_number + 1
        return text[: literal.start()] + str(other) + text[literal.end() :]

    def verify(self, prompt: str, response: str, answer: Any, **fields: Any) -> float:
        return countdown_reward(prompt, response, answer, **fields)


def _random_expression(numbers: list[int], rng: random.Random) -> tuple[str, Fraction]:
    """A random expression using every number once: shuffle, then fold left with random operators."""
    order = numbers[:]
    rng.shuffle(order)
    text, value, prec = str(order[0]), Fraction(order[0]), 3  # prec: 1 for +/-, 2 for * /, 3 atom
    for n in order[1:]:
        op = rng.choice("+-*/")
        if op == "/" and (n == 0 or (value / n).denominator != 1):
            op = rng.choice("+-*")
        if op in "*/" and prec == 1:
            text = f"({text})"
        text, value, prec = f"{text}{op}{n}", _apply(op, value, Fraction(n)), 1 if op in "+-" else 2
    return text, value


def _apply(op: str, x: Fraction, y: Fraction) -> Fraction:
    return x + y if op == "+" else x - y if op == "-" else x * y if op == "*" else x / y


def solve_countdown(numbers: list[int], target: int) -> str:
    """Some expression reaching ``target`` using every number exactly once (left folds only); '' if none."""
    for order in itertools.permutations(numbers):
        for ops in itertools.product("+-*/", repeat=len(numbers) - 1):
            text, value, prec, ok = str(order[0]), Fraction(order[0]), 3, True
            for op, n in zip(ops, order[1:], strict=True):
                if op == "/" and n == 0:
                    ok = False
                    break
                if op in "*/" and prec == 1:
                    text = f"({text})"
                text, value, prec = f"{text}{op}{n}", _apply(op, value, Fraction(n)), 1 if op in "+-" else 2
            if ok and value == target:
                return text
    return ""


def countdown_reward(prompt: str, response: str, answer: Any, numbers: Any = None, **fields: Any) -> float:
    """1.0 iff ``response`` is an expression equal to the target using each given number exactly once.

    The numbers come from the ``numbers`` field when present, else from the prompt (``3,5,7>22:``).
    """
    if not isinstance(response, str) or answer is None:
        return 0.0
    if numbers is None:
        match = _CD_PROMPT.search(prompt or "")
        if match is None:
            return 0.0
        numbers = [int(x) for x in match.group(1).split(",")]
    try:
        target = int(str(answer).strip())
        value, used = evaluate(response)
    except (ExprError, ValueError):
        return 0.0
    return float(sorted(used) == sorted(int(n) for n in numbers) and value == target)


# ---------------------------------------------------------------- add (short answer, pretrained models)


@dataclass(frozen=True)
class AdditionQuestionTask(Task):
    """``What is a + b?`` with a, b uniform in [``low``, ``high``]; the answer is the sum, as one number.

    There are m(m+1)/2 problems up to order, m = high - low + 1 (435 for 2..30); about 20 % are held out,
    both orders of a pair on the same side.
    """

    name: str = "add"
    low: int = 2
    high: int = 30
    max_new_tokens: int = 64
    reward: str = "number"
    lab_model: bool = False

    def sample(self, rng: random.Random) -> dict[str, Any]:
        a, b = rng.randint(self.low, self.high), rng.randint(self.low, self.high)
        return {"prompt": f"What is {a} + {b}?", "answer": str(a + b), "a": a, "b": b}

    def key(self, record: dict[str, Any]) -> str:  # a + b and b + a are one problem: never split apart
        return "+".join(map(str, sorted((record["a"], record["b"]))))

    def demonstration(self, record: dict[str, Any]) -> str:
        return str(record["a"] + record["b"])

    def verify(self, prompt: str, response: str, answer: Any, **fields: Any) -> float:
        from aspo.rewards.number import number_reward

        return number_reward(prompt, response, answer)


# ---------------------------------------------------------------- code (stdin/stdout programs)


@dataclass(frozen=True)
class CodeTask(Task):
    """Small stdin/stdout programs (``aspo.lab.code_problems``), each with ``cases`` generated tests, scored
    by the sandboxed ``code`` reward. Held out by template: ``HELD_OUT`` templates are never trained on.
    ``level`` (1-3) keeps the templates up to that difficulty; a problem is a (template, parameter) pair."""

    name: str = "code"
    level: int = 3
    cases: int = 5
    max_new_tokens: int = 128
    reward: str = "code"
    lab_model: bool = False

    def __post_init__(self) -> None:
        if self.level not in (1, 2, 3) or self.cases < 1:
            raise UserError(
                f"task 'code': level must be 1, 2 or 3 and cases >= 1 (got {self.level}, {self.cases})"
            )

    def sample(self, rng: random.Random) -> dict[str, Any]:
        template = rng.choice([t for t in TEMPLATES.values() if t.level <= self.level])
        param = rng.choice(template.params)
        inputs = [template.make_input(rng, param) for _ in range(self.cases + 1)]
        example, inputs = inputs[0], inputs[1:]
        return {
            "prompt": code_prompt(template, param, example),
            "answer": template.program(param),  # the reference program (the code reward runs only tests)
            "tests": {"inputs": inputs, "outputs": [template.solve(x, param) for x in inputs]},
            "template": template.name,
            "param": param,
        }

    def key(self, record: dict[str, Any]) -> str:
        return f"{record['template']}:{record['param']}"

    def split_of(self, record: dict[str, Any]) -> str:
        return "test" if record["template"] in HELD_OUT_NAMES else "train"

    def demonstration(self, record: dict[str, Any]) -> str:
        return f"```python\n{record['answer']}```"

    def verify(self, prompt: str, response: str, answer: Any, **fields: Any) -> float:
        from aspo.rewards.code import code_reward

        return code_reward(prompt, response, answer, tests=fields.get("tests"))


TASKS: dict[str, type[Task]] = {
    "arithmetic": ArithmeticTask,
    "countdown": CountdownTask,
    "add": AdditionQuestionTask,
    "code": CodeTask,
}


def get_task(name: str, **params: Any) -> Task:
    """The lab task ``name`` (``arithmetic``, ``countdown``, ``add``, ``code``), with optional ``params``."""
    if name not in TASKS:
        raise UserError(f"unknown lab task {name!r}; valid: {', '.join(sorted(TASKS))}")
    try:
        task = TASKS[name](**params)
    except TypeError as err:
        raise UserError(f"bad parameters for lab task {name!r}: {err}") from err
    return task if task.reward else dataclasses.replace(task, reward=name)
