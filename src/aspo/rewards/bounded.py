"""A user reward function (``reward=path/file.py:fn``) run in a worker process with a time bound.

A hung user function cannot be stopped inside the trainer's process (a thread cannot be killed, and a
spinning one would keep a core), so each call goes to a worker process that imported the file once; a call
that overruns ``timeout`` seconds kills the worker (the next call starts a fresh one) and raises
:class:`RewardTimeout`; a worker that dies (``os._exit``, a segfault) raises :class:`RewardCrashed`. Either
way ``call_reward`` scores the response 0 with that error and the run goes on.

Run as ``python -m aspo.rewards.bounded``, this module is the worker: it reads length-prefixed pickles of
keyword arguments and answers ``("ok", value)`` or ``("error", exception)``.
"""

from __future__ import annotations

import atexit
import inspect
import os
import pickle
import select
import struct
import subprocess
import sys
import threading
from typing import Any

DEFAULT_TIMEOUT = 60.0  # seconds per call: generous for a Python verifier, bounded for a hung one


class RewardTimeout(Exception):
    pass


class RewardCrashed(Exception):
    pass


def _send(fd: int, obj: Any) -> None:
    data = pickle.dumps(obj)
    os.write(fd, struct.pack(">I", len(data)))
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _read_exact(fd: int, n: int, deadline: float | None = None) -> bytes:
    import time

    data = b""
    while len(data) < n:
        if deadline is not None:
            ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                raise TimeoutError
        chunk = os.read(fd, n - len(data))
        if not chunk:
            raise EOFError
        data += chunk
    return data


def _receive(fd: int, deadline: float | None = None) -> Any:
    (size,) = struct.unpack(">I", _read_exact(fd, 4, deadline))
    return pickle.loads(_read_exact(fd, size, deadline))


class BoundedReward:
    """Callable like the user's function (same signature), but each call runs in the worker process."""

    def __init__(self, spec: str, fn: Any, timeout: float) -> None:
        self.spec, self.timeout = spec, timeout
        self.__signature__ = inspect.signature(fn)  # call_reward passes only the fields fn accepts
        self.__name__ = getattr(fn, "__name__", spec)
        self.__wrapped__ = fn  # its docstring says what it scores (aspo.report.signal)
        self._proc: subprocess.Popen | None = None
        self._lock = threading.Lock()
        atexit.register(self.close)

    def _start(self) -> subprocess.Popen:
        proc = subprocess.Popen(
            [sys.executable, "-m", "aspo.rewards.bounded"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            close_fds=True,
        )
        assert proc.stdin is not None
        _send(proc.stdin.fileno(), (self.spec, sys.path))
        return proc

    def __call__(self, **kwargs: Any) -> Any:
        import time

        with self._lock:
            if self._proc is None or self._proc.poll() is not None:
                self._proc = self._start()
            proc = self._proc
            assert proc.stdin is not None and proc.stdout is not None
            try:
                _send(proc.stdin.fileno(), kwargs)
                status, value = _receive(proc.stdout.fileno(), time.monotonic() + self.timeout)
            except TimeoutError:
                self.close()
                raise RewardTimeout(
                    f"{self.spec} did not return within {self.timeout:g}s "
                    "(reward_timeout); its worker was killed"
                ) from None
            except (EOFError, BrokenPipeError):
                code = proc.wait()
                self._proc = None
                raise RewardCrashed(f"{self.spec} ended its process (exit status {code})") from None
        if status == "error":
            raise value  # the user function's own exception, as if it had run here
        return value

    def close(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            proc.kill()
            proc.wait()
            for pipe in (proc.stdin, proc.stdout):
                if pipe is not None:
                    pipe.close()


def _serve() -> None:
    requests, replies = os.dup(0), os.dup(1)
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(2, 1)  # the user function's prints go to stderr, not into the protocol
    spec, path = _receive(requests)
    sys.path[:] = path
    from aspo.rewards.user_file import load_file_function

    fn = load_file_function(spec)
    while True:
        try:
            kwargs = _receive(requests)
        except EOFError:
            return
        reply: tuple[str, Any]
        try:
            reply = ("ok", fn(**kwargs))
        except Exception as err:  # re-raised in the scorer, which scores 0 with it
            reply = ("error", err)
        try:
            _send(replies, reply)
        except Exception as err:  # an unpicklable value or exception
            _send(replies, ("error", RewardCrashed(f"{type(err).__name__}: {err}")))


if __name__ == "__main__":
    _serve()
