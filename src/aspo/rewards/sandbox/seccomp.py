"""A seccomp filter for sandboxed programs: no SysV IPC objects, no system calls of a foreign ABI.

A SysV shared memory segment outlives its attachment: a process limited to 1 GiB of address space can
create, fill and detach segments without end (memory no per-process limit counts, and in a reused
sandbox it outlives the run). ``shmget``, ``msgget`` and ``semget`` therefore fail with ENOSYS (POSIX
shared memory in the capped /dev/shm still works). System calls of another ABI of the same kernel (i386
through ``int 0x80``, x32) fail too: their IPC calls have other numbers. A classic BPF program, built
here; on an architecture not listed there is no filter (:func:`program` returns b"").
"""

from __future__ import annotations

import platform
import struct

# architecture -> (AUDIT_ARCH_*, syscall numbers of shmget, msgget, semget)
_ARCHES = {
    "x86_64": (0xC000003E, (29, 68, 64)),
    "aarch64": (0xC00000B7, (194, 186, 190)),
}
_LD_ABS, _JEQ, _JGE, _RET = 0x20, 0x15, 0x35, 0x06  # BPF_LD|W|ABS, BPF_JMP|JEQ|K, BPF_JMP|JGE|K, BPF_RET|K
_ALLOW, _ENOSYS = 0x7FFF0000, 0x00050000 | 38  # SECCOMP_RET_ALLOW, SECCOMP_RET_ERRNO | ENOSYS
_X32_BIT = 0x40000000


def program(machine: str | None = None) -> bytes:
    """The filter as struct sock_filter[] (what ``bwrap --seccomp FD`` and PR_SET_SECCOMP take)."""
    arch = _ARCHES.get(machine or platform.machine())
    if arch is None:
        return b""
    audit_arch, blocked = arch
    # (code, jump-if-true target, k); targets are labels resolved below
    body: list[tuple[int, str | None, int]] = [
        (_LD_ABS, None, 4),  # seccomp_data.arch
        (_JEQ, "native", audit_arch),
        (_RET, None, _ENOSYS),
    ]
    body.append((_LD_ABS, None, 0))  # seccomp_data.nr
    native_at = len(body) - 1
    if audit_arch == 0xC000003E:
        body.append((_JGE, "deny", _X32_BIT))
    body += [(_JEQ, "deny", nr) for nr in blocked]
    body += [(_RET, None, _ALLOW), (_RET, None, _ENOSYS)]
    labels = {"native": native_at, "deny": len(body) - 1}
    out = b""
    for at, (code, target, k) in enumerate(body):
        jt = labels[target] - at - 1 if target else 0
        out += struct.pack("=HBBI", code, jt, 0, k)
    return out
