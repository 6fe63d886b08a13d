"""The run's metric stream: ``metrics.jsonl`` (one object per step), mirrored to TensorBoard and/or W&B.

Names: anything measuring wall time or speed is ``time/...`` or ``perf/...`` (excluded when runs are
compared for reproducibility); held-out rows carry ``eval/...``.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from pathlib import Path
from typing import Any


def _rows(path: Path) -> list[dict[str, Any]]:
    """The JSON lines of ``path``; a last line cut short (a process killed mid-write) is not a row."""
    with open(path) as fh:
        lines = [line for line in fh if line.strip()]
    rows = []
    for i, line in enumerate(lines):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if i < len(lines) - 1 or line.endswith("\n"):
                raise
    return rows


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    path = Path(path)
    if path.is_dir():
        path = path / "metrics.jsonl"
    if not path.is_file():
        return []
    return _rows(path)


def truncate_after(path: Path, step: int) -> None:
    """Drop rows past ``step`` (a resumed run rewrites them)."""
    if not path.is_file():
        return
    keep = [json.dumps(row, ensure_ascii=False) + "\n" for row in _rows(path) if row.get("step", 0) <= step]
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(keep), encoding="utf-8")
    tmp.replace(path)


def append_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    """``append_lines`` of one JSON object per row."""
    append_lines(path, [json.dumps(row, ensure_ascii=False) + "\n" for row in rows])


def append_lines(path: Path, lines: list[str]) -> None:
    """Append whole lines or nothing: a failed write (a full disk, a quota) is cut back off the file and
    raised as one UserError naming it -- the run's checkpoints are untouched, so it can resume."""
    data = memoryview("".join(lines).encode("utf-8"))
    with open(path, "ab", buffering=0) as fh:  # unbuffered: nothing left to fail again at close
        size = fh.seek(0, os.SEEK_END)
        try:
            while data:
                data = data[fh.write(data) :]
        except OSError as err:
            try:
                fh.truncate(size)
            except OSError:
                pass  # a torn last line is skipped when the file is read
            raise write_error(path, err) from err


def write_error(path: Path, err: OSError) -> Exception:
    """The one-line error for a failed write of a run file (``path``, directly in the run directory)."""
    from aspo.errors import UserError

    reason = (err.strerror or str(err)).lower()
    return UserError(
        f"could not write {path}: {reason}; the run stopped and its checkpoints in "
        f"{path.parent / 'checkpoints'} are intact: free space and continue with resume=true"
    )


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
        append_lines(self.path, [json.dumps(row) + "\n"])
        if self.writer is not None:
            try:
                for key, value in metrics.items():
                    if isinstance(value, (int, float)) and math.isfinite(value):
                        self.writer.add_scalar(key, value, step)
            except OSError as err:  # its writer thread's failure, raised here
                raise write_error(self.path.parent / "tensorboard", err) from err
        if self.wandb is not None:
            self.wandb.log(step, metrics)

    def close(self) -> None:
        if self.wandb is not None:
            self.wandb.close()
        if self.writer is not None:
            try:
                self.writer.flush()
                self.writer.close()
            except OSError as err:  # a full disk: reported already (or next); this must not mask that error
                warnings.warn(f"TensorBoard events could not be written: {err}", stacklevel=2)


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN/inf
    return value
