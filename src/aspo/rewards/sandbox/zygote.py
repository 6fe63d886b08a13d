"""Persistent bwrap sandboxes ("zygotes") that fork one fresh child per run: the throughput path.

A zygote is a long-lived bubblewrap sandbox (same namespaces, read-only system, scrubbed environment and
unprivileged uid as a one-shot run) whose Python server (``zygote_main.py``) has paid interpreter start-up
and common imports once. Each run is a fork of that clean server with its own scratch dir and rlimits;
afterwards the server kills every other process in the namespace, wipes /tmp and /dev/shm and removes SysV
IPC objects, so runs are isolated from each other as well as from the host. A run's stdin travels as a
descriptor (SCM_RIGHTS), never through the server's memory. A zygote that misbehaves (killed by its
candidate, protocol error, missed deadline) or whose clean-up left anything behind is destroyed and
replaced.
"""

from __future__ import annotations

import atexit
import json
import os
import queue
import select
import shutil
import socket
import struct
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import aspo.rewards.sandbox.host as host
from aspo.rewards.sandbox.limits import Limits, RunResult

_SERVER = Path(__file__).with_name("zygote_main.py").read_text()
_START_TIMEOUT_S = 30.0
_REPLY_MARGIN_S = 5.0  # beyond the run's own wall limit, for cleanup and transfer


class ZygoteError(RuntimeError):
    pass


class _Zygote:
    def __init__(self, tmpfs_bytes: int) -> None:
        self.uid = host.UIDS.acquire()
        self.job = tempfile.mkdtemp(dir=host.work_root())
        os.chmod(self.job, 0o755)
        (Path(self.job) / "zygote_main.py").write_text(_SERVER)
        os.chmod(Path(self.job) / "zygote_main.py", 0o644)
        limits = Limits(tmpfs_bytes=tmpfs_bytes)
        self.info_read, info_write = os.pipe()
        # requests travel on a socket so that each can carry its stdin as a descriptor (SCM_RIGHTS): the
        # server never reads a run's stdin, so no later fork of it holds a copy
        self.requests, server_end = socket.socketpair()
        filter_fd = host.seccomp_fd()
        cmd = host.bwrap_args(limits, self.job, filter_fd) + [
            host.sandbox_python(),
            "-I",
            "-S",
            "-B",
            f"{host.JOB_DIR_INSIDE}/zygote_main.py",
        ]
        cmd[1:1] = ["--info-fd", str(info_write)]
        # No --die-with-parent: its "parent" is the creating *thread* (PR_SET_PDEATHSIG), and scoring threads
        # come and go. If the scorer dies, the server reads EOF on stdin and exits, taking bwrap with it.
        cmd.remove("--die-with-parent")
        try:
            self.proc = subprocess.Popen(
                cmd,
                stdin=server_end.fileno(),
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                env=host.clean_env("/tmp"),
                cwd=self.job,
                start_new_session=True,
                close_fds=True,
                pass_fds=tuple(fd for fd in (info_write, filter_fd) if fd >= 0),
                **host.user_kwargs(self.uid),
            )
        except BaseException:
            self.requests.close()
            os.close(self.info_read)
            raise
        finally:
            for fd in (info_write, filter_fd):
                if fd >= 0:
                    os.close(fd)
            server_end.close()
        try:
            if self._receive(_START_TIMEOUT_S) != {"ready": True}:
                raise ZygoteError("zygote sent a bad greeting")
        except BaseException:
            self.close()
            raise

    def _receive(self, timeout: float) -> dict:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        data = b""
        header = None
        deadline = timeout
        while True:
            ready, _, _ = select.select([fd], [], [], deadline)
            if not ready:
                raise TimeoutError
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                raise ZygoteError("zygote exited")
            data += chunk
            if header is None and len(data) >= 4:
                header = struct.unpack(">I", data[:4])[0]
            if header is not None and len(data) >= 4 + header:
                return json.loads(data[4 : 4 + header])

    def run(self, request: dict, stdin: bytes, timeout: float) -> dict:
        data = json.dumps(request).encode()
        stdin_fd = os.memfd_create("stdin", os.MFD_CLOEXEC)
        try:
            view = memoryview(stdin)
            while view:
                view = view[os.write(stdin_fd, view) :]
            os.lseek(stdin_fd, 0, os.SEEK_SET)
            message = struct.pack(">I", len(data)) + data
            sent = self.requests.sendmsg(
                [message], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("i", stdin_fd))]
            )
            self.requests.sendall(message[sent:])
        except OSError as err:
            raise ZygoteError(f"zygote gone: {err}") from err
        finally:
            os.close(stdin_fd)
        return self._receive(timeout)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def close(self) -> None:
        try:
            self.requests.close()  # a healthy zygote exits on EOF, and bwrap reaps the namespace
            if not host.wait_exit(self.proc, 1.0):
                host.kill_tree(self.proc, self.uid, "bwrap", self.info_read)
            self.proc.wait()
        finally:
            if self.proc.stdout is not None:
                self.proc.stdout.close()
            os.close(self.info_read)
            shutil.rmtree(self.job, ignore_errors=True)
            host.UIDS.release(self.uid)


class ZygotePool:
    """Idle zygotes shared by the scoring threads (one in use per thread at a time)."""

    def __init__(self) -> None:
        self._idle: queue.LifoQueue[_Zygote] = queue.LifoQueue()
        self._lock = threading.Lock()
        self._count = 0

    def live(self) -> int:
        """Zygotes currently alive (each is three processes: bwrap, the namespace init, the server)."""
        return self._count

    def run(self, files: dict[str, bytes], main: str, stdin: bytes, limits: Limits) -> RunResult:
        try:
            zygote = self._idle.get_nowait()
        except queue.Empty:
            try:
                zygote = _Zygote(limits.tmpfs_bytes)
            except (TimeoutError, ZygoteError, ValueError) as err:  # the host's failure: no candidate ran yet
                raise OSError(f"sandbox server failed to start: {type(err).__name__}: {err}") from err
            with self._lock:
                self._count += 1
        request = {
            "files": {k: v.decode("latin-1") for k, v in files.items()},
            "main": main,
            "wall": limits.wall_seconds,
            "max_output": limits.max_output_bytes,
            # the server and the namespace's init share the uid: two more processes
            "rlimits": [[k, a, b] for k, (a, b) in limits.rlimits(nproc_in_use=2).items()],
        }
        start = time.monotonic()
        try:
            reply = zygote.run(request, stdin, limits.wall_seconds + _REPLY_MARGIN_S)
        except (TimeoutError, ZygoteError, ValueError):
            self._discard(zygote)
            # the candidate killed or wedged its zygote: no result, which scores 0
            return RunResult(None, b"", b"sandbox server lost", False, False, time.monotonic() - start)
        if reply.get("dirty"):  # the run left what the server could not wipe: no later run may meet it
            self._discard(zygote)
        else:
            self._idle.put(zygote)
        stdout = reply["stdout"].encode("latin-1")
        rc = reply["rc"]
        limited = reply["largest_output"] >= limits.max_output_bytes
        return RunResult(
            rc,
            stdout[: limits.max_output_bytes],
            reply["stderr"].encode("latin-1"),
            reply["timed_out"],
            limited,
            time.monotonic() - start,
        )

    def _discard(self, zygote: _Zygote) -> None:
        zygote.close()
        with self._lock:
            self._count -= 1

    def close(self) -> None:
        while True:
            try:
                self._discard(self._idle.get_nowait())
            except queue.Empty:
                return


POOL = ZygotePool()
atexit.register(POOL.close)
