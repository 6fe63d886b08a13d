"""What a run starts from: the policy, the data, the run directory, and seeds derived from the config."""

from __future__ import annotations

import datetime as _dt
import os
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from aspo.config import Config
from aspo.errors import UserError
from aspo.pretrained import load_checkpoint, resolve_model


def seed_for(*parts: int | str) -> int:
    """A 31-bit seed derived from (base seed, purpose, step, rank, ...): independent streams per purpose,
    and nothing to restore on resume because every draw is a pure function of its coordinates."""
    ints = [p if isinstance(p, int) else zlib.crc32(str(p).encode()) for p in parts]
    return int(np.random.SeedSequence(ints).generate_state(1)[0] & 0x7FFFFFFF)


def load_policy(cfg: Config) -> tuple[Any, Any, Any]:
    """(model, tokenizer, lab task or None). ``model=tiny`` builds or reuses the lab's cached warm start;
    a .gguf file or a model name is converted once and cached (``aspo.pretrained``)."""
    import torch

    task = None
    if cfg.uses_lab_task:
        from aspo.lab import get_task

        try:
            task = get_task(cfg.task)
        except (KeyError, ValueError) as err:
            raise UserError(f"unknown task {cfg.task!r}: {err}") from err
    path = cfg.model
    if cfg.model == "tiny":
        from aspo.lab import warm_start

        path = str(warm_start(cfg.task))
    else:
        path = resolve_model(cfg.model)
    model, tokenizer = load_checkpoint(path, torch.float32)
    return model, tokenizer, task


def load_data(cfg: Config, task: Any) -> tuple[list[dict], list[dict]]:
    """Training and held-out records: files when given, else the lab task's seeded disjoint splits."""
    from aspo.data import load_prompt_data

    if cfg.data.train:
        train = load_prompt_data(cfg.data.train)
    elif task is not None:
        train = task.make_split("train", cfg.data.num_train, seed=0)
    else:
        raise UserError("data.train is required")
    if cfg.data.test:
        test = load_prompt_data(cfg.data.test)
    elif cfg.has_heldout_data:  # the lab task's held-out split
        test = task.make_split("test", cfg.data.num_test, seed=0)
    else:
        test = []
    return train, test[: cfg.data.num_test]


def resolve_run_dir(cfg: Config, accelerator: Any = None) -> str:
    """``output_dir`` or a new timestamped ``runs/...``; with resume and no output_dir, the newest match."""
    from aspo.checkpoint import list_checkpoints

    model_name = cfg.task if cfg.model == "tiny" else Path(cfg.model).name.removesuffix(".gguf")
    suffix = f"{model_name}-{cfg.algorithm.loss}-s{cfg.train.seed}"
    if cfg.output_dir:
        path = cfg.output_dir
    elif cfg.resume:
        candidates = sorted(p for p in Path("runs").glob(f"*-{suffix}") if list_checkpoints(p))
        if not candidates:
            raise UserError(f"resume=true but no run under runs/ matches *-{suffix}; give output_dir=...")
        path = str(candidates[-1])
    else:
        path = os.path.join("runs", f"{_dt.datetime.now():%Y%m%d-%H%M%S}-{suffix}")
    if accelerator is not None and accelerator.num_processes > 1:  # every rank must agree on the name
        from accelerate.utils import broadcast_object_list

        path = broadcast_object_list([path])[0]
    if not cfg.resume and (Path(path) / "metrics.jsonl").exists():
        raise UserError(
            f"output_dir {path!r} already holds a run; pass resume=true to continue it, or choose "
            "another output_dir (nothing was overwritten)"
        )
    return path
