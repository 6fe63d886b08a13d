# ruff: noqa: UP031  (runs on whatever python3 the sandbox has: plain %-formatting)
"""Zygote server executed INSIDE a long-lived bwrap sandbox (stdlib only; never imported by the scorer).

Python start-up and the imports candidates commonly need (typing, collections, re, ...) are paid once; each
run is a fork of this clean process, so no candidate sees another's memory. Per run:
  1. read a request from stdin: 4-byte length + JSON {files, main, stdin, rlimits, wall};
  2. fork; the child makes a fresh scratch dir under /tmp, sets the rlimits, points fds 0/1/2 at files
     there (stdin's and stdout's unlinked: only fds reach them), and executes ``main`` as __main__;
  3. wait up to ``wall`` seconds (pidfd); then SIGKILL every other process of the namespace until none is
     left, and delete everything under /tmp and /dev/shm, so the next run starts from a clean sandbox;
  4. reply on the original stdout: 4-byte length + JSON {rc, timed_out, stdout, stderr} (latin-1 text).
The zygote is not dumpable, so a candidate (same uid) cannot ptrace it or open its pipes through /proc.
"""

# the `noqa: F401` imports are what candidate programs commonly import: paid once here, not in every run
import bisect  # noqa: F401
import collections  # noqa: F401
import ctypes
import functools  # noqa: F401
import heapq  # noqa: F401
import itertools  # noqa: F401
import json
import math  # noqa: F401
import os
import re  # noqa: F401
import resource
import select
import shutil
import string  # noqa: F401
import struct
import sys
import typing  # noqa: F401

PR_SET_DUMPABLE = 4
REQUESTS = os.fdopen(os.dup(0), "rb", buffering=0)
REPLIES = os.fdopen(os.dup(1), "wb", buffering=0)


def _read_exact(n):
    data = b""
    while len(data) < n:
        chunk = REQUESTS.read(n - len(data))
        if not chunk:
            raise EOFError
        data += chunk
    return data


def _reply(obj):
    data = json.dumps(obj).encode()
    REPLIES.write(struct.pack(">I", len(data)) + data)


def _others():
    me = os.getpid()
    return [int(p) for p in os.listdir("/proc") if p.isdigit() and int(p) not in (1, me)]


def _kill_everything_else():
    for _ in range(1000):
        if not _others():
            return
        try:
            os.kill(-1, 9)  # every process of this uid in the namespace but us (init ignores it)
        except OSError:
            pass
        try:
            while os.waitpid(-1, os.WNOHANG)[0]:
                pass
        except ChildProcessError:
            pass


def _wipe(path):
    for name in os.listdir(path):
        full = os.path.join(path, name)
        if os.path.isdir(full) and not os.path.islink(full):
            shutil.rmtree(full, ignore_errors=True)
        else:
            try:
                os.unlink(full)
            except OSError:
                pass


def _child(request, scratch, stdout_fd):
    try:
        os.setsid()
        for name, text in request["files"].items():
            with open(os.path.join(scratch, name), "wb") as f:
                f.write(text.encode("latin-1"))
        with open(os.path.join(scratch, ".stdin"), "wb") as f:
            f.write(request["stdin"].encode("latin-1"))
        fds = [
            os.open(os.path.join(scratch, ".stdin"), os.O_RDONLY),
            stdout_fd,
            os.open(os.path.join(scratch, ".stderr"), os.O_WRONLY | os.O_CREAT, 0o600),
        ]
        os.unlink(os.path.join(scratch, ".stdin"))  # what it was given, and its stdout: no path to either
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        os.closerange(3, 1 << 16)
        sys.stdin = open(0, closefd=False)
        sys.stdout = open(1, "w", closefd=False)
        sys.stderr = open(2, "w", closefd=False)
        os.chdir(scratch)
        for key, soft, hard in request["rlimits"]:
            resource.setrlimit(getattr(resource, key), (soft, hard))
        path = os.path.join(scratch, request["main"])
        sys.argv = [path]
        with open(path) as f:
            code = compile(f.read(), path, "exec")
        exec(code, {"__name__": "__main__", "__file__": path, "__builtins__": __builtins__})
        rc = 0
    except SystemExit as e:
        rc = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:
        import traceback

        try:
            traceback.print_exc()
        except BaseException:
            pass
        rc = 1
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except BaseException:
        pass
    os._exit(rc & 0xFF)


def _read_tail(path, cap):
    try:
        with open(path, "rb") as f:
            return f.read(cap + 1).decode("latin-1")
    except OSError:
        return ""


def serve():
    ctypes.CDLL(None).prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1):
        os.dup2(devnull, fd)
    _reply({"ready": True})
    count = 0
    while True:
        try:
            (size,) = struct.unpack(">I", _read_exact(4))
            request = json.loads(_read_exact(size))
        except EOFError:
            return
        count += 1
        scratch = "/tmp/run%d" % count
        os.mkdir(scratch, 0o700)
        # the run's stdout has no path: a program (or a process it starts) can write it only through an
        # fd it was given, so the harness's result line cannot be appended by the candidate it runs
        stdout_path = os.path.join(scratch, ".stdout")
        stdout_fd = os.open(stdout_path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        os.unlink(stdout_path)
        pid = os.fork()
        if pid == 0:
            REQUESTS.close()
            REPLIES.close()
            _child(request, scratch, stdout_fd)
        pidfd = os.pidfd_open(pid)
        ready, _, _ = select.select([pidfd], [], [], request["wall"])
        os.close(pidfd)
        timed_out = not ready
        if timed_out:
            os.kill(pid, 9)
        _, status = os.waitpid(pid, 0)
        _kill_everything_else()
        cap = request["max_output"]
        stderr_path = os.path.join(scratch, ".stderr")
        stderr_size = os.path.getsize(stderr_path) if os.path.exists(stderr_path) else 0
        sizes = [os.fstat(stdout_fd).st_size, stderr_size]
        reply = {
            "rc": os.waitstatus_to_exitcode(status),
            "timed_out": timed_out,
            "largest_output": max(sizes),
            "stdout": os.pread(stdout_fd, cap + 1, 0).decode("latin-1"),
            "stderr": _read_tail(stderr_path, 1 << 16),
        }
        os.close(stdout_fd)
        _wipe("/tmp")
        if os.path.isdir("/dev/shm"):
            _wipe("/dev/shm")
        _reply(reply)


if __name__ == "__main__":
    serve()
