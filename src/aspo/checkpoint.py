"""Atomic, resumable checkpoints: ``checkpoints/step-N/`` appears only when complete.

Layout of one checkpoint (model and tokenizer in ``save_pretrained`` format, so any checkpoint is also a
model directory that `aspo eval --model` or ``from_pretrained`` can open):

    step-N/config.json, model.safetensors, tokenizer files   the policy
    step-N/optimizer.pt, scheduler.pt                         AdamW and the LR schedule
    step-N/rng.pt                                             python / numpy / torch RNG states
    step-N/trainer_state.json                                 step, data position, counters
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

_STEP_DIR = re.compile(r"^step-(\d+)$")


def list_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints as (step, path), oldest first; temp dirs of interrupted saves are ignored."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        match = _STEP_DIR.match(child.name)
        if match and (child / "trainer_state.json").is_file():
            found.append((int(match.group(1)), child))
    return sorted(found)


def save_checkpoint(run_dir: str | Path, step: int, model: Any, tokenizer: Any, optimizer: torch.optim.Optimizer,
                    scheduler: Any, state: dict[str, Any], keep: int = 2,
                    state_dict: dict[str, torch.Tensor] | None = None) -> Path:
    """Write under a temporary name, then rename: a crash never leaves a half checkpoint called step-N."""
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step}"
    tmp = root / f".tmp-step-{step}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    model.save_pretrained(tmp, safe_serialization=True, state_dict=state_dict)
    tokenizer.save_pretrained(tmp)
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    torch.save({"python": random.getstate(), "numpy": np.random.get_state(),
                "torch": torch.get_rng_state()}, tmp / "rng.pt")
    with open(tmp / "trainer_state.json", "w") as fh:
        json.dump({"step": step, **state}, fh, indent=1)
    for path in tmp.iterdir():  # make the data durable before the rename publishes it
        with open(path, "rb") as fh:
            os.fsync(fh.fileno())
    if final.exists():  # re-saving the same step (e.g. after resume): replace it
        shutil.rmtree(final)
    os.rename(tmp, final)
    for _, old in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_training_state(path: str | Path, optimizer: torch.optim.Optimizer, scheduler: Any) -> dict[str, Any]:
    """Restore optimizer, scheduler and RNGs from ``path``; returns trainer_state.json."""
    path = Path(path)
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=False))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=False))
    rng = torch.load(path / "rng.pt", weights_only=False)
    random.setstate(rng["python"])
    np.random.set_state(rng["numpy"])
    torch.set_rng_state(rng["torch"])
    with open(path / "trainer_state.json") as fh:
        return json.load(fh)
