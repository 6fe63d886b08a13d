"""CPU thread policy: how many threads a process computes with and how its idle threads wait.

The goal is graceful degradation: a run sharing the machine (a busy core, a second training, an
evaluation beside it) should slow roughly in proportion to the CPU it lost. What breaks that is
*spinning*: by default libgomp (torch's OpenMP, also driving MKL and oneDNN here) keeps a thread that
reaches the end of a parallel region busy-waiting for ~300k iterations (milliseconds) for its siblings.
When a sibling is descheduled, the spinner burns the very core the sibling needs, and every parallel
region stalls for a scheduler time slice. ``benchmarks/contention.py`` measures the candidates.

Two parts, because they take effect at different times:

* ``configure_environment()`` -- environment variables read once when a library loads (libgomp's wait
  spin count, OpenBLAS's and tokenizers' own pools). It must run before torch is imported, so the CLI calls
  it first thing; a value the user already set is never overridden.
* ``apply_threads(requested)`` -- torch's intra-op thread count, set when a command starts computing:
  ``requested`` (``train.threads``) when > 0, else ``OMP_NUM_THREADS`` when the user set it, else
  ``default_threads()``.
* ``LoadFollower`` -- when nobody fixed the count, training re-sizes the pool between steps to the cores
  other processes leave free (measured from ``/proc/stat`` minus this process's own CPU time). A short spin
  alone still loses a core's worth of time slices to every descheduled sibling; one thread fewer beside a
  busy core does not. The count changes results only by float rounding (reductions split over threads).

Stdlib only at import time: the CLI and the benchmark drivers import this before torch.
"""

from __future__ import annotations

import os
import time
from collections.abc import MutableMapping

# A thread that reaches the end of a parallel region spins this many iterations (tens of microseconds)
# before it sleeps. Long enough to stay hot between the many tiny back-to-back regions of a small model's
# step, short enough not to burn a core a descheduled sibling needs. Chosen by measurement
# (benchmarks/contention.py, docs/performance.md): on 2 cores, idle 1.07x libgomp's default spin and at most
# 2.3x idle when sharing the machine, where the default spin took up to 6.1x and sleeping at once (passive)
# or one thread cost 1.4-1.5x when idle.
SPIN_COUNT = "3000"

# Read at library load. Keys already present in the environment win.
ENV_DEFAULTS = {
    "GOMP_SPINCOUNT": SPIN_COUNT,
    # numpy's OpenBLAS keeps its own spinning pool; aspo's numpy work is small and single-threaded
    "OPENBLAS_NUM_THREADS": "1",
    # the Rust tokenizers' pool: tokenising is a tiny share of a step, and its threads warn after a fork
    "TOKENIZERS_PARALLELISM": "false",
}


def usable_cores() -> int:
    """CPUs this process may run on (its affinity mask: honours taskset, cgroup cpusets)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


def configure_environment(environ: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """Fill in ``ENV_DEFAULTS`` that the user has not set; returns what was set.

    An explicit ``OMP_WAIT_POLICY`` is the user's choice of how threads wait, so no spin count is added
    then (libgomp would let a spin count override it).
    """
    env = os.environ if environ is None else environ
    added = {}
    for key, value in ENV_DEFAULTS.items():
        if key in env or (key == "GOMP_SPINCOUNT" and "OMP_WAIT_POLICY" in env):
            continue
        env[key] = added[key] = value
    return added


def user_threads(environ: MutableMapping[str, str] | None = None) -> int | None:
    """The thread count the user fixed with ``OMP_NUM_THREADS`` (its outer level), or None if unset or
    not a positive number."""
    env = os.environ if environ is None else environ
    value = env.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    return int(value) if value.isdigit() and int(value) > 0 else None


def default_threads(environ: MutableMapping[str, str] | None = None) -> int:
    """Intra-op threads when nothing is requested: ``OMP_NUM_THREADS`` if set, else every usable core."""
    return user_threads(environ) or usable_cores()


def apply_threads(requested: int = 0) -> int:
    """Set torch's intra-op threads (``requested`` when > 0, else ``default_threads()``); return the count."""
    import torch

    threads = requested if requested > 0 else default_threads()
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return threads


def child_environment(threads: int, environ: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """A copy of the environment for a worker process limited to ``threads`` threads, with the policy."""
    env = dict(os.environ if environ is None else environ)
    env.update({"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)})
    configure_environment(env)
    return env


def threads_beside(others_busy: float, cores: int) -> int:
    """Threads to compute with when other processes keep ``others_busy`` cores (of our ``cores``) busy:
    a core they hold at least half the time is left to them, since a thread of ours there would make
    every parallel region wait for it."""
    return max(1, min(cores, cores - int(others_busy + 0.5)))


def _busy_seconds(cpus: list[int], stat: str = "/proc/stat") -> float:
    """CPU time spent busy (not idle or waiting on I/O) on ``cpus`` since boot, by every process."""
    tick = os.sysconf("SC_CLK_TCK")
    wanted = {f"cpu{c}" for c in cpus}
    busy = 0
    with open(stat) as f:
        for line in f:
            fields = line.split()
            if fields and fields[0] in wanted:
                user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[1:9])
                busy += user + nice + system + irq + softirq + steal
    return busy / tick


def _own_cpu_seconds() -> float:
    """This process's CPU time, every thread, plus its finished children (sandboxed checks are ours)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


class LoadFollower:
    """Between steps, sizes torch's thread pool to the cores other processes leave free.

    ``others_busy`` over a window = (busy time on our CPUs) - (our own CPU time), per second of wall time.
    Windows shorter than ``min_window_s`` are extended to the next call: /proc/stat counts in 10 ms ticks.
    """

    def __init__(self, min_window_s: float = 1.0) -> None:
        self.cpus = sorted(os.sched_getaffinity(0))
        self.min_window_s = min_window_s
        self.threads = 0
        self._last = self._sample()

    @classmethod
    def if_enabled(
        cls, requested: int, environ: MutableMapping[str, str] | None = None
    ) -> LoadFollower | None:
        """A follower unless the count is fixed (``train.threads`` > 0 or ``OMP_NUM_THREADS``), there is one
        core only, or the kernel's counters are unreadable (not Linux)."""
        if requested > 0 or user_threads(environ) is not None or usable_cores() < 2:
            return None
        try:
            return cls()
        except (OSError, ValueError, AttributeError):
            return None

    def _sample(self) -> tuple[float, float, float]:
        return time.monotonic(), _busy_seconds(self.cpus), _own_cpu_seconds()

    def others_busy(self) -> float | None:
        """Cores other processes kept busy since the last window closed; None while it is too short."""
        now = self._sample()
        wall = now[0] - self._last[0]
        if wall < self.min_window_s:
            return None
        others = ((now[1] - self._last[1]) - (now[2] - self._last[2])) / wall
        self._last = now
        return max(0.0, others)

    def adjust(self) -> int:
        """Re-measure and set torch's intra-op threads if the free cores changed; the count in use."""
        import torch

        others = self.others_busy()
        if others is not None:
            self.threads = threads_beside(others, len(self.cpus))
            if torch.get_num_threads() != self.threads:
                torch.set_num_threads(self.threads)
        return torch.get_num_threads()
