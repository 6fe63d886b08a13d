"""Atomic, resumable checkpoints: ``checkpoints/step-N/`` appears only when complete.

Layout of one checkpoint (model and tokenizer in ``save_pretrained`` format, so any checkpoint is also a
model directory that `aspo eval --model` or ``from_pretrained`` can open):

    step-N/config.json, model.safetensors, tokenizer files   the policy
      (with LoRA instead: adapter_config.json, adapter_model.safetensors -- peft's format, naming the base)
    step-N/optimizer.pt, scheduler.pt                         AdamW and the LR schedule
    step-N/rng.pt                                             python / numpy / torch RNG states
    step-N/trainer_state.json                                 step, data position, counters

A resume reads the newest checkpoint whole before applying it and falls back to the previous one when a file
is unreadable; a failed write leaves no trace but a clear error.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from aspo.errors import CheckpointError, UserError
from aspo.lora import ADAPTER_CONFIG, ADAPTER_WEIGHTS, load_adapter_state

_STEP_DIR = re.compile(r"^step-(\d+)$")
_OLD_DIR = re.compile(r"^\.old-step-(\d+)-\d+$")  # a re-saved step's previous copy (save_checkpoint)


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


def save_checkpoint(
    run_dir: str | Path,
    step: int,
    model: Any,
    tokenizer: Any,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    state: dict[str, Any],
    keep: int = 2,
    state_dict: dict[str, torch.Tensor] | None = None,
    optimizer_state: dict[str, Any] | None = None,
) -> Path:
    """Write under a temporary name, then rename: a crash never leaves a half checkpoint called step-N.

    A failed write (disk full, quota, I/O error) removes the temporary directory, leaves every earlier
    checkpoint as it was and raises UserError naming the path. ``keep`` >= 2 leaves a fallback for a newest
    checkpoint that turns out unreadable (`latest_readable_checkpoint`).
    """
    root = Path(run_dir) / "checkpoints"
    final = root / f"step-{step}"
    tmp = root / f".tmp-step-{step}-{os.getpid()}"
    old = root / f".old-step-{step}-{os.getpid()}"
    try:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        model.save_pretrained(tmp, safe_serialization=True, state_dict=state_dict)
        tokenizer.save_pretrained(tmp)
        if optimizer_state is None:
            optimizer_state = optimizer.state_dict()
        torch.save(optimizer_state, tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        torch.save(rng_state(), tmp / "rng.pt")
        with open(tmp / "trainer_state.json", "w") as fh:
            json.dump({"step": step, **state}, fh, indent=1)
        for path in tmp.iterdir():  # make the data durable before the rename publishes it
            with open(path, "rb") as fh:
                os.fsync(fh.fileno())
        if (
            final.exists()
        ):  # re-saving the same step (e.g. after resume): keep it until the new one is in place
            os.rename(final, old)
        os.rename(tmp, final)
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists() and not final.exists():
            os.rename(old, final)
        if not isinstance(err, Exception):  # Ctrl-C, SystemExit: cleaned up, passed on
            raise
        # disk full / quota / I/O error: an OSError from python and torch, a SafetensorError from safetensors
        reason = (
            f"{err.strerror} writing {err.filename or tmp}"
            if isinstance(err, OSError) and err.strerror
            else f"{type(err).__name__}: {err}"
        )
        previous = list_checkpoints(run_dir)
        kept = (
            f"the previous checkpoint {previous[-1][1]} is intact"
            if previous
            else "there is no earlier checkpoint"
        )
        raise UserError(
            f"could not write checkpoint {final} ({reason}); the half-written copy was removed and "
            f"{kept}. Free space and continue with resume=true"
        ) from err
    shutil.rmtree(old, ignore_errors=True)
    for _, stale in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(stale, ignore_errors=True)
    for stale_step, stale in _resume_candidates(run_dir):  # an interrupted re-save's copy, now superseded
        if stale.name.startswith(".old-") and stale_step <= step:
            shutil.rmtree(stale, ignore_errors=True)
    return final


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Every part of the checkpoint at ``path``, in memory; CheckpointError names the part that is unreadable.

    Reading everything before applying anything means a bad file never leaves a half-restored trainer.
    """
    from safetensors.torch import load_file

    path = Path(path)
    adapter = (path / ADAPTER_CONFIG).is_file()  # a LoRA run's: the adapter weights stand for the model's
    loaders = {
        "model": (ADAPTER_WEIGHTS if adapter else "model.safetensors", lambda p: load_file(str(p))),
        "optimizer": ("optimizer.pt", _torch_load),
        "scheduler": ("scheduler.pt", _torch_load),
        "rng": ("rng.pt", _torch_load),
        "trainer_state": ("trainer_state.json", _json_load),
    }
    parts = {}
    for key, (name, load) in loaders.items():
        try:
            parts[key] = load(path / name)
        except Exception as err:  # truncated, corrupt or missing: any failure makes the checkpoint unusable
            raise CheckpointError(f"{path / name}: {type(err).__name__}: {err}") from err
    parts["adapter"] = adapter
    return parts


def _resume_candidates(run_dir: str | Path) -> list[tuple[int, Path]]:
    """Every checkpoint a resume may try, newest first: the complete ones, those that lost files after being
    published (``trainer_state.json`` gone: unreadable, not absent), and the previous copy of a step whose
    re-save stopped between its two renames (``.old-step-N-PID``, after ``step-N`` of the same step)."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        match = _STEP_DIR.match(child.name) or _OLD_DIR.match(child.name)
        if match and child.is_dir():
            found.append((int(match.group(1)), child.name.startswith("step-"), child))
    return [(step, path) for step, _, path in sorted(found, reverse=True)]


def latest_readable_checkpoint(run_dir: str | Path) -> tuple[int, Path, dict[str, Any]] | None:
    """(step, path, parts) of the newest checkpoint that reads completely; each unreadable newer one is
    reported with a warning and skipped. None when there is no checkpoint; UserError when none reads --
    never a silent start from step 0 (with ``train.keep_checkpoints=1`` there is nothing to fall back to)."""
    problems = []
    for step, path in _resume_candidates(run_dir):
        try:
            parts = read_checkpoint(path)
        except CheckpointError as err:
            problems.append(str(err))
            warnings.warn(f"checkpoint {path} is unreadable ({err}); trying the previous one", stacklevel=2)
            continue
        return step, path, parts
    if problems:
        raise UserError(
            f"no checkpoint in {Path(run_dir) / 'checkpoints'} can be read, so the run cannot resume "
            "(train.keep_checkpoints >= 2 keeps an older one to fall back to): " + "; ".join(problems)
        )
    return None


def restore(
    parts: dict[str, Any],
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    peft_model: Any = None,
) -> dict[str, Any]:
    """Load what `read_checkpoint` returned into the trainer's objects and the RNGs; returns the trainer
    state. With LoRA (``peft_model``, the wrapper of ``model``) the checkpoint must hold an adapter, and only
    that loads."""
    if parts.get("adapter", False) != (peft_model is not None):
        held, run = ("a LoRA adapter", "without") if parts.get("adapter") else ("a full model", "with")
        raise UserError(
            f"the checkpoint holds {held} but this run is {run} LoRA: resume with the run's own "
            "lora.* settings (its config.yaml)"
        )
    if peft_model is not None:
        load_adapter_state(peft_model, parts["model"])
        optimizer.load_state_dict(parts["optimizer"])
    else:  # the whole weights and optimizer state; sharded over the ranks under FSDP
        from aspo.distributed import load_full_state

        unexpected = load_full_state(model, optimizer, parts["model"], parts["optimizer"])
        if unexpected:  # e.g. a model built differently: not silently
            raise UserError(
                f"the checkpoint's weights do not fit the model: {len(unexpected)} of its "
                f"tensors have no place in it (first: {unexpected[0]!r})"
            )
    scheduler.load_state_dict(parts["scheduler"])
    set_rng_state(parts["rng"])
    return parts["trainer_state"]


def rng_state() -> dict[str, Any]:
    """The python / numpy / torch (CPU) generator states, as saved in ``rng.pt``."""
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


def _torch_load(path: Path) -> Any:
    return torch.load(path, weights_only=False)


def _json_load(path: Path) -> Any:
    with open(path) as fh:
        return json.load(fh)
