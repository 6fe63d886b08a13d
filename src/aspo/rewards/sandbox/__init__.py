"""Run untrusted Python (model-written programs) in an OS-level sandbox.

Two backends, chosen once per process (``ASPO_SANDBOX=bwrap|rlimits`` forces one):

* ``bwrap`` -- Debian's bubblewrap: new user, PID, network, IPC and UTS namespaces; the host filesystem
  read-only; a private size-capped tmpfs ``/tmp`` as the only writable place; a scrubbed environment; its own
  session. Killing bwrap kills the namespace's PID 1, and the kernel then kills every process inside, so no
  descendant (not even one that called ``setsid``) outlives a run.
* ``rlimits`` -- the fallback when bwrap is missing or cannot create namespaces: rlimits, a scrubbed
  environment, a private scratch directory and its own session. What it cannot enforce is spelled out in
  :func:`isolation` and logged once as a warning.

In both, when the scorer runs as root the program runs as a throw-away uid unique to the run slot, because
Linux does not enforce ``RLIMIT_NPROC`` for root; that uid also makes "kill everything it started" exact.
Limits (set by a tiny bootstrap inside the sandbox before any untrusted code runs): CPU seconds
(``RLIMIT_CPU``), address space (``RLIMIT_AS``), processes+threads (``RLIMIT_NPROC``), bytes per written file
(``RLIMIT_FSIZE``, which also caps stdout/stderr, captured to files), open files; the wall-clock limit is
enforced from outside by killing the whole tree.
"""

from __future__ import annotations

import atexit
import functools
import logging
import math
import os
import re
import select
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field

logger = logging.getLogger(__name__)

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
_JOB_DIR_INSIDE = "/tmp/.job"  # where bwrap mounts the (read-only) job files
_SAFE_PATH = "/usr/local/bin:/usr/bin:/bin"


@dataclass(frozen=True)
class Limits:
    """Per-run resource limits (the CPU and memory limits are per process)."""

    cpu_seconds: float = 10.0
    wall_seconds: float = 20.0
    memory_bytes: int = 1 << 30
    max_processes: int = 32  # processes + threads of the sandbox uid
    max_output_bytes: int = 16 << 20  # per written file, stdout and stderr included
    max_open_files: int = 256
    tmpfs_bytes: int = 64 << 20  # size of the writable /tmp (bwrap backend)

    def rlimits(self, enforce_nproc: bool) -> dict[str, tuple[int, int]]:
        cpu = max(1, math.ceil(self.cpu_seconds))
        out = {
            "RLIMIT_CPU": (cpu, cpu + 1),  # SIGXCPU at the soft limit, SIGKILL one second later
            "RLIMIT_AS": (self.memory_bytes, self.memory_bytes),
            "RLIMIT_FSIZE": (self.max_output_bytes, self.max_output_bytes),
            "RLIMIT_NOFILE": (self.max_open_files, self.max_open_files),
            "RLIMIT_CORE": (0, 0),
        }
        if enforce_nproc:
            out["RLIMIT_NPROC"] = (self.max_processes, self.max_processes)
        return out


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


@dataclass(frozen=True)
class Isolation:
    """What the chosen backend enforces; ``not_enforced`` lists the gaps (empty for bwrap as designed)."""

    backend: str
    drops_privileges: bool
    enforced: tuple[str, ...]
    not_enforced: tuple[str, ...] = field(default=())
    reason: str = ""

    @property
    def warning(self) -> str | None:
        if not self.not_enforced:
            return None
        return (f"code sandbox: {self.reason}; falling back to rlimits + private temp dir. NOT enforced: "
                + "; ".join(self.not_enforced) + ". Install bubblewrap (apt-get install bubblewrap) on a "
                "kernel that allows user namespaces to enforce them.")


# ---------------------------------------------------------------------------------------------------------
# backend selection


def _is_root() -> bool:
    return os.geteuid() == 0


def _world_executable(path: str) -> bool:
    """True when a non-owner uid can reach and execute ``path`` (every ancestor searchable)."""
    path = os.path.realpath(path)
    try:
        if not os.stat(path).st_mode & stat.S_IXOTH:
            return False
        parent = os.path.dirname(path)
        while parent != "/":
            if not os.stat(parent).st_mode & stat.S_IXOTH:
                return False
            parent = os.path.dirname(parent)
    except OSError:
        return False
    return True


@functools.lru_cache(maxsize=1)
def sandbox_python() -> str:
    """The interpreter that runs candidates: ``ASPO_SANDBOX_PYTHON``, this one, or the system python3.

    As root the program runs as an unprivileged uid, which must be able to execute the interpreter (a
    pyenv/venv under /root is not reachable), hence the check.
    """
    override = os.environ.get("ASPO_SANDBOX_PYTHON")
    if override:
        return override
    candidates = [os.path.realpath(sys.executable), "/usr/bin/python3", "/usr/local/bin/python3"]
    for path in candidates:
        if os.path.exists(path) and (not _is_root() or _world_executable(path)):
            return path
    return candidates[0]


def _bwrap_args(limits: Limits, job_dir: str) -> list[str]:
    bwrap = shutil.which("bwrap") or "bwrap"
    args = [bwrap, "--unshare-all", "--die-with-parent", "--new-session",
            "--ro-bind", "/", "/", "--proc", "/proc", "--dev", "/dev",
            "--size", str(limits.tmpfs_bytes), "--tmpfs", "/tmp",
            "--ro-bind", job_dir, _JOB_DIR_INSIDE, "--chdir", "/tmp", "--clearenv"]
    home = os.path.expanduser("~")
    if not _is_root() and home not in ("/", "") and not sandbox_python().startswith(home + os.sep):
        args += ["--tmpfs", home]  # same uid inside: hide the user's files (keys, tokens)
    for key, value in _clean_env("/tmp").items():
        args += ["--setenv", key, value]
    return args + ["--"]


def _clean_env(home: str) -> dict[str, str]:
    return {"PATH": _SAFE_PATH, "HOME": home, "TMPDIR": home, "LANG": "C.UTF-8", "PYTHONIOENCODING": "utf-8"}


def _probe_bwrap() -> str | None:
    """None when bwrap can create the sandbox here; otherwise why not."""
    if shutil.which("bwrap") is None:
        return "bwrap (bubblewrap) is not installed"
    job = tempfile.mkdtemp(prefix="aspo-probe-")
    os.chmod(job, 0o755)
    try:
        user = _UIDS.acquire()
        try:
            proc = subprocess.run(_bwrap_args(Limits(), job) + ["/bin/true"], capture_output=True, timeout=20,
                                  **_user_kwargs(user))
        finally:
            _UIDS.release(user)
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"bwrap failed to start: {err}"
    finally:
        shutil.rmtree(job, ignore_errors=True)
    if proc.returncode != 0:
        return f"bwrap cannot create namespaces here: {proc.stderr.decode(errors='replace').strip()[:200]}"
    return None


@functools.lru_cache(maxsize=2)
def isolation(backend: str | None = None) -> Isolation:
    """The backend in use (probed once) and exactly what it enforces."""
    backend = backend or os.environ.get("ASPO_SANDBOX") or None
    if backend not in (None, "bwrap", "rlimits"):
        from aspo.errors import UserError

        raise UserError(f"ASPO_SANDBOX={backend!r}: valid values are 'bwrap' and 'rlimits'")
    reason = "rlimits backend requested (ASPO_SANDBOX=rlimits)" if backend == "rlimits" else _probe_bwrap()
    root = _is_root()
    common = ("CPU time", "wall time (tree killed)", "address space", "output size", "scrubbed environment")
    if reason is None:
        return Isolation("bwrap", root, common + ("processes (RLIMIT_NPROC)", "no network", "read-only system",
                                                  "private /tmp", "PID namespace"))
    if backend == "bwrap":
        from aspo.errors import UserError

        raise UserError(f"ASPO_SANDBOX=bwrap but {reason}")
    gaps = ["network isolation (the program can open sockets)",
            "PID namespace (the program can see other processes)"]
    if root:
        enforced = common + ("processes (per-run uid)", "files writable only where a stranger uid may write")
        gaps.append("read-only filesystem: world-writable places such as /tmp, /var/tmp and /dev/shm stay "
                    "writable")
    else:
        enforced = common
        gaps += ["number of processes (RLIMIT_NPROC counts all of your processes, so it is not set)",
                 "filesystem protection (the program runs as you and can write or delete your files)",
                 "killing the whole tree (a process that calls setsid can outlive the wall-time kill)",
                 "privacy of your processes (it may signal or read other processes you own)"]
    iso = Isolation("rlimits", root, enforced, tuple(gaps), reason)
    logger.warning(iso.warning)
    return iso


# ---------------------------------------------------------------------------------------------------------
# per-run uids (root only)


class _UidPool:
    """Unprivileged uids, one per concurrent run; derived from the pid so two scorers do not collide."""

    def __init__(self, size: int = 256) -> None:
        self._free = list(range(size))
        self._lock = threading.Lock()

    def acquire(self) -> int | None:
        if not _is_root():
            return None
        base = 200_000 + (os.getpid() % 50_000) * 256
        with self._lock:
            return base + self._free.pop()

    def release(self, uid: int | None) -> None:
        if uid is not None:
            with self._lock:
                self._free.append(uid % 256)


_UIDS = _UidPool()


def _user_kwargs(uid: int | None) -> dict:
    if uid is None:
        return {}
    return {"user": uid, "group": uid, "extra_groups": []}


def _kill_uid(uid: int) -> None:
    """SIGKILL every process of ``uid`` (kill(-1) as that uid reaches exactly its own processes)."""
    subprocess.run(["/bin/kill", "-KILL", "-1"], user=uid, group=uid, extra_groups=[],
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)


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
