"""Math reward: find the final answer of a response and check it against the gold with math-verify.

Extraction (``aspo.rewards.math_answer``: which text is the answer, and whether it is one at all -- no
empty boxes, hedges, unevaluated restatements or "last expression" fallbacks) is ours; equivalence
(fractions, roots, intervals, tuples, units, thousands separators, 0.5 vs 1/2 ...) is entirely Hugging
Face ``math-verify``. Gold answers may be a number, a string, a GSM8K solution (``... #### 18``) or a
worked solution whose last ``\\boxed{}`` holds the answer (MATH / Minerva).

Against a numeric gold, answers are numbers written out and are compared by value (``same_number``);
every other gold goes to math-verify, after a test of form: a symbolic answer must be written with the
gold's numerals (``numerals``), so an unsimplified radical or an unexpanded product that math-verify
finds equal (``\\sqrt{12}`` for ``2\\sqrt{3}``) scores 0. Every result carries the answer that earned it
(``ScoreResult.answer``), and ``answer_classes`` groups answers by the same equivalence
(``same_answer``), so maj@k votes exactly as the reward scores.

Every check runs in a worker process with a hard deadline: math-verify bounds its sympy steps with
``signal.alarm``, which cannot interrupt a long C-level computation (``2^{2^{2^{99}}}``) and does not work
outside the main thread; the worker is killed and restarted when the deadline passes (reward 0).
"""

from __future__ import annotations

import atexit
import json
import os
import queue
import select
import subprocess
import sys
import threading
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from aspo.rewards import ScoreResult
from aspo.rewards.math_answer import (  # noqa: F401  (re-exported: the reward's public vocabulary)
    MAX_ANSWER_CHARS,
    admissible,
    answer_statements,
    as_number,
    extract_answer,
    is_list,
    last_boxed,
    normalize_answer,
    number_and_unit,
    number_value,
    numerals,
    same_number,
    strip_reasoning,
)

CHECK_TIMEOUT_S = 10.0  # hard deadline per check (worker killed past it)
_PARSE_TIMEOUT_S = 3  # math-verify's own soft timeouts inside the worker
_VERIFY_TIMEOUT_S = 3
_STARTUP_TIMEOUT_S = 120.0


def gold_answer(answer: Any) -> str:
    """The gold answer as text, from any of the benchmark formats."""
    if isinstance(answer, bool) or answer is None:
        raise ValueError(f"math record needs an 'answer' (number or string), got {answer!r}")
    if isinstance(answer, (int, float)):
        return str(int(answer)) if float(answer).is_integer() else repr(float(answer))
    text = str(answer)
    if "####" in text:
        return text.rsplit("####", 1)[1].strip()
    boxed = last_boxed(text)
    return boxed if boxed is not None else text.strip()


# ---------------------------------------------------------------------------------------------------------
# worker processes (math-verify runs there)


def _parse(text: str, *, search: bool = False) -> list:
    """math-verify's reading of an answer text; ``search`` lets it look for an expression inside the text
    (for gold texts only: a response's answer must parse as a whole)."""
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse

    config = [LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig()]
    parsed = parse("\\boxed{" + text + "}", extraction_config=config, parsing_timeout=_PARSE_TIMEOUT_S)
    if not parsed and search:
        parsed = parse(text, extraction_config=config, parsing_timeout=_PARSE_TIMEOUT_S)
    return parsed


def _verify_texts(gold: str, predictions: list[str]) -> float:
    """Runs in a worker: 1.0 when every prediction equals the gold (math-verify decides equivalence)."""
    from math_verify import verify

    gold_parsed = _parse(gold, search=True)
    if not gold_parsed or not predictions:
        return 0.0
    for prediction in predictions:
        parsed = _parse(prediction)
        if not parsed or not verify(gold_parsed, parsed, timeout_seconds=_VERIFY_TIMEOUT_S):
            return 0.0
    return 1.0


def serve_stdio() -> None:
    """Worker loop: one JSON request per stdin line, one JSON reply per line on the original stdout."""
    import math_verify  # noqa: F401  (import once, before the first request)

    replies = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # stray prints (sympy, warnings) must not corrupt the protocol
    replies.write("ready\n")  # start-up (imports) must not eat into the first check's deadline
    replies.flush()
    for line in sys.stdin:
        reply: list[Any]
        try:
            reply = [_verify_texts(*json.loads(line)), None]
        except Exception as err:  # report, keep serving
            reply = [0.0, f"{type(err).__name__}: {err}"]
        replies.write(json.dumps(reply) + "\n")
        replies.flush()


class _Worker:
    """A ``python -c serve_stdio()`` child (not multiprocessing: that would re-import the caller's
    ``__main__``, breaking scripts without an ``if __name__ == "__main__"`` guard)."""

    def __init__(self) -> None:
        code = "from aspo.rewards.math import serve_stdio; serve_stdio()"
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            bufsize=1,
        )
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], _STARTUP_TIMEOUT_S)
        if not ready or self.proc.stdout.readline() != "ready\n":
            self.close()
            raise RuntimeError(f"the math-verify worker did not start within {_STARTUP_TIMEOUT_S}s")

    def check(self, job: tuple, timeout: float) -> tuple[float, str | None]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(job) + "\n")
        self.proc.stdin.flush()
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            raise TimeoutError
        line = self.proc.stdout.readline()
        if not line:
            raise EOFError
        reward, error = json.loads(line)
        return float(reward), error

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


class _WorkerPool:
    """Idle workers; a worker that misses its deadline (or dies) is killed and replaced on next use."""

    def __init__(self) -> None:
        self._idle: queue.LifoQueue[_Worker] = queue.LifoQueue()
        self._all: list[_Worker] = []
        self._lock = threading.Lock()

    def run(self, job: tuple, timeout: float) -> tuple[float, str | None]:
        try:
            worker = self._idle.get_nowait()
        except queue.Empty:
            worker = _Worker()
            with self._lock:
                self._all.append(worker)
        try:
            result = worker.check(job, timeout)
        except (TimeoutError, EOFError, OSError, ValueError) as err:
            worker.close()
            with self._lock:
                self._all.remove(worker)
            reason = f"timed out after {timeout:g}s" if isinstance(err, TimeoutError) else "worker died"
            return 0.0, f"math check {reason}"
        self._idle.put(worker)
        return result

    def close(self) -> None:
        with self._lock:
            for worker in self._all:
                worker.close()
            self._all.clear()
        self._idle = queue.LifoQueue()


_POOL = _WorkerPool()
atexit.register(_POOL.close)


# ---------------------------------------------------------------------------------------------------------
# public reward


def check_math(response: str, answer: Any, *, timeout: float = CHECK_TIMEOUT_S) -> ScoreResult:
    """Score one response against its gold answer (1.0 / 0.0); ``answer`` is the final answer the
    response committed to (None when it has no admissible one), ``error`` why a check could not run."""
    try:
        gold = gold_answer(answer)
    except ValueError as err:  # the gold answer is unreadable: no verdict on the response
        return ScoreResult(0.0, str(err), verdict=False)
    gold_number = number_and_unit(gold)
    gold_unit = gold_number[1] if gold_number else None
    stated = []
    for statement in answer_statements(response or ""):
        stated.append(admissible(statement, gold, gold_unit))
        if stated[-1] is None:  # one statement is not an answer (hedge, restatement): no need to read on
            return ScoreResult(0.0)
    if not stated:
        return ScoreResult(0.0)
    distinct = list(dict.fromkeys(a for a in stated if a is not None))
    if len(distinct) > 1 and gold_number is None and is_list(gold):  # \boxed{2} and \boxed{3} for "2, 3"
        distinct = [", ".join(distinct)]
    if gold_number is not None:  # numbers written out: compared by value, exactly
        reward, error = float(all(same_number(a, gold_number[0]) for a in distinct)), None
    elif all(normalize_answer(a) == normalize_answer(gold) for a in distinct):
        reward, error = 1.0, None  # the same text: no need for sympy (nor for its soft timeouts under load)
    elif any(numerals(a) != numerals(gold) for a in distinct):
        reward, error = 0.0, None  # not in the gold's form (unsimplified, unexpanded ...): see numerals()
    else:
        reward, error = _POOL.run((gold, distinct), timeout)
    # several differing statements: the answer is theirs only when all are right (one class)
    answer_text = distinct[-1] if reward == 1.0 or len(distinct) == 1 else None
    return ScoreResult(reward, error, answer=answer_text)


def same_answer(a: str, b: str, *, timeout: float = CHECK_TIMEOUT_S) -> bool:
    """The reward's equivalence between two extracted answers: by value for two numbers, else math-verify."""
    if normalize_answer(a) == normalize_answer(b):
        return True
    if number_value(a) is not None and number_value(b) is not None:
        return same_number(a, b)
    if numerals(a) != numerals(b):  # the reward never finds two forms equal (see numerals())
        return False
    return _POOL.run((a, [b]), timeout)[0] == 1.0


def answer_classes(answers: Sequence[str | None], *, timeout: float = CHECK_TIMEOUT_S) -> list[int | None]:
    """Group answers by the reward's equivalence (``same_answer`` with the first answer of each group);
    None for no answer. maj@k votes on these ids."""
    heads: list[str] = []
    out: list[int | None] = []
    for answer in answers:
        if answer is None:
            out.append(None)
            continue
        for index, head in enumerate(heads):
            if same_answer(head, answer, timeout=timeout):
                out.append(index)
                break
        else:
            heads.append(answer)
            out.append(len(heads) - 1)
    return out


def math_reward(prompt: str = "", response: str = "", answer: Any = None, **_: Any) -> float:
    """1.0 if the response's final answer equals the gold ``answer`` (math-verify), else 0.0."""
    return check_math(response, answer).reward


def score_batch(records: Iterable[Mapping[str, Any]], workers: int | None = None) -> list[ScoreResult]:
    """Score many records on a pool of math-verify worker processes (one per core by default)."""
    records = list(records)
    workers = workers or (
        len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    )
    workers = max(1, min(workers or 1, len(records) or 1))

    def one(record: Mapping[str, Any]) -> ScoreResult:
        return check_math(str(record.get("response") or ""), record.get("answer"))

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(one, records))


score_batch.reward_fn = math_reward  # type: ignore[attr-defined]  # how score_records recognises it
