# ruff: noqa: UP031  (runs on whatever python3 the sandbox has: plain %-formatting)
"""Test runner executed INSIDE the sandbox (stdlib only; never imported by the scorer).

Reads three length-prefixed frames on stdin: a nonce, the spec (marshal), and what the candidate must not
see (marshal: the test code of check mode, empty otherwise). It writes ``<nonce>+`` (started) and, after
running the candidate, one result line ``<nonce><json>`` to the original stdout. The candidate's own
output goes elsewhere, and it never sees the expected outputs of stdin/stdout or function-call tests
(compared by the scorer outside) nor the test code of check mode: that frame is read only after the
candidate's process is forked (it holds no stdin), so it is in no memory the candidate can read.
It avoids importing ``json`` (and with it ``re``), which would double the start-up time of a check.

The candidate never runs in this process: it runs in a forked child that holds no handle to the result
channel, and this process is not dumpable, so the child (same uid) cannot open its descriptors through
/proc or ptrace it. In call and check modes the child serves calls over a pipe and returns plain data
only (marshal of builtin types; subclasses are reduced to their base type in the child), so an object
that claims to equal everything never reaches a comparison, and the test code of check mode runs here,
against those plain values.

Modes:
  stdio  {"code", "inputs": [str], "timeout"}: run the program once per input in a forked child;
         result {"outputs": [str], "status": [ok|error|timeout]}; stops after the first error/timeout.
  call   {"code", "fn_name", "inputs": [[args]], "timeout"}: call fn (or Solution().fn) per argument list;
         result {"returns": [json], "status": [...]}.
  check  {"code", "entry_point", "timeout"} + {"test", "prelude"}: fork the candidate, then read and exec
         the prompt's helpers and the test here, and run check(entry_point) against the candidate;
         result {"status": ["ok"]} when check returns.
"""

import _signal as signal  # the C module: `signal` imports enum, a third of a check's start-up
import ctypes
import marshal
import os
import select
import sys

# Not dumpable: a candidate (same uid) can neither ptrace this process nor open its fds via /proc.
ctypes.CDLL(None).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE = 4
RESULT_FD = os.dup(1)
SPEC_FD = os.dup(0)  # the frames; fd 0 itself is silenced so that no child inherits a path to them
os.dup2(os.open(os.devnull, os.O_RDONLY), 0)


def _read_frame():
    """One length-prefixed frame of stdin, read unbuffered: nothing past it enters this process's memory
    (a buffered read would pull the test code in before the candidate is forked)."""

    def exact(n):
        data = b""
        while len(data) < n:
            chunk = os.read(SPEC_FD, n - len(data))
            if not chunk:
                raise EOFError("stdin ended early")
            data += chunk
        return data

    return exact(int.from_bytes(exact(8), "big"))


NONCE = _read_frame().decode()
os.write(RESULT_FD, (NONCE + "+\n").encode())  # "started": failures before this are the host's


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
        except OSError as err:
            if i == 0:  # no candidate has run yet: the host refused it
                _emit({"outputs": outputs, "status": status, "infra": "harness fork refused: %s" % err})
            else:  # an earlier case's processes hold the process limit: the candidate's doing
                _emit({"outputs": outputs, "status": status + ["error"], "error": "fork refused: %s" % err})
            return
        if pid == 0:
            fd_in = os.open(in_path, os.O_RDONLY)
            fd_out = os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.dup2(fd_in, 0)
            os.dup2(fd_out, 1)
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 2)
            os.close(RESULT_FD)
            os.close(SPEC_FD)
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


class _NotPlain(Exception):
    pass


_SCALARS = (type(None), bool, int, float, complex, str, bytes)


def _plain(value, depth=0):
    """``value`` as builtin types only (runs in the candidate's child: whatever it overrides stays there)."""
    if depth > 100:
        raise _NotPlain("nested too deeply")
    kind = type(value)
    if kind in _SCALARS:
        return value
    for base in (bool, int, float, complex, str, bytes):
        if isinstance(value, base):  # a subclass: its base value, without its methods
            return base(value)
    if isinstance(value, dict):
        return {_plain(k, depth + 1): _plain(v, depth + 1) for k, v in dict.items(value)}
    for base in (list, tuple, set, frozenset):
        if isinstance(value, base):
            return base(_plain(v, depth + 1) for v in value)
    raise _NotPlain(repr(value)[:1000])


def _send(fd, obj):
    data = marshal.dumps(obj)
    data = len(data).to_bytes(8, "big") + data
    while data:
        data = data[os.write(fd, data) :]


def _recv(fd):
    def exact(n):
        chunks = []
        while n:
            chunk = os.read(fd, min(n, 1 << 20))
            if not chunk:
                raise EOFError
            chunks.append(chunk)
            n -= len(chunk)
        return b"".join(chunks)

    return marshal.loads(exact(int.from_bytes(exact(8), "big")))


def _describe(err):
    try:
        return "%s: %s" % (type(err).__name__, str(err)[:300])
    except BaseException:
        return "an exception that cannot be shown"


def _serve_candidate(code, requests, replies):
    """In the child: define the candidate's code, then answer (name, args, kwargs) with plain values."""
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.close(RESULT_FD)
    os.close(SPEC_FD)
    env = {"__name__": "__main__", "__builtins__": __builtins__}
    try:
        exec(compile(code, "solution.py", "exec"), env)
        _send(replies, ("ok", None))
    except BaseException as err:
        _send(replies, ("error", _describe(err)))
        os._exit(0)
    while True:
        try:
            name, args, kwargs = _recv(requests)
        except BaseException:  # the harness closed the pipe (or wrote nonsense): done
            os._exit(0)
        try:
            fn = env.get(name)
            if fn is None and "Solution" in env:
                fn = getattr(env["Solution"](), name)
            if fn is None:
                raise NameError(name)
            reply = ("ok", _plain(fn(*args, **kwargs)))
        except _NotPlain as err:
            reply = ("opaque", str(err))
        except BaseException as err:
            reply = ("error", _describe(err))
        try:
            _send(replies, reply)
        except BaseException:
            os._exit(1)


class _CandidateError(Exception):
    pass


class _Candidate:
    """The candidate's code in its own process; ``call`` runs one of its functions there."""

    def __init__(self, code):
        requests, self._requests = os.pipe()
        self._replies, replies = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:
            os.close(self._requests)
            os.close(self._replies)
            _serve_candidate(code, requests, replies)
            os._exit(0)
        os.close(requests)
        os.close(replies)

    def defined(self):
        """None when the code ran to its end, else the error it raised."""
        status, detail = self._reply()
        return None if status == "ok" else detail

    def call(self, name, args, kwargs=None):
        try:
            _send(self._requests, (name, tuple(args), dict(kwargs or {})))
        except ValueError:
            raise TypeError("the test passed something that is not plain data") from None
        except OSError:
            raise _CandidateError("the candidate's process is gone") from None
        status, value = self._reply()
        if status == "ok":
            # the child could write anything on its pipe: the same walk here lets only builtin data through
            # (unmarshalled values have exact types, so no method of the candidate's runs in this process)
            return _plain(value)
        if status == "opaque":
            raise _NotPlain("returned something other than plain data: %s" % value)
        raise _CandidateError(value)

    def _reply(self):
        try:
            reply = _recv(self._replies)
        except EOFError:
            raise _CandidateError("the candidate's process ended") from None
        except ValueError:
            raise _CandidateError("the candidate's process wrote nonsense") from None
        if type(reply) is not tuple or len(reply) != 2 or type(reply[0]) is not str:
            raise _CandidateError("the candidate's process wrote nonsense")
        return reply

    def close(self):
        for fd in (self._requests, self._replies):
            try:
                os.close(fd)
            except OSError:
                pass
        try:
            os.kill(self.pid, signal.SIGKILL)
        except OSError:
            pass
        try:
            os.waitpid(self.pid, 0)
        except OSError:
            pass


def _start_candidate(spec):
    """(candidate, None), or (None, result to emit) when the harness could not fork."""
    try:
        return _Candidate(spec["code"]), None
    except OSError as err:
        return None, {"status": ["error"], "infra": "harness fork refused: %s" % err}


def _run_call(spec):
    candidate, failed = _start_candidate(spec)
    if failed:
        _emit(failed)
        return
    returns, status = [], []
    try:
        try:
            error = _timed(candidate.defined, spec["timeout"])
        except BaseException as err:
            error = _describe(err)
        if error is not None:
            _emit({"returns": [], "status": ["error"], "error": error})
            return
        for raw in spec["inputs"]:
            try:
                args = _parse_args(raw)
                value = _timed(lambda args=args: candidate.call(spec["fn_name"], args), spec["timeout"])
                returns.append(_to_json(value))
                status.append("ok")
            except _NotPlain as err:
                returns.append('{"__repr__": %s}' % _json_str(str(err)))
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
                        "error": _describe(err),
                    }
                )
                return
        _emit({"returns": _Raw("[" + ",".join(returns) + "]"), "status": status})
    finally:
        candidate.close()


def _run_check(spec):
    candidate, failed = _start_candidate(spec)
    if failed:
        _emit(failed)
        return
    entry = spec["entry_point"]

    def proxy(*args, **kwargs):
        return candidate.call(entry, args, kwargs)

    try:

        def run():
            error = candidate.defined()
            if error is not None:
                raise _CandidateError(error)
            kept = marshal.loads(_read_frame())  # only now: the candidate's process never held it
            env = {"__name__": "__main__", "__builtins__": __builtins__}
            if kept.get("prelude"):
                try:  # the dataset's prompt: helpers its test may call (the candidate cannot change them)
                    exec(compile(kept["prelude"], "prompt.py", "exec"), env)
                except Exception:
                    pass  # not runnable on its own: the test gets what it defined up to there
            env[entry] = proxy
            exec(compile(kept["test"], "test.py", "exec"), env)
            env["check"](proxy)

        _timed(run, spec["timeout"])
    except _Timeout:
        _emit({"status": ["timeout"]})
        return
    except BaseException as err:
        _emit({"status": ["error"], "error": _describe(err)})
        return
    finally:
        candidate.close()
    _emit({"status": ["ok"]})


def main():
    spec = marshal.loads(_read_frame())
    signal.signal(signal.SIGALRM, _on_alarm)
    if spec["mode"] != "stdio":
        _silence_stdio()
    {"stdio": _run_stdio, "call": _run_call, "check": _run_check}[spec["mode"]](spec)


if __name__ == "__main__":
    main()
