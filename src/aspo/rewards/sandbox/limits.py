"""What one sandboxed run may use (``Limits``) and what came back (``RunResult``)."""

from __future__ import annotations

import math
import signal
from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    """Per-run resource limits (the CPU and memory limits are per process)."""

    cpu_seconds: float = 10.0
    wall_seconds: float = 20.0
    memory_bytes: int = 1 << 30
    max_processes: int = 32  # processes + threads the run may start
    max_output_bytes: int = 16 << 20  # per written file, stdout and stderr included
    max_open_files: int = 256
    tmpfs_bytes: int = 64 << 20  # size of the writable /tmp (bwrap backend)

    def rlimits(self, nproc_in_use: int = 0) -> dict[str, tuple[int, int]]:
        """setrlimit arguments. ``nproc_in_use``: tasks the run's uid already has (RLIMIT_NPROC counts every
        task of a uid, so the cap is set that far above them: only the run's own count against it)."""
        cpu = max(1, math.ceil(self.cpu_seconds))
        nproc = self.max_processes + nproc_in_use
        return {
            "RLIMIT_CPU": (cpu, cpu + 1),  # SIGXCPU at the soft limit, SIGKILL one second later
            "RLIMIT_AS": (self.memory_bytes, self.memory_bytes),
            "RLIMIT_FSIZE": (self.max_output_bytes, self.max_output_bytes),
            "RLIMIT_NOFILE": (self.max_open_files, self.max_open_files),
            "RLIMIT_CORE": (0, 0),
            "RLIMIT_NPROC": (nproc, nproc),
        }


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
