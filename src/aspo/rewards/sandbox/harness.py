# ruff: noqa: UP031  (runs on whatever python3 the sandbox has: plain %-formatting)
"""Test runner executed INSIDE the sandbox (stdlib only; never imported by the scorer).

Reads ``spec.marshal`` (written by the scorer) next to it and a one-line nonce on stdin, writes
``<nonce>+`` (started) and, after running the candidate, one result line ``<nonce><json>`` to the original
stdout. The candidate's own output goes elsewhere, and it never sees
the expected outputs of stdin/stdout or function-call tests: those are compared by the scorer outside.
It avoids importing ``json`` (and with it ``re``), which would double the start-up time of a check.

Modes:
  stdio  {"code", "inputs": [str], "timeout"}: run the program once per input in a forked child;
         result {"outputs": [str], "status": [ok|error|timeout]}; stops after the first error/timeout.
  call   {"code", "fn_name", "inputs": [[args]], "timeout"}: call fn (or Solution().fn) per argument list;
         result {"returns": [json], "status": [...]}.
  check  {"code", "test", "entry_point", "timeout"}: exec code + test, then check(entry_point);
         result {"status": ["ok"]} when check returns.
"""

import _signal as signal  # the C module: `signal` imports enum, a third of a check's start-up
import marshal
import os
import select
import sys

RESULT_FD = os.dup(1)
NONCE = sys.stdin.readline().strip()
os.write(
    RESULT_FD, (NONCE + "+\n").encode()
)  # "started": failures before this are the host's, not the candidate's


class _Timeout(BaseException):  # BaseException: candidate `except Exception` must not swallow it
    pass


def _on_alarm(signum, frame):
    raise _Timeout()


class _Raw(str):
    """Already-encoded JSON text."""


def _json_str(text):
    out = []
    for ch in text:
        if ch in '"\\' or ord(ch) < 0x20 or 0xD800 <= ord(ch) <= 0xDFFF:
            out.append("\\u%04x" % ord(ch))
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _to_json(value, depth=0):
    """JSON text for plain values; anything else becomes {"__repr__": ...} (never trusted as equal)."""
    if depth > 100:
        raise ValueError("value nested too deeply")
    if type(value) is _Raw:
        return value
    if value is None or value is True or value is False:
        return {None: "null", True: "true", False: "false"}[value]
    if type(value) is int:
        return str(value)
    if type(value) is float:
        return repr(value) if value == value and abs(value) != float("inf") else '{"__repr__": "%r"}' % value
    if type(value) is str:
        return _json_str(value)
    if type(value) in (list, tuple):
        return "[" + ",".join(_to_json(v, depth + 1) for v in value) + "]"
    if type(value) in (set, frozenset):
        return "[" + ",".join(sorted(_to_json(v, depth + 1) for v in value)) + "]"
    if type(value) is dict:
        return (
            "{" + ",".join(_json_str(str(k)) + ":" + _to_json(v, depth + 1) for k, v in value.items()) + "}"
        )
    return '{"__repr__": %s}' % _json_str(repr(value)[:1000])


def _emit(result):
    os.write(RESULT_FD, (NONCE + _to_json(result) + "\n").encode("utf-8", "replace"))


def _silence_stdio():
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    sys.stdin = open(os.devnull)
    sys.stdout = sys.stderr = open(os.devnull, "w")


def _run_stdio(spec):
    code = compile(spec["code"], "solution.py", "exec")
    outputs, status = [], []
    for i, text in enumerate(spec["inputs"]):
        in_path = os.path.join(os.getcwd(), ".in_%d" % i)
        out_path = os.path.join(os.getcwd(), ".out_%d" % i)
        with open(in_path, "w") as f:
            f.write(text)
        try:
            pid = os.fork()
        except OSError as err:  # the harness's own fork: the host (or an earlier case's leftovers) refused it
            _emit({"outputs": outputs, "status": status, "infra": "harness fork refused: %s" % err})
            return
        if pid == 0:
            fd_in = os.open(in_path, os.O_RDONLY)
            fd_out = os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.dup2(fd_in, 0)
            os.dup2(fd_out, 1)
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 2)
            os.close(RESULT_FD)
            sys.stdin = open(0, closefd=False)
            sys.stdout = open(1, "w", closefd=False)
            sys.stderr = open(2, "w", closefd=False)
            rc = 0
            try:
                exec(code, {"__name__": "__main__", "__builtins__": __builtins__})
            except SystemExit as e:
                rc = 0 if e.code in (None, 0) else 1
            except BaseException:
                rc = 1
            try:
                sys.stdout.flush()
            except BaseException:
                rc = 1
            os._exit(rc)
        state = _wait(pid, spec["timeout"])
        try:
            with open(out_path, errors="replace") as f:
                outputs.append(f.read())
        except OSError:
            outputs.append("")
        status.append(state)
        if state != "ok":
            break
    _emit({"outputs": outputs, "status": status})


def _wait(pid, timeout):
    pidfd = os.pidfd_open(pid)
    ready, _, _ = select.select([pidfd], [], [], timeout)
    os.close(pidfd)
    if not ready:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        return "timeout"
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code in (-signal.SIGKILL, -24):  # SIGXCPU: the CPU-time limit is a time limit too
        return "timeout"
    return "ok" if code == 0 else "error"


def _parse_args(raw):
    # LiveCodeBench stores the arguments as newline-separated JSON values
    if isinstance(raw, str):
        import json  # only LiveCodeBench-style string arguments need it

        return [json.loads(line) for line in raw.split("\n") if line.strip()]
    return list(raw) if isinstance(raw, (list, tuple)) else [raw]


def _timed(fn, timeout):
    signal.setitimer(signal.ITIMER_REAL, timeout)
    try:
        return fn()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)


def _run_call(spec):
    env = {"__name__": "__main__", "__builtins__": __builtins__}
    returns, status = [], []
    try:
        _timed(lambda: exec(compile(spec["code"], "solution.py", "exec"), env), spec["timeout"])
        fn = env.get(spec["fn_name"])
        if fn is None and "Solution" in env:
            fn = getattr(env["Solution"](), spec["fn_name"])
        if fn is None:
            raise NameError(spec["fn_name"])
    except BaseException as err:
        _emit({"returns": [], "status": ["error"], "error": "%s: %s" % (type(err).__name__, err)})
        return
    for raw in spec["inputs"]:
        try:
            args = _parse_args(raw)
            returns.append(_to_json(_timed(lambda args=args: fn(*args), spec["timeout"])))
            status.append("ok")
        except _Timeout:
            status.append("timeout")
            break
        except BaseException as err:
            status.append("error")
            _emit(
                {
                    "returns": _Raw("[" + ",".join(returns) + "]"),
                    "status": status,
                    "error": "%s: %s" % (type(err).__name__, err),
                }
            )
            return
    _emit({"returns": _Raw("[" + ",".join(returns) + "]"), "status": status})


def _run_check(spec):
    env = {"__name__": "__main__", "__builtins__": __builtins__}
    try:

        def run():
            exec(compile(spec["code"] + "\n\n" + spec["test"], "solution.py", "exec"), env)
            env["check"](env[spec["entry_point"]])

        _timed(run, spec["timeout"])
    except _Timeout:
        _emit({"status": ["timeout"]})
        return
    except BaseException as err:
        _emit({"status": ["error"], "error": "%s: %s" % (type(err).__name__, str(err)[:300])})
        return
    _emit({"status": ["ok"]})


def main():
    with open(os.path.join(os.path.dirname(__file__), "spec.marshal"), "rb") as f:
        spec = marshal.load(f)
    signal.signal(signal.SIGALRM, _on_alarm)
    if spec["mode"] != "stdio":
        _silence_stdio()
    {"stdio": _run_stdio, "call": _run_call, "check": _run_check}[spec["mode"]](spec)


if __name__ == "__main__":
    main()
