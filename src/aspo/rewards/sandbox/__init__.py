"""Run untrusted Python (model-written programs) in an OS-level sandbox.

The public face is small: :func:`run_python` runs one program under :class:`Limits` and returns a
:class:`RunResult`; :func:`isolation` says which backend is in use and what it enforces, and raises
:class:`SandboxUnavailable` where nothing here can isolate a program. The parts:

* ``host`` -- backend choice (``ASPO_SANDBOX=bwrap|unshare|unsafe``), bwrap arguments, per-run uids,
  killing a run's whole process tree; ``namespaces`` -- the same sandbox through util-linux ``unshare``;
* ``run`` -- one run: a fork of a persistent sandboxed server (``zygote``, the default with bwrap) or a
  fresh sandbox/process per run (``reuse=False`` or ``ASPO_SANDBOX_REUSE=0``);
* ``zygote`` / ``zygote_main`` -- that server, outside and inside the sandbox; ``harness`` -- the test
  runner the code reward sends in; ``seccomp`` -- the system-call filter (no SysV IPC).

Backends: ``bwrap`` (bubblewrap: new user, PID, network, IPC and UTS namespaces, no nested user
namespaces; only the system's directories of the host, read-only (``host.SYSTEM_PATHS``); private
size-capped tmpfs ``/tmp`` and ``/dev/shm`` as the only writable places; the seccomp filter; a scrubbed
environment; killing the namespace's PID 1 kills every process inside); ``unshare`` (the same namespaces,
mounts and filter without the bwrap binary). Where neither works, programs are refused unless
``ASPO_SANDBOX=unsafe`` asks for the unisolated mode: rlimits, a scrubbed environment, a private scratch
directory and its own session, and no isolation of the network or of your files (the gaps are listed in
:func:`isolation` and logged). In every mode, when the scorer runs as root the program runs as a throw-away
uid unique to the run slot. Limits (set by a tiny bootstrap before any untrusted code runs): CPU seconds,
address space, processes+threads (counted above what the uid already runs), bytes per written file (which
also caps stdout/stderr), open files; the wall-clock limit is enforced from outside by killing the tree.
"""

from aspo.errors import SandboxUnavailable
from aspo.rewards.sandbox.host import Isolation, isolation, sandbox_python
from aspo.rewards.sandbox.limits import Limits, RunResult
from aspo.rewards.sandbox.run import run_python

__all__ = [
    "Isolation",
    "Limits",
    "RunResult",
    "SandboxUnavailable",
    "isolation",
    "run_python",
    "sandbox_python",
]
