"""One sandboxed run of a Python program: ``run_python``.

With bwrap and reuse (the default) the run is a fork of a persistent sandboxed server (``zygote``);
otherwise a fresh sandbox (bwrap, or namespaces through util-linux unshare) or a fresh unisolated process
(``ASPO_SANDBOX=unsafe``) is built for it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time

import aspo.rewards.sandbox.host as host
from aspo.rewards.sandbox import seccomp
from aspo.rewards.sandbox.limits import Limits, RunResult
from aspo.rewards.sandbox.namespaces import unshare_args

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


def _private(path: str, flags: int) -> int:
    return os.open(path, flags, 0o600)


def _read_capped(path: str, cap: int) -> tuple[bytes, bool]:
    with open(path, "rb") as f:
        data = f.read(cap + 1)
    return data[:cap], len(data) >= cap


def run_python(
    files: dict[str, str | bytes],
    main: str,
    *,
    args: list[str] | tuple[str, ...] = (),
    stdin: bytes = b"",
    limits: Limits | None = None,
    backend: str | None = None,
    reuse: bool | None = None,
) -> RunResult:
    """Run ``python main`` in the sandbox with ``files`` (name -> content) next to it.

    Its working directory is a private writable scratch dir. With bwrap and ``reuse`` (default: on unless
    ``ASPO_SANDBOX_REUSE=0``) the run is a fork of a persistent sandboxed server (see ``zygote``), which
    saves interpreter start-up; otherwise a fresh sandbox is built for this run alone.
    Never raises for anything the program does; raises OSError if the host cannot start it and
    SandboxUnavailable when nothing here can isolate it (see ``host.isolation``).
    """
    limits = limits or Limits()
    iso = host.isolation(backend)
    if reuse is None:
        reuse = os.environ.get("ASPO_SANDBOX_REUSE", "1") != "0"
    if reuse and iso.backend == "bwrap" and not args and limits.tmpfs_bytes == Limits.tmpfs_bytes:
        from aspo.rewards.sandbox.zygote import POOL

        return POOL.run(
            {k: v.encode() if isinstance(v, str) else v for k, v in files.items()}, main, stdin, limits
        )
    uid = host.UIDS.acquire()
    filter_fd = -1
    job = tempfile.mkdtemp(dir=host.work_root())
    os.chmod(job, 0o711)  # the run uid must reach job/files; stdin/stdout/stderr stay private (0600)
    try:
        job_files = os.path.join(job, "files")
        os.mkdir(job_files)
        for name, content in files.items():
            data = content.encode() if isinstance(content, str) else content
            with open(os.path.join(job_files, name), "wb") as f:
                f.write(data)
        if iso.backend in ("bwrap", "unshare"):
            os.chmod(job_files, 0o755)
            for name in files:
                os.chmod(os.path.join(job_files, name), 0o644)
            main_path, cwd = f"{host.JOB_DIR_INSIDE}/{main}", job_files
            prefix = (
                host.bwrap_args(limits, job_files, filter_fd := host.seccomp_fd())
                if iso.backend == "bwrap"
                else unshare_args(
                    job_files,
                    limits.tmpfs_bytes,
                    host.hidden_home(),
                    host.sandbox_python(),
                    host.visible_paths(),
                    seccomp.program(),
                )
            )
            env = host.clean_env("/tmp")
            in_use = int(iso.backend == "unshare")  # per user namespace (fresh per run); + unshare's init
        else:
            # scratch dir owned by the run uid; job files sit inside it (the program may read them anyway)
            scratch = job_files
            if uid is not None:
                os.chown(scratch, uid, uid)
                os.chmod(scratch, 0o700)
            main_path, cwd, prefix, env = os.path.join(scratch, main), scratch, [], host.clean_env(scratch)
            in_use = host.tasks_of(os.getuid() if uid is None else uid)  # leftovers, or your own processes
        rlimits = ",".join(f"{k}:{a}:{b}" for k, (a, b) in limits.rlimits(in_use).items())
        cmd = prefix + [host.sandbox_python(), "-I", "-S", "-B", "-c", _BOOTSTRAP, rlimits, main_path, *args]
        paths = {n: os.path.join(job, n) for n in ("stdin", "stdout", "stderr")}
        with open(paths["stdin"], "wb", opener=_private) as f:
            f.write(stdin)
        info_read, info_write = os.pipe() if iso.backend == "bwrap" else (-1, -1)
        if iso.backend == "bwrap":  # bwrap reports the namespace init's pid there (see host.kill_tree)
            cmd[1:1] = ["--info-fd", str(info_write)]
        start = time.monotonic()
        try:
            try:
                with (
                    open(paths["stdin"], "rb") as fin,
                    open(paths["stdout"], "wb", opener=_private) as fout,
                    open(paths["stderr"], "wb", opener=_private) as ferr,
                ):
                    proc = subprocess.Popen(
                        cmd,
                        stdin=fin,
                        stdout=fout,
                        stderr=ferr,
                        cwd=cwd,
                        env=env,
                        start_new_session=True,
                        close_fds=True,
                        pass_fds=tuple(fd for fd in (info_write, filter_fd) if fd >= 0),
                        **host.user_kwargs(uid),
                    )
            finally:  # bwrap holds its own copies now (or never started)
                for fd in (info_write, filter_fd):
                    if fd >= 0:
                        os.close(fd)
            try:
                timed_out = not host.wait_exit(proc, limits.wall_seconds)
            finally:
                host.kill_tree(proc, uid, iso.backend, info_read)
        finally:
            if info_read >= 0:
                os.close(info_read)
        wall = time.monotonic() - start
        stdout, out_full = _read_capped(paths["stdout"], limits.max_output_bytes)
        stderr, err_full = _read_capped(paths["stderr"], min(limits.max_output_bytes, 1 << 16))
        err_full = err_full and os.path.getsize(paths["stderr"]) >= limits.max_output_bytes
        returncode = proc.returncode
        if iso.backend != "unsafe" and returncode is not None and returncode > 128:
            returncode = 128 - returncode  # a signal death comes back as 128 + signal, like a shell
        return RunResult(returncode, stdout, stderr, timed_out, out_full or err_full, wall)
    finally:
        shutil.rmtree(job, ignore_errors=True)
        host.UIDS.release(uid)
