"""Handing memory a phase freed back to the operating system before the next phase allocates its own.

A training step's phases use memory of different shapes: sampling a KV cache, the update the layers'
activations, the held-out eval a larger KV cache. On Linux, glibc keeps most of what torch frees in its
heap (tensors below its mmap threshold, which rises to 32 MB as large tensors are freed), so a process's
resident memory stays at the sum of the phases' high-water marks rather than their maximum: measured on
SmolLM2-135M (docs/performance.md), the final eval started from 2.8 GB resident of which ~0.8 GB was
free heap. ``release_free_memory`` returns the free pages (``malloc_trim``); the next phase faults
fresh pages in, a fraction of a second per GB.

Within a phase the same heap holds the update's peak up: once a freed large tensor has raised the mmap
threshold to 32 MB, every layer's temporaries (a few MB each) come from the heap, interleaved with the
tensors autograd keeps, so freed holes cannot be trimmed and the heap outgrows what is live. On
SmolLM2-135M one checkpointed forward + backward of the real job's batch peaked 2.4 GB above its
baseline with the dynamic threshold and 1.2 GB with a fixed 1 MB one (docs/performance.md).
``fix_mmap_threshold`` pins it: tensors from 1 MB up are mapped and unmapped with their lifetime.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from typing import Any


@functools.cache
def _libc() -> Any | None:
    """glibc, or None where the C library has no ``malloc_trim`` (macOS, musl)."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
    except (OSError, AttributeError, TypeError):
        return None
    return libc


# glibc's mallopt parameter number for the mmap threshold (malloc.h); setting it also stops the dynamic rise
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 1 << 20


def fix_mmap_threshold(nbytes: int = MMAP_THRESHOLD_BYTES) -> bool:
    """Allocations of ``nbytes`` and more get their own mapping, returned to the OS when freed, for the rest
    of the process (glibc no longer raises the threshold). True if set (False where unsupported)."""
    libc = _libc()
    if libc is None or not hasattr(libc, "mallopt"):
        return False
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, int(nbytes)))


def release_free_memory() -> bool:
    """Return the C heap's free pages to the OS; True if any were (False also where unsupported)."""
    libc = _libc()
    return bool(libc.malloc_trim(0)) if libc is not None else False
