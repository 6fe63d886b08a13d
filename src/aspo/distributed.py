"""Data-parallel helpers over `accelerate`: reductions across ranks, full weights, teardown.

Pure functions of an ``Accelerator`` (and what they reduce); with one process each is a cheap no-op, so the
trainer calls them unconditionally.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

# metrics that count things: summed over data-parallel ranks instead of averaged
COUNT_METRICS = ("reward/errors", "groups/solve_all", "groups/solve_none", "groups/valid")


def mean_metrics(rows: list[dict[str, float]]) -> dict[str, float]:
    """Average dicts key by key (a key absent from a row is not counted for that row)."""
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    for row in rows:
        for key, value in row.items():
            sums[key] = sums.get(key, 0.0) + float(value)
            counts[key] = counts.get(key, 0) + 1
    return {key: sums[key] / counts[key] for key in sums}


def reduce_sum(accelerator: Any, value: float) -> float:
    """Sum of ``value`` over ranks."""
    if accelerator.num_processes == 1:
        return float(value)
    t = torch.tensor([float(value)], device=accelerator.device)
    return float(accelerator.reduce(t, reduction="sum"))


def gather_lists(accelerator: Any, items: list) -> list:
    """Every rank's list, concatenated in rank order."""
    if accelerator.num_processes == 1:
        return items
    from accelerate.utils import gather_object

    return [item for part in gather_object([items]) for item in part]


def reduce_metrics(accelerator: Any, metrics: dict[str, float]) -> dict[str, float]:
    """Counts (``COUNT_METRICS``) are summed over ranks, everything else averaged (a rank without the key is
    not counted)."""
    if accelerator.num_processes == 1:
        return metrics
    rows = gather_lists(accelerator, [metrics])
    out = mean_metrics(rows)
    for key in COUNT_METRICS:
        if key in out:
            out[key] = sum(r.get(key, 0.0) for r in rows)
    return out


def full_weights(accelerator: Any, wrapped_model: torch.nn.Module) -> Any:
    """Sampling needs whole weights: under FSDP gather the shards for the duration (not tested on CPU)."""
    from accelerate.utils import DistributedType

    if accelerator.distributed_type == DistributedType.FSDP:
        from torch.distributed.fsdp import FullyShardedDataParallel

        return FullyShardedDataParallel.summon_full_params(wrapped_model, writeback=False)
    return contextlib.nullcontext()


def close(accelerator: Any) -> None:
    """Tear down the process group: gloo's threads abort the process at exit if it is left alive."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        accelerator.wait_for_everyone()
        dist.destroy_process_group()
