"""Weights & Biases as one more sink of the metric stream (``train.report_to=...,wandb``).

The run gets the run directory's name, the resolved config, and every row ``metrics.jsonl`` gets, under the
same names and steps. W&B's own environment variables apply (``WANDB_PROJECT``, ``WANDB_ENTITY``,
``WANDB_MODE=offline`` for a local run to ``wandb sync`` later, ``WANDB_DIR``); without ``WANDB_DIR`` its
files go into the run directory. The W&B run id is kept in the run directory, so ``resume=true`` continues
the same W&B run; steps it already has (logged before an interruption) are ignored by W&B, and a resumed
run repeats them exactly anyway.
"""

from __future__ import annotations

import math
import os
import re
import uuid
from pathlib import Path
from typing import Any

from aspo.errors import UserError

RUN_ID_FILE = "wandb_run_id"


def _import_wandb() -> Any:
    try:
        import wandb
    except ImportError as err:
        raise UserError(
            "train.report_to includes wandb, but the wandb package is not installed: "
            'pip install "aspo[wandb]"'
        ) from err
    return wandb


class WandbRun:
    """A W&B run bound to one aspo run directory."""

    def __init__(self, run_dir: str | Path, config: dict[str, Any], resume: bool) -> None:
        wandb = _import_wandb()
        run_dir = Path(run_dir)
        id_file = run_dir / RUN_ID_FILE
        if resume and id_file.is_file():
            run_id = id_file.read_text().strip()
        else:  # W&B ids allow letters, digits, - and _ only
            run_id = re.sub(r"[^A-Za-z0-9_-]", "-", run_dir.name)[-56:] + "-" + uuid.uuid4().hex[:8]
            id_file.write_text(run_id + "\n")
        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT") or "aspo",
            name=run_dir.name,
            id=run_id,
            resume="allow",
            config=config,
            dir=None if os.environ.get("WANDB_DIR") else str(run_dir),
            settings=wandb.Settings(silent=True, save_code=False),
        )

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        row = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and math.isfinite(v)}
        self.run.log(row, step=step)

    def close(self) -> None:
        self.run.finish()
