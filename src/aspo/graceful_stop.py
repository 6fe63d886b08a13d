"""SIGTERM / SIGINT during training: stop at a step boundary so that the run can continue exactly.

The first signal either abandons the step in progress -- only while nothing has changed yet (before its
first optimizer step; one process only) -- or lets it finish (its metrics, eval and log included). The
trainer then checkpoints the last finished step and raises `Interrupted`. A second signal stops at once
(the last checkpoint on disk is still complete: saves are atomic). With several processes every rank
finishes the step and the ranks agree on stopping after every step, the last one included (any rank
signalled stops all); the handlers stay until the process group is torn down, because a rank killed by a
late signal would leave the others waiting in a collective (the launcher delivers its signal to each rank
at its own moment).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from aspo.checkpoint import rng_state, set_rng_state
from aspo.errors import Interrupted

SIGNALS = (signal.SIGTERM, signal.SIGINT)
T = TypeVar("T")


class StepAbandoned(BaseException):
    """Raised by the first signal inside an untouched step; BaseException so `except Exception` (reward
    functions, thread pools) cannot swallow it."""


class GracefulStop:
    """Context manager that owns SIGTERM / SIGINT while it is active (main thread only; inert elsewhere)."""

    def __init__(self, *, can_abandon: bool) -> None:
        self.can_abandon = can_abandon
        self.signum: int | None = None
        self._untouched = False  # inside `attempt()` and no optimizer step taken yet
        self._previous: dict[int, Any] = {}
        self._hook: Any = None

    def __enter__(self) -> GracefulStop:
        return self.install()

    def __exit__(self, *exc: object) -> None:
        self.restore()

    def install(self) -> GracefulStop:
        """Take over SIGTERM / SIGINT (and watch optimizer steps) until ``restore``."""
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._on_signal)
        import torch.optim.optimizer as optim

        self._hook = optim.register_optimizer_step_pre_hook(self._on_optimizer_step)
        return self

    def restore(self) -> None:
        """Give SIGTERM / SIGINT back to the handlers found by ``install`` (idempotent)."""
        for sig, previous in self._previous.items():
            signal.signal(sig, previous if previous is not None else signal.SIG_DFL)
        self._previous.clear()
        if self._hook is not None:
            self._hook.remove()
            self._hook = None

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self.signum is not None:
            raise Interrupted(
                signum,
                f"stopped at once by a second {signal.Signals(signum).name}; the step in progress is lost",
            )
        self.signum = signum
        if self._untouched:
            self._untouched = False
            raise StepAbandoned

    def _on_optimizer_step(self, *args: Any) -> None:
        self._untouched = False  # from here on the step changes the weights: it must finish

    def attempt(self, step: Callable[[], T]) -> T | None:
        """``step()``, or None when a signal abandoned it before its first optimizer step; the RNGs are then
        put back, so a checkpoint written next is the one the last finished step would have written. (The
        caller puts back its own counters.)"""
        if not self.can_abandon:
            return step()
        saved = rng_state()
        self._untouched = True
        try:
            result = step()
            self._untouched = False  # a signal before this line still finds the step untouched: abandoned
            return result
        except StepAbandoned:
            set_rng_state(saved)
            return None

    def requested(self, accelerator: Any) -> bool:
        """Whether any rank was signalled (a collective call: every rank must ask at the same step)."""
        from aspo.distributed import reduce_sum

        return reduce_sum(accelerator, float(self.signum is not None)) > 0
