"""``release_free_memory`` really hands freed heap memory back to the OS (Linux / glibc only)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from aspo.memory import _libc

ROOT = Path(__file__).resolve().parent.parent

# In a fresh process: tensors freed into glibc's heap stay resident until released. A freed 16 MB tensor
# first raises glibc's mmap threshold, so the 4 MB ones after it come from the heap; a small tensor
# allocated after them keeps the heap's top from being trimmed on its own.
CHILD = """
import torch
from aspo.memory import release_free_memory

def rss_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024

big = torch.ones(4 << 20)
del big
parts = [torch.ones(1 << 20) for _ in range(100)]
keep = torch.ones(1000)
del parts
before = rss_mb()
released = release_free_memory()
print(before, rss_mb(), released)
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists() or _libc() is None, reason="Linux + glibc only")
def run_child(code: str) -> list[str]:
    """What a fresh one-thread Python process running ``code`` prints, split on whitespace."""
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"},
        timeout=120,
    ).stdout.split()


def test_freed_heap_memory_leaves_the_resident_set():
    out = run_child(CHILD)
    before, after, released = float(out[0]), float(out[1]), out[2]
    assert released == "True"
    assert before - after > 300  # of the 400 MB freed


# With the threshold pinned first, 4 MB tensors freed between small live ones (which keep the heap from
# being trimmed: without the pin all 400 MB stay resident) are mapped one by one and leave the resident set
# as they are freed, with no release call.
CHILD_FIXED = """
import torch
from aspo.memory import fix_mmap_threshold

def rss_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024

fixed = fix_mmap_threshold()
big = torch.ones(4 << 20)
del big
parts, keep = [], []
for _ in range(100):
    parts.append(torch.ones(1 << 20))
    keep.append(torch.ones(1000))
held = rss_mb()
del parts
print(held, rss_mb(), fixed)
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists() or _libc() is None, reason="Linux + glibc only")
def test_a_fixed_mmap_threshold_frees_large_tensors_as_they_go():
    out = run_child(CHILD_FIXED)
    held, after, fixed = float(out[0]), float(out[1]), out[2]
    assert fixed == "True"
    assert held - after > 300  # the 400 MB freed, without malloc_trim
