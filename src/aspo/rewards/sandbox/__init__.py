"""Run untrusted Python (model-written programs) in an OS-level sandbox.

Two backends, chosen once per process (``ASPO_SANDBOX=bwrap|rlimits`` forces one):

* ``bwrap`` -- Debian's bubblewrap: new user, PID, network, IPC and UTS namespaces; the host filesystem
  read-only; a private size-capped tmpfs ``/tmp`` as the only writable place; a scrubbed environment; its own
  session. Killing bwrap kills the namespace's PID 1, and the kernel then kills every process inside, so no
  descendant (not even one that called ``setsid``) outlives a run.
* ``rlimits`` -- the fallback when bwrap is missing or cannot create namespaces: rlimits, a scrubbed
  environment, a private scratch directory and its own session. What it cannot enforce is spelled out in
  :func:`isolation` and logged once as a warning.

With bwrap, runs are by default forks of a persistent sandboxed server (``zygote``: interpreter start-up
and common imports paid once, a fresh child, scratch dir and rlimits per run, the namespace emptied and
/tmp wiped after each); ``reuse=False`` or ``ASPO_SANDBOX_REUSE=0`` builds a fresh sandbox per run.

In both, when the scorer runs as root the program runs as a throw-away uid unique to the run slot, because
Linux does not enforce ``RLIMIT_NPROC`` for root; that uid also makes "kill everything it started" exact.
Limits (set by a tiny bootstrap inside the sandbox before any untrusted code runs): CPU seconds
(``RLIMIT_CPU``), address space (``RLIMIT_AS``), processes+threads (``RLIMIT_NPROC``), bytes per written file
(``RLIMIT_FSIZE``, which also caps stdout/stderr, captured to files), open files; the wall-clock limit is
enforced from outside by killing the whole tree.
"""

from __future__ import annotations

import atexit
import os
import re
import select
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass

from aspo.rewards.sandbox.host import (
    _UIDS,
    JOB_DIR_INSIDE,
    Isolation,
    Limits,
    _bwrap_args,
    _clean_env,
    _kill_uid,
    _user_kwargs,
    isolation,
    sandbox_python,
)

__all__ = ["Isolation", "Limits", "RunResult", "isolation", "run_python", "sandbox_python"]
_JOB_DIR_INSIDE = JOB_DIR_INSIDE

# Runs inside the sandbox: set the limits, then execute the script named in argv as __main__.
_BOOTSTRAP = (
    "import resource,sys\n"
    "for item in sys.argv[1].split(','):\n"
    " k,soft,hard=item.split(':'); resource.setrlimit(getattr(resource,k),(int(soft),int(hard)))\n"
    "sys.argv=sys.argv[2:]\n"
    "p=sys.argv[0]\n"
    "g={'__name__':'__main__','__file__':p,'__builtins__':__builtins__}\n"
    "exec(compile(open(p).read(),p,'exec'),g)\n"
)  # (no json: importing it costs more than the rest of the bootstrap)


@dataclass(frozen=True)
class RunResult:
    returncode: int | None  # negative: killed by that signal
    stdout: bytes
    stderr: bytes
    timed_out: bool  # wall-clock limit hit; the whole tree was killed
    output_limited: bool  # stdout or stderr reached max_output_bytes
    wall_seconds: float

    @property
    def breach(self) -> str | None:
        """Which limit the run hit, if any (a describable reason the reward is 0)."""
        if self.timed_out:
            return "wall-clock limit exceeded"
        if self.output_limited:
            return "output limit exceeded"
        if self.returncode in (-signal.SIGXCPU, -signal.SIGKILL):
            return "CPU time limit exceeded" if self.returncode == -signal.SIGXCPU else "killed (SIGKILL)"
        return None

# ---------------------------------------------------------------------------------------------------------
# running


_WORK_ROOT: str | None = None
_WORK_LOCK = threading.Lock()


def _work_root() -> str:
    global _WORK_ROOT
    with _WORK_LOCK:
        if _WORK_ROOT is None or not os.path.isdir(_WORK_ROOT):
            # tmpfs when there is one: creating and deleting job dirs on disk costs milliseconds per run
            shm = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
            _WORK_ROOT = tempfile.mkdtemp(prefix="aspo-sandbox-", dir=shm)
            atexit.register(shutil.rmtree, _WORK_ROOT, True)
            os.chmod(_WORK_ROOT, 0o711)  # strangers may reach a job dir by name, not list them
        return _WORK_ROOT


def _private(path: str, flags: int) -> int:
    return os.open(path, flags, 0o600)


def _read_capped(path: str, cap: int) -> tuple[bytes, bool]:
    with open(path, "rb") as f:
        data = f.read(cap + 1)
    return data[:cap], len(data) >= cap


def run_python(files: dict[str, str | bytes], main: str, *, args: list[str] | tuple[str, ...] = (),
               stdin: bytes = b"", limits: Limits | None = None, backend: str | None = None,
               reuse: bool | None = None) -> RunResult:
    """Run ``python main`` in the sandbox with ``files`` (name -> content) next to it.

    Its working directory is a private writable scratch dir. With bwrap and ``reuse`` (default: on unless
    ``ASPO_SANDBOX_REUSE=0``) the run is a fork of a persistent sandboxed server (see ``zygote``), which
    saves interpreter start-up; otherwise a fresh sandbox is built for this run alone.
    Never raises for anything the program does; raises OSError only if the host cannot start it.
    """
    limits = limits or Limits()
    iso = isolation(backend)
    if reuse is None:
        reuse = os.environ.get("ASPO_SANDBOX_REUSE", "1") != "0"
    if reuse and iso.backend == "bwrap" and not args and limits.tmpfs_bytes == Limits.tmpfs_bytes:
        from aspo.rewards.sandbox.zygote import POOL

        return POOL.run({k: v.encode() if isinstance(v, str) else v for k, v in files.items()}, main, stdin,
                        limits)
    uid = _UIDS.acquire()
    job = tempfile.mkdtemp(dir=_work_root())
    os.chmod(job, 0o711)  # the run uid must reach job/files; stdin/stdout/stderr stay private (0600)
    try:
        job_files = os.path.join(job, "files")
        os.mkdir(job_files)
        for name, content in files.items():
            data = content.encode() if isinstance(content, str) else content
            with open(os.path.join(job_files, name), "wb") as f:
                f.write(data)
        if iso.backend == "bwrap":
            os.chmod(job_files, 0o755)
            for name in files:
                os.chmod(os.path.join(job_files, name), 0o644)
            main_path, cwd, prefix = f"{_JOB_DIR_INSIDE}/{main}", job_files, _bwrap_args(limits, job_files)
            env = _clean_env("/tmp")
        else:
            # scratch dir owned by the run uid; job files sit inside it (the program may read them anyway)
            scratch = job_files
            if uid is not None:
                os.chown(scratch, uid, uid)
                os.chmod(scratch, 0o700)
            main_path, cwd, prefix, env = os.path.join(scratch, main), scratch, [], _clean_env(scratch)
        enforce_nproc = iso.backend == "bwrap" or uid is not None
        cmd = prefix + [sandbox_python(), "-I", "-S", "-B", "-c", _BOOTSTRAP,
                        ",".join(f"{k}:{a}:{b}" for k, (a, b) in limits.rlimits(enforce_nproc).items()), main_path, *args]
        paths = {n: os.path.join(job, n) for n in ("stdin", "stdout", "stderr")}
        with open(paths["stdin"], "wb", opener=_private) as f:
            f.write(stdin)
        info_read, info_write = os.pipe() if iso.backend == "bwrap" else (-1, -1)
        if iso.backend == "bwrap":  # bwrap reports the namespace init's pid there (see _kill_tree)
            cmd[1:1] = ["--info-fd", str(info_write)]
        start = time.monotonic()
        try:
            with open(paths["stdin"], "rb") as fin, open(paths["stdout"], "wb", opener=_private) as fout, \
                    open(paths["stderr"], "wb", opener=_private) as ferr:
                proc = subprocess.Popen(cmd, stdin=fin, stdout=fout, stderr=ferr, cwd=cwd, env=env,
                                        start_new_session=True, close_fds=True,
                                        pass_fds=(info_write,) if info_write >= 0 else (), **_user_kwargs(uid))
            if info_write >= 0:
                os.close(info_write)
            try:
                timed_out = not _wait_exit(proc, limits.wall_seconds)
            finally:
                _kill_tree(proc, uid, iso.backend, info_read)
        finally:
            if info_read >= 0:
                os.close(info_read)
        wall = time.monotonic() - start
        stdout, out_full = _read_capped(paths["stdout"], limits.max_output_bytes)
        stderr, err_full = _read_capped(paths["stderr"], min(limits.max_output_bytes, 1 << 16))
        err_full = err_full and os.path.getsize(paths["stderr"]) >= limits.max_output_bytes
        returncode = proc.returncode
        if iso.backend == "bwrap" and returncode is not None and returncode > 128:
            returncode = 128 - returncode  # bwrap reports a signal death as 128 + signal, like a shell
        return RunResult(returncode, stdout, stderr, timed_out, out_full or err_full, wall)
    finally:
        shutil.rmtree(job, ignore_errors=True)
        _UIDS.release(uid)


def _wait_exit(proc: subprocess.Popen, timeout: float) -> bool:
    """Wait up to ``timeout`` s for ``proc``; True if it exited. (Popen.wait(timeout) polls with sleeps of
    up to 50 ms, which would dominate a 10 ms sandbox run; a pidfd wakes us exactly.)"""
    try:
        pidfd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):
        try:
            proc.wait(timeout=timeout)
            return True
        except subprocess.TimeoutExpired:
            return False
    try:
        ready, _, _ = select.select([pidfd], [], [], timeout)
    finally:
        os.close(pidfd)
    return bool(ready)


def _kill_tree(proc: subprocess.Popen, uid: int | None, backend: str, info_fd: int = -1) -> None:
    """Kill everything the run started.

    bwrap: SIGKILL the PID namespace's init (its pid comes from ``--info-fd``); the kernel then kills the
    rest of the namespace and bwrap exits having reaped it (killing bwrap itself first would leave the
    namespace's processes as zombies for the host's init to reap). rlimits as root: kill every process of
    the run's uid. rlimits otherwise: kill the session.
    """
    if backend == "bwrap" and proc.poll() is None and info_fd >= 0:
        inner = _namespace_init_pid(info_fd)
        if inner is not None:
            try:
                os.kill(inner, signal.SIGKILL)
                _wait_exit(proc, 2.0)
            except (ProcessLookupError, PermissionError):
                pass
    if proc.poll() is None or (backend != "bwrap" and uid is None):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    if proc.poll() is None:
        proc.kill()
    if uid is not None and backend != "bwrap":
        _kill_uid(uid)
    proc.wait()


def _namespace_init_pid(info_fd: int) -> int | None:
    ready, _, _ = select.select([info_fd], [], [], 0.5)
    if not ready:
        return None
    try:
        info = os.read(info_fd, 4096).decode()
        match = re.search(r'"child-pid"\s*:\s*(\d+)', info)
    except OSError:
        return None
    return int(match.group(1)) if match else None
