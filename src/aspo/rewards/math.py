"""Math reward: extract the final answer of a response and check it against the gold with math-verify.

Extraction (ours) decides *which* text is the answer; equivalence (fractions, roots, intervals, tuples,
units, thousands separators, 0.5 vs 1/2 ...) is entirely Hugging Face ``math-verify``.

* Reasoning models: a response that opens ``<think>`` counts only after its last ``</think>``; one that
  never closes it has no answer (reward 0). A response that only *closes* a think block (templates that put
  ``<think>`` in the prompt) also counts after ``</think>``.
* The answer is the last ``\\boxed{...}`` / ``\\fbox{...}``; else GSM8K's ``#### N``; else the last "the
  (final) answer is ..."; else math-verify's own extraction from the final text.
* Gold answers may be a number, a string, a GSM8K solution (``... #### 18``) or a worked solution whose last
  ``\\boxed{}`` holds the answer (MATH / Minerva).

Every check runs in a worker process with a hard deadline: math-verify bounds its sympy steps with
``signal.alarm``, which cannot interrupt a long C-level computation (``2^{2^{2^{99}}}``) and does not work
outside the main thread; the worker is killed and restarted when the deadline passes (reward 0).
"""

from __future__ import annotations

import atexit
import json
import os
import queue
import re
import select
import subprocess
import sys
import threading
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from aspo.rewards import ScoreResult

CHECK_TIMEOUT_S = 10.0  # hard deadline per check (worker killed past it)
_PARSE_TIMEOUT_S = 3  # math-verify's own soft timeouts inside the worker
_VERIFY_TIMEOUT_S = 3
_STARTUP_TIMEOUT_S = 120.0
_MAX_ANSWER_CHARS = 1000  # an answer longer than this is not an answer

_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_BOXED_BARE = re.compile(r"\\boxed +([^\s$]+)")
_HASHES = re.compile(r"####\s*(.+)")
_ANSWER_IS = re.compile(r"answer\s+is\s*[:：]?\s*(.+?)(?:\.\s|\.?$|\n)", re.IGNORECASE)


def strip_reasoning(response: str) -> str | None:
    """The part of a response that may hold the answer; None when a ``<think>`` is never closed."""
    if "</think>" in response:
        return response.rsplit("</think>", 1)[1]
    if response.lstrip().startswith("<think>"):
        return None
    return response


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (balanced braces) or ``\\boxed x``; None if there is none."""
    starts = [m.end() for m in _BOXED.finditer(text)]
    for start in reversed(starts):
        depth, i = 1, start
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        if depth == 0:
            return text[start:i - 1].strip()
    bare = _BOXED_BARE.findall(text)
    return bare[-1] if bare else None


def extract_answer(response: str) -> str | None:
    """The response's final answer as text (what maj@k votes on), or None when there is no explicit one."""
    text = strip_reasoning(response)
    if text is None:
        return None
    answer = last_boxed(text)
    if answer is None:
        hashes = _HASHES.findall(text)
        answer = hashes[-1] if hashes else None
    if answer is None:
        phrased = _ANSWER_IS.findall(text)
        answer = phrased[-1].strip().strip("$").strip() if phrased else None
    if answer is None or not answer.strip() or len(answer) > _MAX_ANSWER_CHARS:
        return None
    return answer.strip()


def normalize_answer(answer: str | None) -> str | None:
    """A light canonical form for voting (spacing, ``\\left``, trailing ``.0``); not an equivalence check."""
    if answer is None:
        return None
    text = re.sub(r"\\left|\\right|\\!|\\,|\s+|\$", "", answer)
    text = re.sub(r"(?<=\d),(?=\d{3}\b)", "", text)
    return re.sub(r"^(-?\d+)\.0+$", r"\1", text)


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


def _verify_texts(prediction: str, gold: str, fallback_text: str | None) -> float:
    """Runs in a worker: parse both with math-verify and compare (math-verify decides equivalence)."""
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

    config = [LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig()]
    gold_parsed = parse("\\boxed{" + gold + "}", extraction_config=config, parsing_timeout=_PARSE_TIMEOUT_S)
    if not gold_parsed:
        gold_parsed = parse(gold, extraction_config=config, parsing_timeout=_PARSE_TIMEOUT_S)
    if prediction:
        pred_parsed = parse("\\boxed{" + prediction + "}", extraction_config=config,
                            parsing_timeout=_PARSE_TIMEOUT_S)
    else:  # no explicit answer: let math-verify find the last expression of the final text
        pred_parsed = parse(fallback_text or "", extraction_config=config, parsing_timeout=_PARSE_TIMEOUT_S)
    if not gold_parsed or not pred_parsed:
        return 0.0
    return float(verify(gold_parsed, pred_parsed, timeout_seconds=_VERIFY_TIMEOUT_S))


def serve_stdio() -> None:
    """Worker loop: one JSON request per stdin line, one JSON reply per line on the original stdout."""
    import math_verify  # noqa: F401  (import once, before the first request)

    replies = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # stray prints (sympy, warnings) must not corrupt the protocol
    replies.write("ready\n")  # start-up (imports) must not eat into the first check's deadline
    replies.flush()
    for line in sys.stdin:
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
        self.proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, bufsize=1)
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
    """Score one response against its gold answer (1.0 / 0.0); error says why a check could not run."""
    try:
        gold = gold_answer(answer)
    except ValueError as err:
        return ScoreResult(0.0, str(err))
    final_text = strip_reasoning(response or "")
    if final_text is None:
        return ScoreResult(0.0)  # unfinished reasoning: no answer
    prediction = extract_answer(response) or ""
    if not prediction and not final_text.strip():
        return ScoreResult(0.0)
    fallback = None if prediction else final_text[-_MAX_ANSWER_CHARS:]
    reward, error = _POOL.run((prediction, gold, fallback), timeout)
    return ScoreResult(reward, error)


def math_reward(prompt: str = "", response: str = "", answer: Any = None, **_: Any) -> float:
    """1.0 if the response's final answer equals the gold ``answer`` (math-verify), else 0.0."""
    return check_math(response, answer).reward


def score_batch(records: Iterable[Mapping[str, Any]], workers: int | None = None) -> list[ScoreResult]:
    """Score many records on a pool of math-verify worker processes (one per core by default)."""
    records = list(records)
    workers = workers or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count())
    workers = max(1, min(workers or 1, len(records) or 1))

    def one(record: Mapping[str, Any]) -> ScoreResult:
        return check_math(str(record.get("response") or ""), record.get("answer"))

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(one, records))


score_batch.reward_fn = math_reward  # type: ignore[attr-defined]  # how score_records recognises it
