"""Where a training run's peak memory is: peak resident memory and time of each phase of ``aspo train``.

    .venv/bin/python benchmarks/memory_phases.py CONFIG [key=value ...]

Runs the Trainer in this process with the config and overrides (as ``aspo train`` would) and wraps its
phases: set-up (model, optimizer), held-out eval, sampling, reference / behaviour log-probs, the update's
forward + backward (``PolicyUpdate.backward``), the optimizer step, checkpointing. Linux only: before each
phase the kernel's resident high-water mark is reset (``/proc/self/clear_refs``), after it ``VmHWM`` is
that phase's peak. Prints one line per phase call, then each phase's peak and the process's.
"""

from __future__ import annotations

import functools
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def rss_mb(field: str) -> float:
    """VmRSS / VmHWM of this process in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # 5: reset the peak RSS to the current RSS


PHASES: list[tuple[str, float, float, float]] = []  # (phase, RSS before, peak during, seconds)


def measured(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        before = rss_mb("VmRSS")
        reset_peak()
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            seconds = time.perf_counter() - start
            PHASES.append((name, before, rss_mb("VmHWM"), seconds))
            print(f"  {name:<12} RSS before {before:7.0f} MB  peak {PHASES[-1][2]:7.0f} MB  {seconds:6.1f} s")

    return wrapper


def main(argv: list[str]) -> None:
    from aspo.config import load_config
    from aspo.trainer import Trainer
    from aspo.update import PolicyUpdate

    cfg = load_config(argv[0], argv[1:]).validate()
    for name, attr in (
        ("eval", "evaluate"),
        ("sample", "sample"),
        ("reference", "reference_logprobs"),
        ("optimizer", "optimizer_step"),
        ("save", "save"),
    ):
        setattr(Trainer, attr, measured(name, getattr(Trainer, attr)))
    PolicyUpdate.backward = measured("fwd+bwd", PolicyUpdate.backward)  # type: ignore[method-assign]
    reset_peak()
    start = time.perf_counter()
    trainer = Trainer(cfg, progress=False)
    PHASES.append(("setup", 0.0, rss_mb("VmHWM"), time.perf_counter() - start))
    print(f"  setup        peak {PHASES[-1][2]:7.0f} MB  {PHASES[-1][3]:6.1f} s")
    try:
        trainer.train()
    finally:
        trainer.close()
    print("peak by phase (MB):")
    for name in dict.fromkeys(p[0] for p in PHASES):
        rows = [p for p in PHASES if p[0] == name]
        seconds = sum(p[3] for p in rows)
        print(f"  {name:<12} {max(p[2] for p in rows):7.0f}  ({len(rows)} calls, {seconds:.1f} s)")
    # the resets above also reset ru_maxrss: the process's peak is the largest phase peak
    print(f"process peak RSS: {max(p[2] for p in PHASES):.0f} MB")


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "src"))
    main(sys.argv[1:])
