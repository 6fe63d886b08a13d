"""What this host can enforce, and how a sandbox is launched here (bwrap arguments, uids, interpreter).

Split from the package's ``__init__`` (which runs programs) to keep both readable.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass, field

logger = logging.getLogger("aspo.rewards.sandbox")

JOB_DIR_INSIDE = "/tmp/.job"  # where bwrap mounts the (read-only) job files
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
            "--ro-bind", job_dir, JOB_DIR_INSIDE, "--chdir", "/tmp", "--clearenv"]
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
