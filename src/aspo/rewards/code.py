"""Code reward: run the candidate program in the sandbox against the record's tests; 1.0 if all pass.

Test formats (a record carries one of them):

  * ``tests = {"inputs": [stdin, ...], "outputs": [stdout, ...]}`` -- LiveCodeBench / CodeContests; outputs
    compared line by line (split on ``\\n`` only), tokens by whitespace, integers exactly and decimals
    within 1e-6;
  * ``tests = {"fn_name": f, "inputs": [[args], ...], "outputs": [ret, ...]}`` -- LeetCode style; returns
    travel out of the sandbox as JSON and are compared here (a candidate object with a rigged ``__eq__``
    cannot fake a pass), integers exactly, floats within 1e-6, never through inf;
  * ``test`` (code defining ``check(candidate)``) + ``entry_point`` -- HumanEval / MBPP. When the code does
    not define ``entry_point`` and the record has a ``prompt`` that does, the response is a completion of
    the prompt (HumanEval's convention) and the two are joined.

``tests`` may also be a JSON string (as LiveCodeBench ships it). Code is taken from the response's last
fenced block tagged ``python`` when there is one, else the whole response (``extract_code``).
"""

from __future__ import annotations

import json
import marshal
import math
import os
import re
import secrets
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from decimal import Decimal, localcontext
from fractions import Fraction
from pathlib import Path
from typing import Any, TypeVar

from aspo.errors import UserError
from aspo.rewards import ScoreResult
from aspo.rewards.sandbox import Limits, SandboxUnavailable, isolation, run_python

_HARNESS = (Path(__file__).parent / "sandbox" / "harness.py").read_text()
_FENCE = re.compile(r"^\s*```[ \t]*([\w+-]*)[ \t]*$")
DEFAULT_CASE_TIMEOUT = 6.0  # seconds per test case (LiveCodeBench's default)
DEFAULT_LIMITS = Limits(cpu_seconds=DEFAULT_CASE_TIMEOUT, wall_seconds=30.0, memory_bytes=1 << 30)


def _fenced_blocks(text: str) -> list[tuple[str, str]]:
    """(language, body) of each ``` block, by lines: a fence opens with ```lang and closes with ```."""
    blocks: list[tuple[str, str]] = []
    lang: str | None = None
    body: list[str] = []
    for line in text.splitlines(keepends=True):
        fence = _FENCE.match(line)
        if lang is None and fence:
            lang, body = fence.group(1).lower(), []
        elif lang is not None and line.strip() == "```":
            blocks.append((lang, "".join(body)))
            lang = None
        elif lang is not None:
            body.append(line)
    return blocks


def extract_code(response: str) -> str:
    """The last fenced block tagged ``python``, ``py`` or ``python3``, else the last untagged fenced block,
    else the response itself."""
    blocks = _fenced_blocks(response)
    for wanted in (("python", "py", "python3"), ("",)):
        found = [body for lang, body in blocks if lang in wanted]
        if found:
            return found[-1]
    return response


_NUMBER = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?\Z")
_INTEGER = re.compile(r"[+-]?[0-9]+\Z")


_Exact = TypeVar("_Exact", Fraction, Decimal)


def _close(got: _Exact, expected: _Exact, tol: _Exact) -> bool:
    """math.isclose(rel_tol=tol, abs_tol=tol) in exact arithmetic: no rounding, no overflow to inf."""
    return abs(got - expected) <= max(tol * max(abs(got), abs(expected)), tol)


def _tokens_match(got: str, expected: str, tol: float) -> bool:
    """Equal text; or equal numbers: exactly when ``expected`` is an integer, within ``tol`` when it is a
    decimal. Compared as decimals (any number of digits: ``float()`` would round a 19-digit product and
    turn 310 digits into inf)."""
    if got == expected:
        return True
    if not (_NUMBER.match(got) and _NUMBER.match(expected)):
        return False
    try:
        g, e = Decimal(got), Decimal(expected)
        if _INTEGER.match(expected):
            return g == e
        with localcontext() as ctx:  # 50 digits: rounding far below any tolerance; out of range: Overflow
            ctx.prec = 50
            return _close(g, e, Decimal(repr(tol)))
    except (ArithmeticError, ValueError):
        return False


def outputs_match(got: str, expected: str, *, tol: float = 1e-6) -> bool:
    """stdout comparison: same non-trailing lines (split on \\n only), same whitespace-separated tokens,
    integers exactly, decimals within tol."""
    got_lines = got.strip().split("\n")
    exp_lines = expected.strip().split("\n")
    if len(got_lines) != len(exp_lines):
        return False
    for g, e in zip(got_lines, exp_lines, strict=True):
        gt, et = g.split(), e.split()
        if len(gt) != len(et) or not all(_tokens_match(x, y, tol) for x, y in zip(gt, et, strict=True)):
            return False
    return True


def returns_match(got: Any, expected: Any, *, tol: float = 1e-6) -> bool:
    """Function-call comparison on JSON values (integers exactly, floats within tol, never through inf);
    APPS's ``[ret]`` wrapping accepted."""
    if _json_equal(got, expected, tol):
        return True
    if isinstance(expected, str):  # LiveCodeBench stores expected returns as JSON text
        try:
            return _json_equal(got, json.loads(expected), tol)
        except ValueError:  # not JSON (or an integer past Python's digit limit)
            return False
    return isinstance(expected, list) and len(expected) == 1 and _json_equal(got, expected[0], tol)


def _json_equal(a: Any, b: Any, tol: float) -> bool:
    """``a`` (the candidate's) equals ``b`` (the expected value)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        if not all(isinstance(x, int) or math.isfinite(x) for x in (a, b)):
            return False  # inf/nan (json.loads turns 1e400 into inf) are never a match
        if isinstance(b, int):
            return a == b  # int == float is exact in Python (no conversion of the int to a float)
        return _close(Fraction(a), Fraction(b), Fraction(tol))
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_json_equal(x, y, tol) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_json_equal(a[k], b[k], tol) for k in a)
    return a == b


def _parse_tests(tests: Any) -> dict:
    if isinstance(tests, str):
        try:
            tests = json.loads(tests)
        except json.JSONDecodeError as err:
            raise UserError(f"'tests' is a string but not JSON: {err}") from err
    if not isinstance(tests, Mapping) or "inputs" not in tests or "outputs" not in tests:
        raise UserError("'tests' must be an object with 'inputs' and 'outputs' (and optionally 'fn_name')")
    if len(tests["inputs"]) != len(tests["outputs"]):
        raise UserError(f"'tests' has {len(tests['inputs'])} inputs but {len(tests['outputs'])} outputs")
    return dict(tests)


def _build_spec(record: Mapping[str, Any], case_timeout: float) -> tuple[dict, dict]:
    """(spec for the harness, what stays out of the candidate's reach: the expected values of tests, kept
    here, or the test code of check mode, which the harness reads only after forking the candidate)."""
    code = extract_code(str(record.get("response") or ""))
    if record.get("tests") is not None:
        tests = _parse_tests(record["tests"])
        if tests.get("fn_name"):
            spec = {"mode": "call", "code": code, "fn_name": tests["fn_name"], "inputs": tests["inputs"]}
        else:
            spec = {"mode": "stdio", "code": code, "inputs": [str(x) for x in tests["inputs"]]}
        return {**spec, "timeout": case_timeout}, tests
    if record.get("test") and record.get("entry_point"):
        entry = str(record["entry_point"])
        prompt = str(record.get("prompt") or "")
        defines = re.compile(rf"^\s*def\s+{re.escape(entry)}\s*\(", re.MULTILINE)
        prompt_is_code = bool(defines.search(prompt))
        if not defines.search(code) and prompt_is_code:
            code = prompt + code
        return {
            "mode": "check",
            "code": code,
            "entry_point": entry,
            "timeout": case_timeout,
        }, {
            # sent after the candidate's process is forked: the test runs in the harness, outside it,
            # beside the prompt's own helpers
            "prelude": prompt if prompt_is_code else "",
            "test": record["test"],
        }
    raise UserError("a code record needs 'tests' {inputs, outputs[, fn_name]} or 'test' + 'entry_point'")


def check_code(
    record: Mapping[str, Any],
    *,
    limits: Limits | None = None,
    backend: str | None = None,
    reuse: bool | None = None,
) -> ScoreResult:
    """Score one record in a fresh sandbox. Reward 1.0 iff every test passes; error says why not.

    A check that could not run (the sandbox or the harness failed before the candidate ran, the host
    refused a fork) is retried once, then returned with ``infra=True``: never a wrong answer."""
    case_timeout = float(record.get("time_limit") or DEFAULT_CASE_TIMEOUT)
    spec, kept = _build_spec(record, case_timeout)
    n_cases = len(spec.get("inputs", [None]))
    # per-process CPU: call/check modes run every case in one process; the harness's per-case wall
    # timeout should fire first
    limits = limits or replace(
        DEFAULT_LIMITS,
        cpu_seconds=min(case_timeout * n_cases + 1, 300.0),
        wall_seconds=min(case_timeout * n_cases + 5.0, 300.0),
    )
    for _attempt in range(2):
        result = _run_check(spec, kept, limits, backend, reuse)
        if not result.infra:
            break
    return result


def _frame(data: bytes) -> bytes:
    return len(data).to_bytes(8, "big") + data


def _run_check(
    spec: dict, kept: dict, limits: Limits, backend: str | None, reuse: bool | None
) -> ScoreResult:
    # the harness reads its stdin frame by frame, unbuffered: the nonce and spec, then (after forking the
    # candidate, which keeps no handle to stdin) the test code of check mode
    nonce = secrets.token_hex(16)
    secret = marshal.dumps(kept if spec["mode"] == "check" else {})
    stdin = _frame(nonce.encode()) + _frame(marshal.dumps(spec)) + _frame(secret)
    try:
        run = run_python(
            {"harness.py": _HARNESS}, "harness.py", stdin=stdin, limits=limits, backend=backend, reuse=reuse
        )
    except OSError as err:  # SandboxUnavailable is not an OSError: it propagates (nothing may run here)
        return ScoreResult(0.0, f"infrastructure: the sandbox could not start: {err}", infra=True)
    # \n only: str.splitlines() also splits at U+2028, U+0085, ..., which a correct program may print
    lines = [
        ln[len(nonce) :] for ln in run.stdout.decode(errors="replace").split("\n") if ln.startswith(nonce)
    ]
    if "+" not in lines and run.stderr != b"sandbox server lost":  # (lost: the candidate killed its server)
        tail = run.stderr.decode(errors="replace").strip().splitlines()[-1:]
        why = "timed out" if run.timed_out else f"exit {run.returncode}"
        return ScoreResult(
            0.0,
            f"infrastructure: the harness did not start ({why}){': ' + tail[0] if tail else ''}",
            infra=True,
        )
    if run.breach:
        return ScoreResult(0.0, run.breach)
    lines = [ln for ln in lines if ln != "+"]
    if not lines:
        tail = run.stderr.decode(errors="replace").strip().splitlines()[-1:]
        return ScoreResult(
            0.0, f"no result from the sandbox (exit {run.returncode}){': ' + tail[0] if tail else ''}"
        )
    result = json.loads(lines[-1])
    if result.get("infra"):
        return ScoreResult(0.0, f"infrastructure: {result['infra']}", infra=True)
    status = result["status"]
    failed = [i for i, s in enumerate(status) if s != "ok"]
    if failed:
        detail = f": {result['error']}" if result.get("error") else ""
        return ScoreResult(0.0, f"test {failed[0]}: {status[failed[0]]}{detail}")
    if spec["mode"] == "check":
        return ScoreResult(1.0)
    tests = kept
    got = result["outputs"] if spec["mode"] == "stdio" else result["returns"]
    match = outputs_match if spec["mode"] == "stdio" else returns_match
    if len(got) != len(tests["outputs"]):
        return ScoreResult(0.0, f"ran {len(got)} of {len(tests['outputs'])} tests")
    expected = tests["outputs"] if spec["mode"] == "call" else [str(e) for e in tests["outputs"]]
    ok = all(match(g, e) for g, e in zip(got, expected, strict=True))
    return ScoreResult(1.0 if ok else 0.0)


def code_reward(
    prompt: str = "",
    response: str = "",
    answer: Any = None,
    *,
    tests: Any = None,
    test: str | None = None,
    entry_point: str | None = None,
    time_limit: float | None = None,
    **_: Any,
) -> float:
    """1.0 if the program in ``response`` passes all tests, else 0.0 (see the module docstring)."""
    record = {
        "prompt": prompt,
        "response": response,
        "tests": tests,
        "test": test,
        "entry_point": entry_point,
        "time_limit": time_limit,
    }
    return check_code(record).reward


code_reward.preflight = isolation  # type: ignore[attr-defined]  # get_reward: refuse at start-up, not mid-run


def default_workers() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def score_batch(records: Iterable[Mapping[str, Any]], workers: int | None = None) -> list[ScoreResult]:
    """Score many records with a bounded pool (one sandbox per record; threads wait on the processes)."""
    records = list(records)

    def one(record: Mapping[str, Any]) -> ScoreResult:
        try:
            return check_code(record)
        except SandboxUnavailable:
            raise
        except Exception as err:  # a malformed record scores 0 with its reason, the batch goes on
            return ScoreResult(0.0, f"{type(err).__name__}: {err}", verdict=False)

    # Each check is ~half sandbox start-up (waiting on the kernel), so a few more threads than cores help.
    workers = workers or 2 * default_workers()
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(records) or 1))) as pool:
        return list(pool.map(one, records))


score_batch.reward_fn = code_reward  # type: ignore[attr-defined]  # how score_records recognises it
