"""Code reward: HumanEval solutions and stubs, stdin/stdout and function-call tests, reward hacks."""

from __future__ import annotations

import json
import os

import pytest

from aspo.errors import RewardInfraError
from aspo.evalsets import load_benchmark
from aspo.rewards import call_reward, get_reward, score_records
from aspo.rewards.code import (
    check_code,
    code_reward,
    extract_code,
    outputs_match,
    returns_match,
    score_batch,
)
from aspo.rewards.sandbox.zygote import POOL as ZYGOTES

pytestmark = pytest.mark.usefixtures("trusted_code_sandbox")


@pytest.fixture(scope="module")
def humaneval():
    return load_benchmark("humaneval")


def test_humaneval_canonical_solutions_all_pass(humaneval):
    results = score_batch([{**p, "response": p["canonical_solution"]} for p in humaneval])
    failures = [(p["id"], r.error) for p, r in zip(humaneval, results, strict=True) if r.reward != 1.0]
    assert failures == []


def test_humaneval_stub_bodies_fail(humaneval):
    stubs = score_batch([{**p, "response": "    pass\n"} for p in humaneval])
    assert sum(r.reward for r in stubs) == 0.0
    # a whole function in a fenced block (chat-model style) is used as is, and a wrong one fails
    p = humaneval[0]
    full = f"Here:\n```python\n{p['prompt']}{p['canonical_solution']}```\n"
    assert check_code({**p, "response": full}).reward == 1.0
    wrong = f"```python\ndef {p['entry_point']}(numbers, threshold):\n    return True\n```"
    assert check_code({**p, "response": wrong}).reward == 0.0


def test_extract_code_takes_last_python_block():
    text = "```python\nprint(1)\n```\nthen\n```text\nnot code\n```\n```py\nprint(2)\n```\n"
    assert extract_code(text) == "print(2)\n"
    assert extract_code("```\nprint(3)\n```") == "print(3)\n"
    assert extract_code("print(4)") == "print(4)"


STDIO = {"inputs": ["3\n1 2 3\n", "2\n10 20\n"], "outputs": ["6\n2.000000\n", "30\n15.0"]}


@pytest.mark.parametrize(
    "program, expected",
    [
        ("n=int(input()); a=list(map(int,input().split())); print(sum(a)); print(sum(a)/n)", 1.0),
        (
            "n=int(input()); a=list(map(int,input().split())); "
            "print(sum(a), ' '); print('%.7f' % (sum(a)/n))",
            1.0,
        ),
        ("n=int(input()); a=list(map(int,input().split())); print(sum(a)); print(sum(a)/n + 0.01)", 0.0),
        ("n=int(input()); a=list(map(int,input().split())); print(sum(a))", 0.0),
        ("print(6); print(2)", 0.0),
        ("raise SystemExit(3)", 0.0),
    ],
)
def test_stdin_stdout_tests(program, expected):
    response = f"Solution:\n```python\n{program}\n```"
    assert code_reward(response=response, tests=STDIO) == expected


def test_stdio_comparison_rules():
    assert outputs_match("1 2  3 \n\n", "1 2 3")
    assert outputs_match("0.3333333", "0.333333333")
    assert not outputs_match("1 2", "1 2 3")
    assert not outputs_match("YES", "yes")


def test_livecodebench_json_string_tests_and_timeout():
    tests = json.dumps({"inputs": ["5\n"], "outputs": ["120\n"]})
    good = "import math\nprint(math.factorial(int(input())))"
    assert code_reward(response=good, tests=tests) == 1.0
    slow = check_code({"response": "while True: pass", "tests": tests, "time_limit": 1})
    assert slow.reward == 0.0 and "timeout" in slow.error


def test_function_call_tests():
    tests = {
        "fn_name": "twoSum",
        "inputs": [[[2, 7, 11, 15], 9], [[3, 2, 4], 6]],
        "outputs": [[0, 1], [1, 2]],
    }
    leetcode = """
class Solution:
    def twoSum(self, nums, target):
        seen = {}
        for i, x in enumerate(nums):
            if target - x in seen:
                return [seen[target - x], i]
            seen[x] = i
"""
    assert code_reward(response=leetcode, tests=tests) == 1.0
    plain = "def twoSum(nums, target):\n    return [0, 1]"
    assert code_reward(response=plain, tests=tests) == 0.0
    assert (
        code_reward(
            response="def area(r):\n    return 3.14159265 * r * r",
            tests={"fn_name": "area", "inputs": [[1.0]], "outputs": [[3.1415926]]},
        )
        == 1.0
    )  # APPS [ret]
    crash = check_code({"response": "def twoSum(n, t):\n    raise ValueError('boom')", "tests": tests})
    assert crash.reward == 0.0 and "boom" in crash.error
    missing = check_code({"response": "x = 1", "tests": tests})
    assert missing.reward == 0.0 and "twoSum" in missing.error


def test_livecodebench_functional_format():
    # LiveCodeBench: arguments as newline-separated JSON text, expected return as JSON text
    tests = json.dumps({"fn_name": "maxSum", "inputs": ["[1, 2, 3]\n2", "[5]\n1"], "outputs": ["5", "5"]})
    good = "class Solution:\n    def maxSum(self, nums, k):\n        return sum(sorted(nums)[-k:])"
    assert code_reward(response=good, tests=tests) == 1.0
    assert code_reward(response=good.replace("[-k:]", "[:k]"), tests=tests) == 0.0
    # integer stdout expectations (CodeContests rows sometimes hold numbers)
    assert code_reward(response="print(7)", tests={"inputs": [""], "outputs": [7]}) == 1.0


def test_returns_match_rules():
    assert returns_match([1, 2.0000000001], [1, 2.0]) and returns_match([1, 2.0], [1, 2])
    assert not returns_match([1, 2.0000000001], [1, 2])  # an integer answer is exact
    assert not returns_match(True, 1) and not returns_match([1, 2], [2, 1])
    assert returns_match({"a": [1]}, {"a": [1]})


def test_reward_hacks_do_not_pass(humaneval):
    p = humaneval[2]
    # an object equal to everything: compared outside the sandbox as JSON, it is not equal to anything
    rigged = "class Any:\n    def __eq__(self, o): return True\ndef add(a, b):\n    return Any()"
    assert code_reward(response=rigged, tests={"fn_name": "add", "inputs": [[1, 2]], "outputs": [3]}) == 0.0
    # leaving before the tests run, or printing what a pass looks like, is not a pass
    assert (
        code_reward(
            prompt=p["prompt"],
            response="    import sys; sys.exit(0)\n",
            test=p["test"],
            entry_point=p["entry_point"],
        )
        == 0.0
    )
    fake = '    import os; os.write(1, b\'{"status": ["ok"]}\\n\'); os._exit(0)\n'
    assert code_reward(prompt=p["prompt"], response=fake, test=p["test"], entry_point=p["entry_point"]) == 0.0


# Programs that try to forge the harness's "all tests passed" line instead of solving the problem. Each
# reached reward 1.0 when the candidate ran inside the harness process (before the candidate got a process
# of its own, with no handle to the result channel and plain data as its only way to answer).
_FORGED_PASS = '(nonce + \'{"status": ["ok"]}\\n\').encode()'
HARNESS_HACKS = {
    # walk up the stack to the harness's globals: its nonce and result fd
    "stack frames": (
        "    import os, sys\n"
        "    f = sys._getframe(1)\n"
        "    while f and 'NONCE' not in f.f_globals:\n"
        "        f = f.f_back\n"
        "    nonce = f.f_globals['NONCE']\n"
        f"    os.write(f.f_globals['RESULT_FD'], {_FORGED_PASS})\n"
        "    os._exit(0)\n"
    ),
    # find the nonce among live objects, write the line to every open fd
    "live objects": (
        "    import os, gc\n"
        "    nonce = [o['NONCE'] for o in gc.get_objects() if isinstance(o, dict) and 'NONCE' in o][0]\n"
        "    for fd in range(3, 64):\n"
        "        try:\n"
        f"            os.write(fd, {_FORGED_PASS})\n"
        "        except OSError:\n"
        "            pass\n"
        "    os._exit(0)\n"
    ),
    # the sandboxed server's files: the nonce it was given, the output it will read back
    "run files": (
        "    import os\n"
        "    nonce = open('.stdin').read().strip()\n"
        f"    os.write(os.open('.stdout', os.O_WRONLY | os.O_APPEND), {_FORGED_PASS})\n"
        "    os._exit(0)\n"
    ),
    # the harness's descriptors through /proc (the candidate's parent, same uid)
    "parent fds": (
        "    import os, gc\n"
        "    nonce = [o['NONCE'] for o in gc.get_objects() if isinstance(o, dict) and 'NONCE' in o][0]\n"
        "    for fd in os.listdir('/proc/%d/fd' % os.getppid()):\n"
        "        try:\n"
        f"            os.write(os.open('/proc/%d/fd/%s' % (os.getppid(), fd), os.O_WRONLY), {_FORGED_PASS})\n"
        "        except OSError:\n"
        "            pass\n"
        "    os._exit(0)\n"
    ),
    # an answer equal to everything: `assert candidate(x) == y` and `abs(candidate(x) - y) < eps` hold
    "equal to everything": (
        "    class Anything(float):\n"
        "        def __eq__(self, other): return True\n"
        "        def __ne__(self, other): return False\n"
        "        def __lt__(self, other): return True\n"
        "        def __sub__(self, other): return Anything(0)\n"
        "        def __rsub__(self, other): return Anything(0)\n"
        "        def __abs__(self): return 0.0\n"
        "    return Anything(0)\n"
    ),
}


@pytest.mark.parametrize("reuse", [True, False], ids=["sandboxed server", "fresh sandbox"])
@pytest.mark.parametrize("hack", list(HARNESS_HACKS))
def test_forging_the_harness_result_does_not_pass(humaneval, hack, reuse):
    p = humaneval[2]  # truncate_number: its tests compare floats with == and with abs(...) < 1e-6
    record = {"prompt": p["prompt"], "response": HARNESS_HACKS[hack], "test": p["test"]}
    result = check_code({**record, "entry_point": p["entry_point"]}, reuse=reuse)
    assert (result.reward, result.infra) == (0.0, False), result
    # the same record with a real solution passes on the same path: the hacks fail for being hacks
    solved = {**record, "response": "    return number % 1.0\n", "entry_point": p["entry_point"]}
    assert check_code(solved, reuse=reuse).reward == 1.0


def test_answers_cross_as_plain_data():
    counts = "from collections import Counter\ndef tally(s):\n    return Counter(s)\n"
    # a dict subclass is its dict: equal to the expected dict in both function-call and check tests
    call = {"fn_name": "tally", "inputs": [["aab"]], "outputs": [{"a": 2, "b": 1}]}
    assert code_reward(response=counts, tests=call) == 1.0
    check = "def check(candidate):\n    assert candidate('aab') == {'a': 2, 'b': 1}\n"
    assert code_reward(response=counts, test=check, entry_point="tally") == 1.0
    # a generator is not data: an error in the test, not a pass
    lazy = "def tally(s):\n    return (c for c in s)\n"
    result = check_code({"response": lazy, "test": check, "entry_point": "tally"})
    assert result.reward == 0.0 and "plain data" in result.error
    # the test's own helpers come from the prompt, not from the response
    prompt = 'def double(x):\n    return 2 * x\n\n\ndef f(x):\n    """2x + 1"""\n'
    test = "def check(candidate):\n    assert candidate(3) == double(3) + 1\n"
    honest = {"prompt": prompt, "response": "    return 2 * x + 1\n", "test": test, "entry_point": "f"}
    assert check_code(honest).reward == 1.0
    rigged = "def double(x):\n    return 0\n\n\ndef f(x):\n    return 1\n"
    assert check_code({"prompt": prompt, "response": rigged, "test": test, "entry_point": "f"}).reward == 0.0


def test_malformed_records_are_errors_not_crashes():
    results = score_batch(
        [
            {"response": "print(1)"},
            {"response": "print(1)", "tests": {"inputs": ["1"]}},
            {"response": "print(1)", "tests": {"inputs": [""], "outputs": ["1"]}},
        ]
    )
    assert [r.reward for r in results] == [0.0, 0.0, 1.0]
    assert "needs 'tests'" in results[0].error and "'outputs'" in results[1].error
    assert call_reward(code_reward, {"response": "print(1)"}).error is not None


def test_registry_uses_the_batch_scorer():
    assert get_reward("code") is code_reward
    records = [
        {"response": "print(input())", "tests": {"inputs": ["hi\n"], "outputs": ["hi\n"]}},
        {"response": "print('no')", "tests": {"inputs": ["hi\n"], "outputs": ["hi\n"]}},
    ]
    assert [r.reward for r in score_records("code", records)] == [1.0, 0.0]


@pytest.fixture
def broken_interpreter(monkeypatch):
    """The sandbox's interpreter replaced by one that fails before the harness starts, as a host out of
    processes or a broken install would; the fixture's value counts its starts (where the sandbox lets it
    write). In /dev/shm: reachable by the throw-away uid of the unsafe mode as root."""
    import shutil
    import tempfile
    from pathlib import Path

    from aspo.rewards.sandbox import host

    host.isolation()  # chosen (and probed) with the working interpreter: the failure comes mid-run
    tmp_path = Path(tempfile.mkdtemp(dir="/dev/shm" if os.path.isdir("/dev/shm") else None))
    os.chmod(tmp_path, 0o777)
    counter = tmp_path / "starts"
    counter.touch(mode=0o666)
    os.chmod(counter, 0o666)
    fake = tmp_path / "python3"
    fake.write_text(f"#!/bin/sh\necho x >> {counter} 2>/dev/null\necho 'cannot allocate' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("ASPO_SANDBOX_PYTHON", str(fake))
    host.sandbox_python.cache_clear()
    ZYGOTES.close()  # idle sandboxed servers started with the real interpreter: new ones must start
    yield counter
    host.sandbox_python.cache_clear()
    shutil.rmtree(tmp_path)


def test_a_check_that_could_not_run_is_retried_then_counted_not_wrong(broken_interpreter, monkeypatch):
    from aspo.rewards.sandbox import host, isolation

    record = {"response": "print(input())", "tests": {"inputs": ["hi\n"], "outputs": ["hi\n"]}}
    result = check_code(record, reuse=False)
    assert (result.reward, result.infra) == (0.0, True)
    assert result.error.startswith("infrastructure: the harness did not start")
    # tried and retried; bwrap's private /dev hides the fake interpreter from it (it then fails to exec)
    backend = isolation().backend
    assert ("bwrap: execvp" if backend == "bwrap" else "cannot allocate") in result.error
    assert broken_interpreter.read_text().count("x") == (0 if backend == "bwrap" else 2)
    # an honest wrong answer is still a plain 0, not an infrastructure error
    monkeypatch.delenv("ASPO_SANDBOX_PYTHON")
    host.sandbox_python.cache_clear()
    wrong = check_code(dict(record, response="print('no')"), reuse=False)
    assert (wrong.reward, wrong.infra, wrong.error) == (0.0, False, None)


def test_a_batch_that_mostly_could_not_run_stops(broken_interpreter):
    records = [{"response": "print(1)", "tests": {"inputs": [""], "outputs": ["1"]}}] * 3
    with pytest.raises(RewardInfraError, match="3 of 3 reward checks could not run"):
        score_records("code", records, workers=1)
    results = score_records("code", records, workers=1, stop_on_infra=False)
    assert all(r.infra and r.reward == 0.0 for r in results)
