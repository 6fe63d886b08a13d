"""Hostile programs against what a sandbox may see and keep: the host's files and unix sockets, memory
outside the per-process limit (an uncapped /dev/shm, nested namespaces' own tmpfs), and what one run of
the reused sandboxed server leaves for the next (files it made hard to delete, /dev/shm, SysV IPC,
the next run's directory created in advance).

Each test runs on the isolating backends available here: bwrap (a sandbox per run and forks of a
persistent sandboxed server) and the unshare namespaces backend. Every attack is bounded (the sizes of
the tmpfs, the process and wall-clock limits) and leaves nothing running (``_assert_clean``).
"""

from __future__ import annotations

import os
import socket
import tempfile

import pytest
from test_sandbox import MODES, _assert_clean, _run

from aspo.rewards.sandbox import Limits
from aspo.rewards.sandbox.zygote import POOL as ZYGOTES


@pytest.fixture(params=["unshare", "bwrap", "zygote"])
def isolated(request) -> str:
    if request.param not in MODES:
        pytest.skip(f"{request.param}: no such backend here")
    return request.param


@pytest.fixture
def host_data():
    """A world-readable dataset and a 0777 unix socket in /var/tmp, where training data can live."""
    root = tempfile.mkdtemp(prefix="aspo-host-", dir="/var/tmp")
    os.chmod(root, 0o755)
    data = os.path.join(root, "train.jsonl")
    with open(data, "w") as f:
        f.write('{"input": "2 3", "output": "5"}\n')
    os.chmod(data, 0o644)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock_path = os.path.join(root, "agent.sock")
    listener.bind(sock_path)
    os.chmod(sock_path, 0o777)
    listener.listen(8)
    listener.setblocking(False)
    yield data, sock_path, listener
    listener.close()
    for name in os.listdir(root):
        os.unlink(os.path.join(root, name))
    os.rmdir(root)


def test_host_files_and_unix_sockets_are_out_of_reach(isolated, host_data):
    data, sock_path, listener = host_data
    result = _run(
        f"""
        import os, socket
        try:
            print('READ', open({data!r}).read().strip())
        except OSError:
            print('no-data')
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect({sock_path!r})
            print('CONNECTED')
        except OSError:
            print('no-socket')
        # only the system's directories: no /var, /run, /home, /root, /srv, /mnt, /work ...
        dirs = [n for n in os.listdir('/') if os.path.isdir('/' + n) and not os.path.islink('/' + n)]
        print(' '.join(sorted(n for n in dirs if os.listdir('/' + n))))
        print(os.listdir('/dev/shm'))
    """,
        isolated,
    )
    lines = result.stdout.decode().splitlines()
    assert lines[:2] == ["no-data", "no-socket"], result
    with pytest.raises(BlockingIOError):
        listener.accept()  # nothing connected
    assert set(lines[2].split()) <= {
        "usr",
        "bin",
        "sbin",
        "lib",
        "lib32",
        "lib64",
        "libx32",
        "etc",
        "proc",
        "dev",
        "tmp",
    }
    assert lines[3] == "[]"  # the host's /dev/shm (and this scorer's job dirs in it) is not visible
    _assert_clean(isolated)


def test_dev_shm_is_capped(isolated):
    # an uncapped /dev/shm is memory outside every per-process limit: write past the /tmp cap there
    cap = Limits.tmpfs_bytes
    result = _run(
        f"""
        import os
        written = 0
        try:
            while written < {cap + (32 << 20)}:  # files of 8 MiB: each under the per-file size limit
                with open('/dev/shm/hog%d' % written, 'wb') as f:
                    for _ in range(8):
                        f.write(b'x' * (1 << 20))
                        f.flush()
                        written += 1 << 20
        except OSError:
            pass
        print(written)
    """,
        isolated,
        Limits(cpu_seconds=5, wall_seconds=10, memory_bytes=256 << 20, max_processes=16),
    )
    assert int(result.stdout.split()[0]) <= cap, result
    _assert_clean(isolated)


def test_no_nested_user_namespaces(isolated):
    # a nested user namespace may mount its own tmpfs: memory that no limit of the run counts
    result = _run(
        """
        import ctypes, os
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.unshare(0x10000000 | 0x00020000) == 0:  # CLONE_NEWUSER | CLONE_NEWNS
            print('NESTED')
        else:
            print('refused', os.strerror(ctypes.get_errno()))
    """,
        isolated,
    )
    assert result.stdout.decode().startswith("refused"), result
    _assert_clean(isolated)


def test_sysv_ipc_is_refused(isolated):
    # a SysV segment outlives its attachment: create, fill, detach, repeat holds memory no limit counts
    result = _run(
        """
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        print(libc.shmget(0, 1 << 20, 0o1600), libc.msgget(0, 0o1600), libc.semget(0, 1, 0o1600))
        import multiprocessing.shared_memory as posix  # POSIX shared memory, in the capped /dev/shm, works
        shm = posix.SharedMemory(create=True, size=1 << 20)
        shm.buf[0] = 1
        shm.close()
        shm.unlink()
        print('posix-ok')
    """,
        isolated,
    )
    assert result.stdout.decode().split() == ["-1", "-1", "-1", "posix-ok"], result
    _assert_clean(isolated)


# A run that tries to poison the reused server: files it makes hard to delete (a 0500 directory filling
# /tmp, a 0000 scratch dir), the next runs' directories created in advance, data left in /dev/shm and in
# SysV shared memory for a later run to read.
_POISON = """
import ctypes, os
names = ['/tmp/run%d' % i for i in range(1, 64)] + ['/tmp/keep', os.getcwd() + '/locked']
for name in names:
    os.makedirs(name + '/sub', exist_ok=True)
    open(name + '/sub/secret', 'w').write('s3cret')
    os.chmod(name + '/sub', 0o500)
    os.chmod(name, 0o500)
os.chmod(os.getcwd() + '/locked', 0)
try:
    os.chmod('/tmp/keep', 0o700)
    with open('/tmp/keep/fill', 'wb') as f:
        while True:
            f.write(b'x' * (1 << 20))
            f.flush()
except OSError:
    pass
os.chmod('/tmp/keep', 0o500)
open('/dev/shm/secret', 'w').write('s3cret')
libc = ctypes.CDLL(None, use_errno=True)
libc.shmat.restype = ctypes.c_void_p
shm = libc.shmget(0x5EC4E7, 1 << 20, 0o1666)
if shm >= 0:
    ctypes.memmove(libc.shmat(shm, None, 0), b's3cret', 6)
print('poisoned', flush=True)
if os.getcwd() != '/tmp':  # the reused server's scratch dir for this run: lock it
    os.chmod(os.getcwd(), 0)
"""

_INSPECT = """
import os
left = set(os.listdir('/tmp')) - {'.job', os.path.basename(os.getcwd())}
print(sorted(left))
print(sorted(os.listdir('/dev/shm')))
with open('/proc/sysvipc/shm') as f:
    print(len(f.read().splitlines()) - 1)
st = os.statvfs('/tmp')
print(st.f_bavail * st.f_frsize >= 0.9 * st.f_blocks * st.f_frsize)
"""


def test_a_run_leaves_nothing_for_the_next(isolated):
    limits = Limits(cpu_seconds=5, wall_seconds=10, memory_bytes=256 << 20, max_processes=16)
    poison = _run(_POISON, isolated, limits)
    assert poison.stdout.decode().split() == ["poisoned"], poison
    for _ in range(2):  # the next runs, on the same server when it stayed up, see a clean sandbox
        seen = _run(_INSPECT, isolated, limits)
        assert seen.stdout.decode().split("\n")[:4] == ["[]", "[]", "0", "True"], seen
    _assert_clean(isolated)  # and an honest candidate still scores


@pytest.mark.skipif("zygote" not in MODES, reason="bwrap unusable here")
def test_a_server_whose_clean_up_fails_is_replaced(monkeypatch):
    # a reply saying the clean-up failed retires that server: the next run gets a fresh one
    from aspo.rewards.sandbox import zygote

    ZYGOTES.close()
    real = zygote._Zygote.run

    def dirty(self, request, stdin, timeout):
        return {**real(self, request, stdin, timeout), "dirty": True}

    monkeypatch.setattr(zygote._Zygote, "run", dirty)
    assert _run("print('ran')", "zygote").stdout == b"ran\n"  # the run itself counts
    assert ZYGOTES.live() == 0
    monkeypatch.undo()
    for _ in range(2):
        assert _run("print('ran')", "zygote").stdout == b"ran\n"
    assert ZYGOTES.live() == 1  # a clean server is reused
