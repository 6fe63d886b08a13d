"""What this host can enforce and how a sandbox is launched and torn down here: backend choice, bwrap
arguments, per-run uids, the interpreter, and killing a run's whole process tree."""

from __future__ import annotations

import atexit
import functools
import logging
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
from collections import deque
from dataclasses import dataclass, field

from aspo.errors import SandboxUnavailable, UserError
from aspo.rewards.sandbox import seccomp
from aspo.rewards.sandbox.limits import Limits

logger = logging.getLogger("aspo.rewards.sandbox")

JOB_DIR_INSIDE = "/tmp/.job"  # where bwrap mounts the (read-only) job files
_SAFE_PATH = "/usr/local/bin:/usr/bin:/bin"
BACKENDS = ("bwrap", "unshare", "unsafe")

INSTALL_HINT = (
    "Install bubblewrap: `sudo apt-get install bubblewrap` (Debian/Ubuntu), `sudo dnf install "
    "bubblewrap` (Fedora), or `make sandbox` in the repository; it needs a kernel that allows "
    "unprivileged user namespaces"
)
UNSAFE_HINT = (
    "To run them anyway WITHOUT isolation (they can then use the network and, unless you are root, "
    "read and write your files), set ASPO_SANDBOX=unsafe"
)


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
        return (
            f"code sandbox: {self.reason}: model-written programs run WITHOUT isolation. NOT enforced: "
            + "; ".join(self.not_enforced)
            + f". {INSTALL_HINT}."
        )


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


# What a sandbox sees of the host: the system's programs, libraries and configuration, read-only. Not /var,
# /run, /home, /tmp, /srv, /mnt, ... (user data, datasets, host unix sockets).
SYSTEM_PATHS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc")


def visible_paths() -> list[str]:
    """SYSTEM_PATHS that exist here, plus the interpreter's own prefix when it lives elsewhere."""
    paths = [p for p in SYSTEM_PATHS if os.path.lexists(p)]
    prefix = os.path.dirname(os.path.dirname(os.path.realpath(sandbox_python())))  # <prefix>/bin/python
    if not any(prefix == p or prefix.startswith(p + os.sep) for p in paths):
        paths.append(prefix)
    return paths


def seccomp_fd() -> int:
    """A fresh descriptor holding the seccomp filter (bwrap reads it to its end), or -1 where there is
    none for this architecture; pass it to the bwrap process, then close it."""
    prog = seccomp.program()
    if not prog:
        return -1
    fd = os.memfd_create("aspo-seccomp", 0)
    os.write(fd, prog)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


@functools.lru_cache(maxsize=2)
def _bwrap_can_disable_userns(bwrap: str) -> bool:
    """bubblewrap >= 0.8 can forbid nested user namespaces; older ones run without that (a stated gap)."""
    try:
        return (
            b"--disable-userns" in subprocess.run([bwrap, "--help"], capture_output=True, timeout=10).stdout
        )
    except (OSError, subprocess.TimeoutExpired):
        return False


def bwrap_args(limits: Limits, job_dir: str, filter_fd: int = -1) -> list[str]:
    """The bwrap command prefix; ``filter_fd`` from :func:`seccomp_fd` (the caller passes and closes it)."""
    bwrap = shutil.which("bwrap") or "bwrap"
    args = [
        bwrap,
        "--unshare-all",
        "--unshare-user",
        "--disable-userns",
        "--die-with-parent",
        "--new-session",
    ]
    if filter_fd >= 0:
        args += ["--seccomp", str(filter_fd)]
    for path in visible_paths():
        if os.path.islink(path):  # merged /usr: /bin -> usr/bin
            args += ["--symlink", os.readlink(path), path]
        else:
            args += ["--ro-bind", path, path]
    args += [
        "--proc",
        "/proc",
        "--dev",
        "/dev",
        "--size",
        str(limits.tmpfs_bytes),
        "--tmpfs",
        "/dev/shm",  # (bwrap's own /dev/shm would be a directory of the uncapped /dev tmpfs)
        "--size",
        str(limits.tmpfs_bytes),
        "--tmpfs",
        "/tmp",
        "--ro-bind",
        job_dir,
        JOB_DIR_INSIDE,
        "--chdir",
        "/tmp",
        "--clearenv",
    ]
    for key, value in clean_env("/tmp").items():
        args += ["--setenv", key, value]
    return args + ["--"]


def clean_env(home: str) -> dict[str, str]:
    return {"PATH": _SAFE_PATH, "HOME": home, "TMPDIR": home, "LANG": "C.UTF-8", "PYTHONIOENCODING": "utf-8"}


def bwrap_problem() -> str | None:
    """None when bwrap can create the sandbox here; otherwise why not."""
    if shutil.which("bwrap") is None:
        return "bubblewrap (bwrap) is not installed"
    job = tempfile.mkdtemp(prefix="aspo-probe-")
    os.chmod(job, 0o755)
    try:
        user = UIDS.acquire()
        filter_fd = seccomp_fd()
        try:
            proc = subprocess.run(
                bwrap_args(Limits(), job, filter_fd) + ["/bin/true"],
                capture_output=True,
                timeout=20,
                pass_fds=(filter_fd,) if filter_fd >= 0 else (),
                **user_kwargs(user),
            )
        finally:
            UIDS.release(user)
            if filter_fd >= 0:
                os.close(filter_fd)
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"bwrap failed to start: {err}"
    finally:
        shutil.rmtree(job, ignore_errors=True)
    if proc.returncode != 0:
        return f"bwrap cannot create namespaces here: {proc.stderr.decode(errors='replace').strip()[:200]}"
    return None


def isolation(backend: str | None = None) -> Isolation:
    """The backend in use (probed once) and exactly what it enforces.

    Raises :class:`SandboxUnavailable` when no isolating backend works here and the unisolated mode was
    not asked for (``ASPO_SANDBOX=unsafe``): model-written code is never run unisolated by default.
    """
    backend = backend or os.environ.get("ASPO_SANDBOX") or None
    if backend == "rlimits":
        raise UserError(
            "ASPO_SANDBOX=rlimits is now called ASPO_SANDBOX=unsafe (it does not isolate the program)"
        )
    if backend not in (None, *BACKENDS):
        raise UserError(f"ASPO_SANDBOX={backend!r}: valid values are {' and '.join(map(repr, BACKENDS))}")
    return _isolation(backend)


@functools.lru_cache(maxsize=3)
def _isolation(backend: str | None) -> Isolation:
    if backend != "unsafe":
        reasons = []
        for name, problem in (("bwrap", bwrap_problem), ("unshare", unshare_problem)):
            if backend in (None, name):
                reason = problem()
                if reason is None:
                    return Isolation(
                        name,
                        _is_root(),
                        _COMMON
                        + (
                            "no network",
                            "read-only system",
                            "private /tmp",
                            "PID namespace",
                            "no capabilities",
                        ),
                    )
                reasons.append(reason)
        raise SandboxUnavailable(
            f"code sandbox: refusing to run model-written programs without isolation: "
            f"{'; '.join(reasons)}. {INSTALL_HINT}. {UNSAFE_HINT}."
        )
    iso = _unsafe_isolation()
    logger.warning(iso.warning)
    return iso


_COMMON = (
    "CPU time",
    "wall time (tree killed)",
    "address space",
    "output size",
    "processes (RLIMIT_NPROC)",
    "scrubbed environment",
)


def _unsafe_isolation() -> Isolation:
    gaps = [
        "network isolation (the program can open sockets)",
        "PID namespace (the program can see other processes)",
    ]
    if _is_root():
        enforced: tuple[str, ...] = _COMMON + (
            "a throw-away uid per run",
            "files writable only where a stranger uid may write",
        )
        gaps.append(
            "read-only filesystem: world-writable places such as /tmp, /var/tmp and /dev/shm stay writable"
        )
    else:
        enforced = _COMMON
        gaps += [
            "filesystem protection (the program runs as you and can write or delete your files)",
            "killing the whole tree (a process that calls setsid can outlive the wall-time kill)",
            "privacy of your processes (it may signal or read other processes you own)",
            "an exact process cap (your other processes starting meanwhile shrink it)",
        ]
    return Isolation("unsafe", _is_root(), enforced, tuple(gaps), "ASPO_SANDBOX=unsafe")


def hidden_home() -> str:
    """The user's home, hidden behind an empty tmpfs in the sandbox (same uid inside: keys, tokens)."""
    home = os.path.expanduser("~")
    if (
        _is_root()
        or home in ("/", "")
        or sandbox_python().startswith(home + os.sep)
        or not os.path.isdir(home)
    ):
        return ""
    return home


def unshare_problem() -> str | None:
    """None when util-linux ``unshare`` can build the namespaces sandbox here; otherwise why not."""
    from aspo.rewards.sandbox.namespaces import unshare_args

    if shutil.which("unshare") is None:
        return "util-linux unshare is not installed"
    job = tempfile.mkdtemp(prefix="aspo-probe-")
    os.chmod(job, 0o755)
    user = UIDS.acquire()
    try:
        python = sandbox_python()
        proc = subprocess.run(
            unshare_args(job, 1 << 20, hidden_home(), python, visible_paths(), seccomp.program())
            + [python, "-S", "-c", "pass"],
            capture_output=True,
            timeout=20,
            env=clean_env("/tmp"),
            **user_kwargs(user),
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"unshare failed to start: {err}"
    finally:
        UIDS.release(user)
        shutil.rmtree(job, ignore_errors=True)
    if proc.returncode != 0:
        tail = proc.stderr.decode(errors="replace").strip().splitlines()[-1:]
        return (
            f"unshare cannot build the namespaces sandbox here: {tail[0][:200] if tail else proc.returncode}"
        )
    return None


# ---------------------------------------------------------------------------------------------------------
# per-run uids (root only) and their process counts


class _UidPool:
    """Unprivileged uids, one per concurrent run; derived from the pid so two scorers do not collide.

    First in, first out: a released uid goes to the back, so what a run left behind (zombies the host's
    init has not reaped yet) rarely meets the next run; :func:`tasks_of` covers the rest."""

    def __init__(self, size: int = 256) -> None:
        self._free = deque(range(size))
        self._lock = threading.Lock()

    _FIRST = 200_000

    def acquire(self) -> int | None:
        if not _is_root():
            return None
        base = self._FIRST + (os.getpid() % 50_000) * 256
        with self._lock:
            return base + self._free.popleft()

    def release(self, uid: int | None) -> None:
        if uid is not None:
            with self._lock:  # the slot, not uid % 256: the base is not a multiple of 256
                self._free.append((uid - self._FIRST) % 256)


UIDS = _UidPool()


def user_kwargs(uid: int | None) -> dict:
    if uid is None:
        return {}
    return {"user": uid, "group": uid, "extra_groups": []}


_STATUS_FIELDS = re.compile(rb"^(Uid|Threads):\s+(\d+)", re.MULTILINE)


def tasks_of(uid: int) -> int:
    """Tasks (threads, zombies included) of ``uid`` on this machine: what RLIMIT_NPROC counts."""
    count = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status", "rb") as f:
                fields = dict(_STATUS_FIELDS.findall(f.read()))
        except OSError:
            continue
        if int(fields.get(b"Uid", -1)) == uid:
            count += max(1, int(fields.get(b"Threads", 1)))
    return count


# ---------------------------------------------------------------------------------------------------------
# processes: waiting and killing the whole tree


_WORK_ROOT: str | None = None
_WORK_LOCK = threading.Lock()


def work_root() -> str:
    global _WORK_ROOT
    with _WORK_LOCK:
        if _WORK_ROOT is None or not os.path.isdir(_WORK_ROOT):
            # tmpfs when there is one: creating and deleting job dirs on disk costs milliseconds per run
            shm = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
            _WORK_ROOT = tempfile.mkdtemp(prefix="aspo-sandbox-", dir=shm)
            atexit.register(shutil.rmtree, _WORK_ROOT, True)
            os.chmod(_WORK_ROOT, 0o711)  # strangers may reach a job dir by name, not list them
        return _WORK_ROOT


def wait_exit(proc: subprocess.Popen, timeout: float) -> bool:
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


def kill_tree(proc: subprocess.Popen, uid: int | None, backend: str, info_fd: int = -1) -> None:
    """Kill everything the run started.

    bwrap: SIGKILL the PID namespace's init (its pid comes from ``--info-fd``); the kernel then kills the
    rest of the namespace and bwrap exits having reaped it (killing bwrap itself first would leave the
    namespace's processes as zombies for the host's init to reap). unshare: the same, its namespace's
    init being unshare's child. unsafe as root: kill every process of the run's uid. unsafe otherwise:
    kill the session.
    """
    if backend == "unshare" and proc.poll() is None:
        try:
            with open(f"/proc/{proc.pid}/task/{proc.pid}/children") as f:
                for pid in f.read().split():
                    os.kill(int(pid), signal.SIGKILL)
            wait_exit(proc, 2.0)
        except (OSError, ValueError):
            pass
    if backend == "bwrap" and proc.poll() is None and info_fd >= 0:
        inner = _namespace_init_pid(info_fd)
        if inner is not None:
            try:
                os.kill(inner, signal.SIGKILL)
                wait_exit(proc, 2.0)
            except (ProcessLookupError, PermissionError):
                pass
    if proc.poll() is None or (backend == "unsafe" and uid is None):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    if proc.poll() is None:
        proc.kill()
    if uid is not None and backend == "unsafe":
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


def _kill_uid(uid: int) -> None:
    """SIGKILL every process of ``uid`` (kill(-1) as that uid reaches exactly its own processes)."""
    subprocess.run(
        ["/bin/kill", "-KILL", "-1"],
        user=uid,
        group=uid,
        extra_groups=[],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        check=False,
    )
