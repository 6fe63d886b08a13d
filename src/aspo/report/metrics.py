"""The run's metric stream: ``metrics.jsonl`` (one object per step), mirrored to TensorBoard and/or W&B.

Names: anything measuring wall time or speed is ``time/...`` or ``perf/...`` (excluded when runs are
compared for reproducibility); held-out rows carry ``eval/...``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    path = Path(path)
    if path.is_dir():
        path = path / "metrics.jsonl"
    if not path.is_file():
        return []
    with open(path) as fh:
        return [json.loads(line) for line in fh if line.strip()]


def truncate_after(path: Path, step: int) -> None:
    """Drop rows past ``step`` (a resumed run rewrites them)."""
    if not path.is_file():
        return
    with open(path) as fh:
        keep = [line for line in fh if line.strip() and json.loads(line).get("step", 0) <= step]
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(keep))
    tmp.replace(path)


class MetricsLogger:
    """Appends rows to ``metrics.jsonl`` and mirrors scalars to the ``report_to`` sinks: TensorBoard (when
    installed) and W&B (``config``: the resolved run config it records)."""

    def __init__(
        self,
        run_dir: str | Path,
        resume_step: int | None = None,
        report_to: tuple[str, ...] | list[str] = ("tensorboard",),
        config: dict[str, Any] | None = None,
    ) -> None:
        self.path = Path(run_dir) / "metrics.jsonl"
        if resume_step is not None:
            truncate_after(self.path, resume_step)
            truncate_after(Path(run_dir) / "samples.jsonl", resume_step)
        self.wandb = None
        if "wandb" in report_to:
            from aspo.report.wandb_run import WandbRun

            self.wandb = WandbRun(run_dir, config or {}, resume=resume_step is not None and resume_step >= 0)
        self.writer = None
        if "tensorboard" in report_to:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(
                    str(Path(run_dir) / "tensorboard"),
                    purge_step=None if resume_step is None else resume_step + 1,
                )
            except ImportError:  # tensorboard is a dependency, but a trimmed install should still train
                self.writer = None

    def log(self, step: int, metrics: dict[str, float]) -> None:
        row = {"step": step, **{k: _clean(v) for k, v in metrics.items()}}
        with open(self.path, "a") as fh:
            fh.write(json.dumps(row) + "\n")
        if self.writer is not None:
            for key, value in metrics.items():
                if isinstance(value, (int, float)) and math.isfinite(value):
                    self.writer.add_scalar(key, value, step)
        if self.wandb is not None:
            self.wandb.log(step, metrics)

    def close(self) -> None:
        if self.wandb is not None:
            self.wandb.close()
        if self.writer is not None:
            self.writer.flush()
            self.writer.close()


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN/inf
    return value
