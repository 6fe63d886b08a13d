"""Hostile programs against the real sandbox: each attack really runs, is contained, leaves nothing running,
and the scorer then scores an honest candidate correctly.

Runs on every backend that can be tested safely here: bwrap (one sandbox per run, and forks of a
persistent sandboxed server) and the namespaces backend built with util-linux unshare when they work, and
the unisolated mode (``ASPO_SANDBOX=unsafe``) when we are root (it then runs programs as a throw-away
uid). That mode as a normal user cannot contain ``kill(-1)`` or file deletion, so it is never exercised with
hostile code. Without an isolating backend and without that opt-in, the hostile programs are refused
before they start (asserted on every machine, with bwrap and unshare hidden).
"""

from __future__ import annotations

import os
import socket
import textwrap
import time

import pytest

from aspo.errors import UserError
from aspo.rewards import sandbox
from aspo.rewards.code import check_code
from aspo.rewards.sandbox import Limits, run_python
from aspo.rewards.sandbox.zygote import POOL as ZYGOTES

FAST = Limits(
    cpu_seconds=1, wall_seconds=1.5, memory_bytes=256 << 20, max_processes=16, max_output_bytes=1 << 20
)


def _modes() -> list[str]:
    out = []
    if sandbox.isolation("unsafe").drops_privileges:
        out.append("unsafe")
    try:
        if sandbox.isolation("bwrap").backend == "bwrap":
            out += ["bwrap", "zygote"]  # one sandbox per run / forks of a persistent sandboxed server
    except sandbox.SandboxUnavailable:
        pass
    try:
        if sandbox.isolation("unshare").backend == "unshare":
            out.append("unshare")  # the namespaces backend for hosts without bwrap
    except sandbox.SandboxUnavailable:
        pass
    return out


MODES = _modes()
_KWARGS = {
    "unsafe": {"backend": "unsafe", "reuse": False},
    "unshare": {"backend": "unshare", "reuse": False},
    "bwrap": {"backend": "bwrap", "reuse": False},
    "zygote": {"backend": "bwrap", "reuse": True},
}


_WHY_NOT = {
    "unsafe": "unsafe mode runs hostile code only as root (as a throw-away uid)",
    "unshare": "util-linux unshare cannot build the namespaces sandbox here",
    "bwrap": "bubblewrap unusable here (not installed, or no user namespaces)",
}


@pytest.fixture(params=["unsafe", "unshare", "bwrap", "zygote"])
def backend(request) -> str:
    if request.param not in MODES:
        pytest.skip(_WHY_NOT.get(request.param, _WHY_NOT["bwrap"]))
    return request.param


def _sandbox_pids() -> list[int]:
    """Live (non-zombie) processes owned by this scorer's sandbox uids."""
    base = 200_000 + (os.getpid() % 50_000) * 256
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status") as f:
                status = f.read()
        except OSError:
            continue
        uid_line = next(line for line in status.splitlines() if line.startswith("Uid:"))
        if "State:\tZ" in status:
            continue  # a zombie is dead; only its parent's wait() is missing
        if base <= int(uid_line.split()[1]) < base + 256:
            pids.append(int(entry))
    return pids


def _run(code: str, backend: str, limits: Limits = FAST, **kw):
    return run_python({"main.py": textwrap.dedent(code)}, "main.py", limits=limits, **_KWARGS[backend], **kw)


def _honest_still_scores(backend: str) -> None:
    record = {
        "response": "```python\nprint(sum(map(int, input().split())))\n```",
        "tests": {"inputs": ["2 3\n", "10 -4\n"], "outputs": ["5\n", "6\n"]},
    }
    assert check_code(record, limits=FAST, **_KWARGS[backend]).reward == 1.0
    wrong = dict(record, response="print(0)")
    assert check_code(wrong, limits=FAST, **_KWARGS[backend]).reward == 0.0


def _assert_clean(backend: str) -> None:
    # idle zygotes stay up between runs: three processes each (bwrap, namespace init, server)
    expected = 3 * ZYGOTES.live()
    deadline = time.monotonic() + 2
    while len(_sandbox_pids()) != expected and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(_sandbox_pids()) == expected, "sandboxed processes outlived their run"
    _honest_still_scores(backend)


def test_ordinary_program_runs(backend):
    result = _run(
        "import sys; print(sys.stdin.read().upper()); print('err', file=sys.stderr)", backend, stdin=b"hello"
    )
    assert (result.returncode, result.stdout, result.breach) == (0, b"HELLO\n", None)
    assert b"err" in result.stderr


def test_infinite_loop_hits_cpu_limit(backend):
    limits = Limits(cpu_seconds=1, wall_seconds=10, memory_bytes=256 << 20)
    result = _run("while True:\n    pass\n", backend, limits)
    assert result.breach in ("CPU time limit exceeded", "killed (SIGKILL)")
    assert not result.timed_out  # stopped by the CPU limit, long before the wall-clock one
    _assert_clean(backend)


def test_sleep_hits_wall_limit(backend):
    limits = Limits(cpu_seconds=5, wall_seconds=1, memory_bytes=256 << 20)
    start = time.monotonic()
    result = _run("import time\ntime.sleep(60)\n", backend, limits)
    assert result.timed_out and result.breach == "wall-clock limit exceeded"
    assert time.monotonic() - start < 4
    _assert_clean(backend)


def test_fork_bomb_is_bounded_then_killed(backend):
    # children park in sleep; the parent keeps forking: the process limit must stop it
    result = _run(
        """
        import os, time
        ok = failed = 0
        for _ in range(500):
            try:
                pid = os.fork()
            except OSError:
                failed += 1
                continue
            if pid == 0:
                time.sleep(60)
                os._exit(0)
            ok += 1
        print(ok, failed, flush=True)
        while True:  # a real bomb: keep trying until killed
            try:
                os.fork()
            except OSError:
                pass
    """,
        backend,
    )
    ok, failed = map(int, result.stdout.split())
    assert ok < FAST.max_processes and failed > 0
    assert result.breach is not None  # stopped by the CPU or the wall-clock limit
    _assert_clean(backend)


def test_memory_bomb_is_refused(backend):
    result = _run(
        """
        chunks = []
        try:
            while True:
                chunks.append(bytearray(32 << 20))
        except MemoryError:
            print(len(chunks) * 32, "MiB")
            raise
    """,
        backend,
    )
    assert result.returncode != 0 and b"MemoryError" in result.stderr
    mib = int(result.stdout.split()[0])
    assert mib <= FAST.memory_bytes >> 20
    _assert_clean(backend)


def test_output_flood_is_capped(backend):
    result = _run(
        """
        import sys
        while True:
            try:
                sys.stdout.write('x' * 65536)
            except OSError:
                pass
    """,
        backend,
    )
    assert result.breach is not None
    assert len(result.stdout) <= FAST.max_output_bytes
    _assert_clean(backend)


@pytest.fixture
def visible_dir():
    """A host directory the sandbox can see (pytest's tmp_path lies under /tmp, which the namespace
    backends replace with their own tmpfs, so an attack there would fail for the wrong reason)."""
    import shutil
    import tempfile
    from pathlib import Path

    path = Path(
        tempfile.mkdtemp(prefix="aspo-victim-", dir="/var/tmp" if os.path.isdir("/var/tmp") else None)
    )
    yield path
    shutil.rmtree(path)


def test_cannot_write_or_delete_outside_scratch(backend, visible_dir):
    tmp_path = visible_dir
    if backend == "unsafe":
        # world-writable places stay writable there (documented); attack a root-owned file instead
        os.chmod(tmp_path, 0o755)
    else:
        os.chmod(tmp_path, 0o777)  # even a world-writable host dir must be read-only inside bwrap
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    os.chmod(victim, 0o644 if backend == "unsafe" else 0o666)
    escape = f"/tmp/aspo-escape-{os.getpid()}"
    result = _run(
        f"""
        import os
        for attempt in (lambda: open({str(victim)!r}, 'w').write('pwned'),
                        lambda: os.remove({str(victim)!r}),
                        lambda: open({str(tmp_path / "new.txt")!r}, 'w').write('x'),
                        lambda: open('/etc/aspo-escape', 'w').write('x')):
            try:
                attempt()
                print('ESCAPED')
            except OSError:
                print('blocked')
        if {backend in ("bwrap", "unshare")!r}:
            open({escape!r}, 'w').write('x')  # lands in the sandbox's private /tmp, not the host's
        open('scratch.txt', 'w').write('fine')  # its own scratch dir is writable
        print(open('scratch.txt').read())
    """,
        backend,
    )
    assert result.stdout.decode().split() == ["blocked"] * 4 + ["fine"], result.stderr
    assert victim.read_text() == "keep me"
    assert not (tmp_path / "new.txt").exists() and not os.path.exists(escape)
    _assert_clean(backend)


def _loopback_listener() -> tuple[socket.socket, int]:
    """A non-blocking listener on a free loopback port: a connection from the candidate would show up here."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.setblocking(False)
    return server, server.getsockname()[1]


def test_cannot_connect_to_host_port(backend):
    if backend == "unsafe":
        pytest.skip("the unsafe mode does not isolate the network (its warning says so)")
    server, port = _loopback_listener()
    try:
        result = _run(
            f"""
            import socket
            try:
                socket.create_connection(('127.0.0.1', {port}), timeout=1).sendall(b'hi')
                print('CONNECTED')
            except OSError as err:
                print('blocked', type(err).__name__)
        """,
            backend,
        )
        assert result.stdout.startswith(b"blocked")
        with pytest.raises(BlockingIOError):
            server.accept()
    finally:
        server.close()
    _assert_clean(backend)


def test_cannot_kill_parent_or_its_group(backend):
    result = _run(
        """
        import os, signal
        for attempt in (lambda: os.kill(os.getppid(), signal.SIGKILL),
                        lambda: os.killpg(os.getpgid(os.getppid()), signal.SIGKILL),
                        lambda: os.killpg(0, signal.SIGKILL),
                        lambda: os.kill(-1, signal.SIGKILL)):
            try:
                attempt()
            except OSError:
                pass
    """,
        backend,
    )
    # we are alive to read it; in zygote mode the candidate may kill its server, which is then replaced
    assert result.returncode is not None or (backend == "zygote" and result.stderr == b"sandbox server lost")
    _assert_clean(backend)


def test_cannot_read_parent_environment(backend, monkeypatch):
    secret = "aspo-secret-" + os.urandom(8).hex()
    monkeypatch.setenv("ASPO_TEST_SECRET", secret)
    result = _run(
        f"""
        import os
        print(dict(os.environ))
        for pid in [str(os.getppid()), str({os.getpid()}), '1'] + os.listdir('/proc'):
            try:
                print(open('/proc/' + pid + '/environ', 'rb').read())
            except OSError:
                pass
    """,
        backend,
    )
    assert result.returncode == 0
    assert secret.encode() not in result.stdout
    _assert_clean(backend)


def test_isolation_reports_gaps_of_the_unsafe_mode():
    iso = sandbox.isolation("unsafe")
    assert iso.backend == "unsafe" and iso.warning is not None
    assert "network" in iso.warning and "NOT enforced" in iso.warning and "WITHOUT isolation" in iso.warning
    with pytest.raises(UserError, match="ASPO_SANDBOX=unsafe"):
        sandbox.isolation("rlimits")  # the old name of that mode is refused, with the new one


@pytest.mark.skipif("zygote" not in MODES, reason="bwrap unusable here")
def test_zygote_runs_are_isolated_from_each_other():
    # run 1 leaves a process, files, a patched module, and tries to reach its server through /proc
    first = _run(
        """
        import math, os, time
        math.pi = 3
        open('/tmp/left-behind', 'w').write('x')
        open('/dev/shm/left-behind', 'w').write('x')
        if os.fork() == 0:
            time.sleep(60)
            os._exit(0)
        server = os.getppid()
        for path in ('/proc/%d/mem' % server, '/proc/%d/environ' % server, '/proc/%d/fd/0' % server):
            try:
                open(path, 'rb').read(1)
                print('REACHED', path)
            except OSError:
                print('blocked')
    """,
        "zygote",
    )
    assert first.stdout.decode().split() == ["blocked"] * 3
    second = _run(
        """
        import math, os
        print(math.pi > 3.14)
        left = set(os.listdir('/tmp')) - {'.job', os.path.basename(os.getcwd())}  # .job: the read-only server
        print(left == set(), sorted(os.listdir('/dev/shm')))
        pids = sorted(int(p) for p in os.listdir('/proc') if p.isdigit())
        print(pids == sorted({1, os.getppid(), os.getpid()}))
    """,
        "zygote",
    )
    assert second.stdout.decode().split() == ["True", "True", "[]", "True"], second.stderr
    _assert_clean("zygote")


def test_hostile_programs_are_refused_without_isolation(no_bwrap, tmp_path):
    os.chmod(tmp_path, 0o777)
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    server, port = _loopback_listener()
    attack = (
        f"import socket\nopen({str(victim)!r}, 'w').write('pwned')\nopen({str(tmp_path / 'new')!r}, 'w')\n"
        f"socket.create_connection(('127.0.0.1', {port}), timeout=1).sendall(b'hi')\n"
    )
    record = {"response": attack, "tests": {"inputs": [""], "outputs": [""]}}
    try:
        for attempt in (
            lambda: run_python({"main.py": attack}, "main.py"),
            lambda: run_python({"main.py": attack}, "main.py", reuse=False),
            lambda: check_code(record),
        ):
            with pytest.raises(sandbox.SandboxUnavailable) as refused:
                attempt()
            message = str(refused.value)
            assert "bubblewrap (bwrap) is not installed" in message  # why
            assert "apt-get install bubblewrap" in message and "ASPO_SANDBOX=unsafe" in message  # what to do
        with pytest.raises(BlockingIOError):
            server.accept()  # no connection was made
    finally:
        server.close()
    assert victim.read_text() == "keep me" and not (tmp_path / "new").exists()


@pytest.mark.skipif("unsafe" not in MODES, reason="needs root (the unsafe mode's throw-away uids)")
def test_leftover_processes_do_not_count_against_the_cap(monkeypatch):
    # A run's killed children can linger as zombies until the host's init reaps them, and RLIMIT_NPROC
    # counts every task of a uid: the next run on that uid must still get its own max_processes.
    import subprocess

    from aspo.rewards.sandbox import host

    pool = host._UidPool(size=1)
    monkeypatch.setattr(host, "UIDS", pool)
    uid = pool.acquire()
    pool.release(uid)
    leftovers = [
        subprocess.Popen(["sleep", "60"], **host.user_kwargs(uid)) for _ in range(2 * FAST.max_processes)
    ]
    try:
        assert host.tasks_of(uid) == len(leftovers)
        _honest_still_scores("unsafe")
        result = _run(
            """
            import os, time
            ok = 0
            for _ in range(100):
                try:
                    if os.fork() == 0:
                        time.sleep(60)
                        os._exit(0)
                    ok += 1
                except OSError:
                    break
            print(ok)
        """,
            "unsafe",
        )
        assert 0 < int(result.stdout) < FAST.max_processes  # still capped, at its own share
    finally:
        for proc in leftovers:
            proc.kill()
            proc.wait()
