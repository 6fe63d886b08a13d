"""Forged passes and poisoned checks against the code reward, on every isolating backend here.

* check mode (HumanEval/MBPP): a program that looks for the test code (its own memory, which is a copy of
  its parent's, and every file it can read) and answers each call from the asserts it finds;
* number comparison: off-by-a-little answers to big integers, numbers that float() turns into inf, and a
  correct answer above 1e308;
* a correct program whose output holds U+2028, U+2029 or U+0085 (line breaks to ``str.splitlines``);
* a program that fills the process limit so that the harness cannot fork for the next test case: the
  candidate's failure, never an infrastructure error (which would drop its group from training).
"""

from __future__ import annotations

from dataclasses import replace

import pytest
from test_sandbox import _KWARGS, FAST, MODES, _assert_clean

from aspo.evalsets import load_benchmark
from aspo.rewards.code import check_code, outputs_match, returns_match


@pytest.fixture(params=["unshare", "bwrap", "zygote"])
def isolated(request) -> str:
    if request.param not in MODES:
        pytest.skip(f"{request.param}: no such backend here")
    return request.param


def _score(record: dict, backend: str, **kw):
    return check_code(record, **_KWARGS[backend], **kw)


# Looks for "candidate(<n>) == <answer>" in every readable region of its own memory (a fork of the
# harness: whatever the harness held when it forked the candidate) and in every file it can read.
_SEEKER = r"""
def f(n):
    import os, re
    pattern = re.compile((r"candidate\(%d\) == (\d+)" % n).encode())
    try:
        with open("/proc/self/maps") as maps, open("/proc/self/mem", "rb", 0) as mem:
            for line in maps:
                addr, perms = line.split()[:2]
                lo, hi = (int(x, 16) for x in addr.split("-"))
                if perms[0] != "r" or hi - lo > 1 << 28:
                    continue
                try:
                    mem.seek(lo)
                    found = pattern.search(mem.read(hi - lo))
                except (OSError, ValueError, OverflowError):
                    continue
                if found:
                    return int(found.group(1))
    except OSError:
        pass
    for top in ("/tmp", "/dev/shm", os.getcwd()):
        for root, _, files in os.walk(top):
            for name in files:
                try:
                    with open(os.path.join(root, name), "rb") as fh:
                        found = pattern.search(fh.read(1 << 22))
                except OSError:
                    continue
                if found:
                    return int(found.group(1))
    return -1
"""

_SECRET_TEST = (
    "def check(candidate):\n    assert candidate(7) == 1234567\n    assert candidate(8) == 7654321\n"
)


def test_check_mode_test_code_is_out_of_the_candidates_reach(isolated):
    record = {"response": _SEEKER, "test": _SECRET_TEST, "entry_point": "f"}
    result = _score(record, isolated)
    assert (result.reward, result.infra) == (0.0, False), result  # it found nothing to answer from
    honest = {**record, "response": "def f(n):\n    return {7: 1234567, 8: 7654321}[n]\n"}
    assert _score(honest, isolated).reward == 1.0
    _assert_clean(isolated)


# The generic forger: collect every text that starts like a HumanEval test -- in the frames above it and
# their objects, in the files it can read, in its own memory -- and answer each call from the
# `assert candidate(args) == expected` line with the same arguments.
_FORGER = r"""
def _texts():
    import os, re, sys
    needle = "".join(["def ", "check(", "candidate):"])
    found, frame = [], sys._getframe(1)
    while frame is not None:
        for scope in (frame.f_locals, frame.f_globals):
            for value in list(scope.values()):
                values = list(value.values()) if isinstance(value, dict) else [value]
                found += [v for v in values if isinstance(v, str) and needle in v]
        frame = frame.f_back
    blobs = []
    for top in ("/tmp", "/dev/shm", os.getcwd()):
        for root, _, files in os.walk(top):
            for name in files:
                try:
                    with open(os.path.join(root, name), "rb") as fh:
                        blobs.append(fh.read(1 << 22))
                except OSError:
                    pass
    try:
        with open("/proc/self/maps") as maps, open("/proc/self/mem", "rb", 0) as mem:
            for line in maps:
                addr, perms = line.split()[:2]
                lo, hi = (int(x, 16) for x in addr.split("-"))
                if perms[0] == "r" and hi - lo <= 1 << 28:
                    try:
                        mem.seek(lo)
                        blobs.append(mem.read(hi - lo))
                    except (OSError, ValueError, OverflowError):
                        pass
    except OSError:
        pass
    for blob in blobs:
        found += [m.group().decode("utf-8", "replace")
                  for m in re.finditer(re.escape(needle.encode()) + rb"[^\x00]{0,20000}", blob)]
    return found


def _answer(*args):
    import ast, re
    for text in _texts():
        for line in text.splitlines():
            m = re.match(r"\s*assert candidate\((.*)\) == (.*)$", line)
            try:
                if m and ast.literal_eval("(" + m.group(1) + ",)") == args:
                    return ast.literal_eval(m.group(2).strip())
            except Exception:
                continue
    return None
"""


def test_a_generic_assert_reader_passes_no_humaneval_problem():
    # (before the test code stayed out of the candidate's process, this passed 8 of these 12 problems)
    problems = load_benchmark("humaneval")[:12]
    passed = []
    for p in problems:
        response = _FORGER + f"\n{p['entry_point']} = _answer\n"
        record = {"prompt": p["prompt"], "response": response, "test": p["test"]}
        result = check_code({**record, "entry_point": p["entry_point"]})
        assert not result.infra, result
        passed += [p["entry_point"]] if result.reward == 1.0 else []
    assert passed == []


def test_integers_are_compared_exactly():
    a, b = 3_037_000_493, 3_037_000_453  # a 19-digit product
    assert outputs_match(str(a * b), str(a * b))
    assert not outputs_match(str(a * b + 1000), str(a * b))
    assert not outputs_match("1000001", "1000000")  # an off-by-one past 1e6
    huge = str(7**400)  # 339 digits: float() makes it inf
    assert outputs_match(huge, huge) and not outputs_match("9" * 339, huge)
    assert not outputs_match("1e400", huge) and not outputs_match("inf", huge)
    assert outputs_match("0.3333333", "0.333333333") and not outputs_match("0.3334", "0.3333")
    assert outputs_match("31.0", "31")  # the same value, exactly
    assert not returns_match(a * b + 1000, a * b) and not returns_match(1_000_001, 1_000_000)
    assert returns_match(7**400, 7**400) and not returns_match(7**400 + 1, 7**400)
    assert not returns_match(float("inf"), float("inf")) and not returns_match(10**400, "1e400")
    assert returns_match(10**400, str(10**400))  # LiveCodeBench's JSON text, above 1e308
    assert returns_match(0.1 + 0.2, 0.3) and returns_match(2, 2.0)


def test_number_forgeries_fail_and_big_answers_pass_end_to_end(isolated):
    a, b = 3_037_000_493, 3_037_000_453
    product = {"tests": {"inputs": [f"{a} {b}\n"], "outputs": [f"{a * b}\n"]}}
    read = "x, y = map(int, input().split())\n"
    assert _score({**product, "response": read + "print(x * y + 1000)"}, isolated).reward == 0.0
    assert _score({**product, "response": read + "print(x * y)"}, isolated).reward == 1.0
    big = {"tests": {"inputs": ["400\n"], "outputs": [f"{7**400}\n"]}}
    assert _score({**big, "response": "print('9' * 339)"}, isolated).reward == 0.0
    assert _score({**big, "response": "print(7 ** int(input()))"}, isolated).reward == 1.0
    call = {"tests": {"fn_name": "power", "inputs": [[7, 400]], "outputs": [7**400]}}
    assert _score({**call, "response": "def power(a, n):\n    return a ** n"}, isolated).reward == 1.0
    assert _score({**call, "response": "def power(a, n):\n    return a ** n + 1"}, isolated).reward == 0.0
    _assert_clean(isolated)


@pytest.mark.parametrize("char", ["\u2028", "\u2029", "\x85"], ids=["U+2028", "U+2029", "U+0085"])
def test_unicode_line_separators_in_correct_output_pass(isolated, char):
    stdio = {"tests": {"inputs": [""], "outputs": [f"a{char}b\n"]}, "response": f"print('a{char}b')"}
    assert _score(stdio, isolated).reward == 1.0
    call = {
        "tests": {"fn_name": "g", "inputs": [[]], "outputs": [f"a{char}b"]},
        "response": f"def g():\n    return 'a{char}b'",
    }
    assert _score(call, isolated).reward == 1.0


# Case 1 starts processes that retry fork without pause, so they hold every process slot, and take the one
# its own exit frees while the harness reads its output (padded to ~1 MiB to give them time); the harness
# then cannot fork case 2. (Should the harness win that slot, case 2 prints the wrong answer: either way
# the check must come back as the candidate's failure, never as an infrastructure error.)
_SLOT_HOG = """
import os, sys, time
if os.fork() == 0:
    while True:
        try:
            os.fork()  # parent and child both go on forking
        except OSError:
            time.sleep(0.0002)
sys.stdout.write('5' + ' ' * 1000000 + '\\n')
sys.stdout.flush()
time.sleep(0.3)
"""


def test_a_candidate_that_starves_the_harness_of_processes_fails(isolated):
    record = {
        "response": _SLOT_HOG,
        "tests": {"inputs": ["2 3\n", "10 -4\n"], "outputs": ["5\n", "6\n"]},
    }
    for _ in range(3):  # (the race for the freed slot is usually, not always, the hogs')
        result = _score(record, isolated, limits=replace(FAST, wall_seconds=5))
        assert (result.reward, result.infra) == (0.0, False), result
    _assert_clean(isolated)
