# ruff: noqa: UP031  (runs on whatever python3 the sandbox has: plain %-formatting)
"""Zygote server executed INSIDE a long-lived bwrap sandbox (stdlib only; never imported by the scorer).

Python start-up and the imports candidates commonly need (typing, collections, re, ...) are paid once; each
run is a fork of this clean process, so no candidate sees another's memory. Per run:
  1. read a request from the socket on fd 0: 4-byte length + JSON {files, main, rlimits, wall}, with the
     run's stdin attached as a descriptor (a memfd): the server never reads it, so its content is in no
     memory a later fork inherits (the code reward's harness reads its test code from it after forking
     the candidate);
  2. fork; the child makes a fresh scratch dir with an unguessable name under /tmp, sets the rlimits,
     points fd 0 at that stdin and fds 1/2 at files there (stdout's unlinked: only fds reach it), and
     executes ``main`` as __main__;
  3. wait up to ``wall`` seconds (pidfd); then SIGKILL every other process of the namespace until none is
     left, delete everything under /tmp and /dev/shm (making read-only directories writable first) and
     every SysV IPC object, so the next run starts from a clean sandbox;
  4. reply on the original stdout: 4-byte length + JSON {rc, timed_out, stdout, stderr, dirty} (latin-1
     text). ``dirty``: something survived the clean-up; the scorer then replaces this server.
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
import socket
import string  # noqa: F401
import struct
import sys
import typing  # noqa: F401

PR_SET_DUMPABLE = 4
REQUESTS = socket.socket(fileno=os.dup(0))
REPLIES = os.fdopen(os.dup(1), "wb", buffering=0)
LIBC = ctypes.CDLL(None, use_errno=True)


def _read_request():
    """(request, stdin fd): the fd arrives with the message's first bytes."""
    head, fds, _, _ = socket.recv_fds(REQUESTS, 4, 1)
    if not head:
        raise EOFError
    data = head
    while len(data) < 4:
        data += _recv(4 - len(data))
    (size,) = struct.unpack(">I", data)
    body = b""
    while len(body) < size:
        body += _recv(size - len(body))
    if len(fds) != 1:
        raise EOFError  # protocol error: stop (the scorer replaces the server)
    return json.loads(body), fds[0]


def _recv(n):
    chunk = REQUESTS.recv(n)
    if not chunk:
        raise EOFError
    return chunk


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


def _wipe(path, keep=()):
    """Delete everything under ``path`` (but ``keep``); True when nothing else is left."""
    for name in os.listdir(path):
        if name in keep:
            continue
        full = os.path.join(path, name)
        if os.path.isdir(full) and not os.path.islink(full):
            for root, dirs, _ in os.walk(full):  # a 0500 or 0000 directory must not keep its files
                for d in [root] + [os.path.join(root, d) for d in dirs]:
                    try:
                        if not os.path.islink(d):
                            os.chmod(d, 0o700)
                    except OSError:
                        pass
            try:
                os.chmod(full, 0o700)
            except OSError:
                pass
            shutil.rmtree(full, ignore_errors=True)
        else:
            try:
                os.unlink(full)
            except OSError:
                pass
    return not [name for name in os.listdir(path) if name not in keep]


def _remove_sysv_ipc():
    """Remove every SysV shared memory segment, message queue and semaphore set of this IPC namespace."""
    clean = True
    for kind, ctl in (("shm", LIBC.shmctl), ("msg", LIBC.msgctl), ("sem", LIBC.semctl)):
        try:
            with open("/proc/sysvipc/" + kind) as f:
                rows = f.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            ident = int(row.split()[1])
            if ctl(ident, 0, 0, 0) != 0:  # IPC_RMID
                clean = False
    return clean


def _child(request, scratch, stdin_fd, stdout_fd):
    try:
        os.setsid()
        for name, text in request["files"].items():
            with open(os.path.join(scratch, name), "wb") as f:
                f.write(text.encode("latin-1"))
        fds = [
            stdin_fd,
            stdout_fd,
            os.open(os.path.join(scratch, ".stderr"), os.O_WRONLY | os.O_CREAT, 0o600),
        ]
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
    while True:
        try:
            request, stdin_fd = _read_request()
        except EOFError:
            return
        scratch = "/tmp/run-" + os.urandom(16).hex()  # unguessable: no run can pre-create the next one's
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
            _child(request, scratch, stdin_fd, stdout_fd)
        os.close(stdin_fd)
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
        clean = not _others()
        clean = _wipe("/tmp", keep=(".job",)) and clean
        if os.path.isdir("/dev/shm"):
            clean = _wipe("/dev/shm") and clean
        reply["dirty"] = not (_remove_sysv_ipc() and clean)
        _reply(reply)


if __name__ == "__main__":
    serve()
