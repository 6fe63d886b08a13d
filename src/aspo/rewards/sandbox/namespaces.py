"""The second isolating backend: Linux namespaces through util-linux ``unshare``, for hosts without bwrap.

``unshare`` makes new user, mount, PID, network, IPC and UTS namespaces (the user namespace maps only
the run's uid, as root inside); then :data:`SETUP`, a few lines of stdlib Python still privileged inside
the namespace only, makes every mount read-only, no-suid (``mount_setattr``, Linux 5.12+), puts a private
size-capped tmpfs on ``/tmp`` (the job files read-only at ``/tmp/.job``) and ``/dev/shm``, hides every
top-level directory but the system's (``host.SYSTEM_PATHS`` and the interpreter's prefix) behind an empty
read-only tmpfs, forbids nested user namespaces (``max_user_namespaces`` = 0), drops
every capability for good (empty bounding set, ``SECBIT_NOROOT`` locked, ``no_new_privs``), installs the
seccomp filter of ``seccomp.py`` (no SysV IPC) and only then
forks the bootstrap that runs the candidate, staying on as the namespace's init (it reaps, and reports a
signal death as 128 + signal, which util-linux 2.38's unshare fails to pass on). Killing that init kills
the namespace. Same contract as bwrap; the hostile-program tests judge both.
"""

from __future__ import annotations

import shutil

SETUP = r"""
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.mount.argtypes = [ctypes.c_char_p] * 3 + [ctypes.c_ulong, ctypes.c_char_p]
def ok(ret, what):
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, "sandbox set-up: %s: %s" % (what, os.strerror(err)))
def mount(src, dst, fs, flags, data=None):
    ok(libc.mount(src, dst, fs, flags, data), "mount %s" % dst)
RDONLY, NOSUID, NODEV, REMOUNT, BIND, REC, PRIVATE = 1, 2, 4, 32, 4096, 16384, 1 << 18
job, size, hide = sys.argv[1].encode(), int(sys.argv[2]), sys.argv[3].encode()
visible = {p.strip("/").split("/")[0] for p in sys.argv[4].split(":")} | {"proc", "dev", "tmp"}
mount(None, b"/", None, REC | PRIVATE)
with open("/proc/sys/user/max_user_namespaces", "w") as f:  # no nested namespaces (and their tmpfs)
    f.write("0")
class MountAttr(ctypes.Structure):
    _fields_ = [("set", ctypes.c_uint64), ("clr", ctypes.c_uint64), ("prop", ctypes.c_uint64),
                ("userns", ctypes.c_uint64)]
attr = MountAttr(1 | 2, 0, 0, 0)  # MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID, on every mount below /
ok(libc.syscall(442, -100, b"/", 0x8000, ctypes.byref(attr), ctypes.sizeof(attr)), "mount_setattr /")
job_fd = os.open(job, os.O_PATH)  # held open: the job dir may itself lie under /tmp, about to be covered
mount(b"tmpfs", b"/tmp", b"tmpfs", NOSUID | NODEV, b"size=%d,mode=1777" % size)
os.mkdir("/tmp/.job")
mount(b"/proc/self/fd/%d" % job_fd, b"/tmp/.job", None, BIND | REC)
os.close(job_fd)
mount(None, b"/tmp/.job", None, REMOUNT | BIND | RDONLY | NOSUID | NODEV)
if hide:
    mount(b"tmpfs", hide, b"tmpfs", NOSUID | NODEV, b"size=1m")
for name in os.listdir("/"):  # only the system's directories: no user data, datasets or host sockets
    path = b"/" + name.encode()
    if name in visible or os.path.islink(path):
        continue
    if os.path.isdir(path):
        mount(b"tmpfs", path, b"tmpfs", RDONLY | NOSUID | NODEV, b"size=4k,mode=755")
    else:
        mount(b"/dev/null", path, None, BIND)
for path in (b"/dev/shm", b"/dev/mqueue"):  # the host's, under the read-only /dev: a capped private one
    if os.path.isdir(path):
        mount(b"tmpfs", path, b"tmpfs", NOSUID | NODEV, b"size=%d,mode=1777" % size)
for cap in range(64):  # empty bounding set: no exec can regain a capability
    libc.prctl(24, cap, 0, 0, 0)
ok(libc.prctl(28, 0x2f, 0, 0, 0), "securebits")  # NOROOT, NO_SETUID_FIXUP, KEEP_CAPS off: all locked
ok(libc.prctl(38, 1, 0, 0, 0), "no_new_privs")
prog = bytes.fromhex(sys.argv[5])  # the seccomp filter (seccomp.py): no SysV IPC, no foreign ABI
if prog:
    class Fprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_char_p)]
    ok(libc.prctl(22, 2, ctypes.byref(Fprog(len(prog) // 8, prog)), 0, 0), "seccomp")  # SECCOMP_MODE_FILTER
os.chdir("/tmp")
run = os.fork()
if run == 0:
    os.execv(sys.argv[6], sys.argv[6:])
while True:  # the namespace's init: reap everything, report the run's status as a shell would (128 + signal)
    pid, status = os.wait()
    if pid == run:
        code = os.waitstatus_to_exitcode(status)
        os._exit(128 - code if code < 0 else code)
"""


def unshare_args(
    job_dir: str, tmpfs_bytes: int, hide: str, python: str, visible: list[str], seccomp_filter: bytes
) -> list[str]:
    """Command prefix: run ``python <args>`` (appended by the caller) inside fresh namespaces."""
    unshare = shutil.which("unshare") or "unshare"
    return [
        unshare,
        "--user",
        "--map-root-user",
        "--mount",
        "--pid",
        "--fork",
        "--kill-child",
        "--mount-proc",
        "--net",
        "--ipc",
        "--uts",
        "--",
        python,
        "-I",
        "-S",
        "-B",
        "-c",
        SETUP,
        job_dir,
        str(tmpfs_bytes),
        hide,
        ":".join(visible),
        seccomp_filter.hex(),
    ]
