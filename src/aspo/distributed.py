"""Data-parallel helpers over `accelerate`: reductions across ranks, sharding, full weights, teardown.

Pure functions of an ``Accelerator`` (and what they reduce); with one process each is a cheap no-op, so the
trainer calls them unconditionally. ``train.fsdp`` shards the model with torch's FSDP2 (``fully_shard``)
directly: accelerate 1.x sets up FSDP only on accelerators, and on CPU silently runs plain data parallel.
Under FSDP every forward and backward is a collective, so each rank must run as many as the others, except
inside ``full_weights``, where the whole weights stay gathered.
"""

from __future__ import annotations

import contextlib
import gc
import os
import weakref
from typing import Any

import torch

# metrics that count things: summed over data-parallel ranks instead of averaged
COUNT_METRICS = (
    "reward/errors",
    "groups/solve_all",
    "groups/solve_none",
    "groups/valid",
    "groups/with_signal",
    "groups/sampled",
)


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


def shard(model: torch.nn.Module) -> None:
    """FSDP2 over the default process group, in place: each decoder layer (the model's ``_no_split_modules``)
    and then the root, so that in the update only one layer's weights are whole at a time."""
    from torch.distributed.fsdp import fully_shard

    layer_types = set(getattr(model, "_no_split_modules", None) or ())
    for module in list(model.modules()):
        if type(module).__name__ in layer_types:
            fully_shard(module)
    fully_shard(model)


def is_sharded(model: torch.nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


@contextlib.contextmanager
def _gathered(model: Any) -> Any:
    from torch.distributed.fsdp import FSDPModule

    parts = [m for m in model.modules() if isinstance(m, FSDPModule)]
    model.set_reshard_after_forward(False)  # forwards in between (any number per rank) then gather nothing
    for part in parts:
        part.unshard()  # one all-gather per part, the same on every rank
    try:
        yield
    finally:
        for part in parts:
            part.reshard()
        model.set_reshard_after_forward(True)


def full_weights(accelerator: Any, wrapped_model: torch.nn.Module) -> Any:
    """Sampling needs whole weights (and a different number of forwards per rank): under FSDP gather the
    shards for the duration."""
    from accelerate.utils import DistributedType

    if is_sharded(wrapped_model):
        return _gathered(wrapped_model)
    if accelerator.distributed_type == DistributedType.FSDP:  # accelerate's FSDP1 on accelerators (untested)
        from torch.distributed.fsdp import FullyShardedDataParallel

        return FullyShardedDataParallel.summon_full_params(wrapped_model, writeback=False)
    return contextlib.nullcontext()


def reduce_max(accelerator: Any, value: int) -> int:
    """Largest ``value`` over ranks."""
    if accelerator.num_processes == 1:
        return value
    import torch.distributed as dist

    t = torch.tensor([value], device=accelerator.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t)


def clip_grad_norm(accelerator: Any, model: torch.nn.Module, max_norm: float) -> float:
    """Clip the global gradient norm (over every rank's shards under FSDP); returns it."""
    norm = accelerator.clip_grad_norm_(model.parameters(), max_norm)
    return float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)


def full_state_dict(accelerator: Any, wrapped_model: torch.nn.Module) -> dict[str, Any]:
    """The whole weights for a checkpoint (a collective under FSDP: on rank 0 only, the others get {})."""
    if is_sharded(wrapped_model):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        weights = get_model_state_dict(wrapped_model, options=options)
        first_name: dict[int, str] = {}  # tied weights (embeddings and head) come back as copies: one again,
        for name, param in wrapped_model.named_parameters(remove_duplicate=False):  # so that save_pretrained
            first = first_name.setdefault(id(param), name)  # writes them once, as for an unsharded model
            if first != name and name in weights:
                weights[name] = weights[first]
        return weights
    return accelerator.get_state_dict(wrapped_model)


def _parameter_names(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    """The optimizer's parameters by name, in its own order (the indices of ``optimizer.state_dict()``)."""
    name_of = {id(p): name for name, p in model.named_parameters()}
    return [name_of[id(p)] for group in optimizer.param_groups for p in group["params"]]


def _rekey(state: dict[str, Any], key: Any) -> dict[str, Any]:
    """An optimizer state dict with each parameter key ``k`` replaced by ``key[k]`` (index <-> name)."""
    return {
        "state": {key[k]: value for k, value in state["state"].items()},
        "param_groups": [{**g, "params": [key[k] for k in g["params"]]} for g in state["param_groups"]],
    }


def full_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """``optimizer.state_dict()`` as one process would have it (a collective under FSDP: whole moments on
    rank 0), so that a checkpoint resumes under any world size, sharded or not."""
    if not is_sharded(model):
        return optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    by_name = get_optimizer_state_dict(model, optimizer, options=options)
    if not by_name:  # not rank 0
        return {}
    return _rekey(by_name, {name: i for i, name in enumerate(_parameter_names(model, optimizer))})


def load_full_state(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    weights: dict[str, Any],
    optimizer_state: dict[str, Any],
) -> list[str]:
    """Load a checkpoint's whole weights and optimizer state (sharding them under FSDP); returns the names of
    the weights that have no place in the model."""
    if not is_sharded(model):
        unexpected = model.load_state_dict(weights, strict=False).unexpected_keys  # tied weights saved once
        optimizer.load_state_dict(optimizer_state)
        return list(unexpected)
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=True, strict=False)
    unexpected = set_model_state_dict(model, weights, options=options).unexpected_keys
    by_name = _rekey(optimizer_state, _parameter_names(model, optimizer))
    set_optimizer_state_dict(model, optimizer, by_name, options=options)
    return list(unexpected)


def before_process_group() -> None:
    """Call before the process group is created (the ``Accelerator``) in a launched multi-process run.

    DDP's constructor imports ``torch._dynamo`` on first use, and that import keeps ten references to every
    process-group handle alive at the time, for the life of the process (torch 2.13, measured with
    ``sys.getrefcount``): the group could then only be freed at interpreter exit, where a gloo worker that
    still needs the GIL can abort the process. Imported first, it holds none (DDP would import it anyway)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        import torch._dynamo  # noqa: F401


def close(accelerator: Any, *models: torch.nn.Module) -> None:
    """Tear down the process group and free it; ``models``: the wrapped models (DDP), whose reducers go first.

    The order prevents a deadlock. A gloo worker thread retires each finished work under the group's work
    mutex, and dropping a work's last tensor can take the GIL (a tensor whose Python object outlived
    Python's references; a busy core can leave the worker there after the last collective returned). The
    group's destructor takes that mutex and joins the workers: it must run with the GIL released. torch's
    Python handle of a group does that when it drops the last reference; the DDP reducer (a C++ owner, freed
    with the GIL held) and torch's group-name registry do not. So the reducers go while this function's
    handle keeps the group alive, ``destroy_process_group`` drops the registry's reference, and with DDP the
    last reference is this handle's (see ``before_process_group``). Under FSDP (torch 2.13) an owner inside
    torch's C++ keeps the group longer; its workers are idle by then (docs/scaling.md)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return
    group = dist.group.WORLD  # alive until the C++ owners are gone
    accelerator.wait_for_everyone()
    for model in models:
        _release_reducer(model)
    dist.destroy_process_group()
    del group  # with DDP the group's destructor runs here, with the GIL released


def _release_reducer(model: torch.nn.Module) -> None:
    """Free a DDP wrapper's reducer (held by it and by its logger) and its handle of the process group; the
    wrapper cannot run afterwards."""
    from torch.nn.parallel import DistributedDataParallel

    if not isinstance(model, DistributedDataParallel):
        return
    if "reducer" not in model.__dict__:
        return
    reducer = weakref.ref(model.reducer)
    for name in ("logger", "reducer", "process_group"):
        if name in model.__dict__:
            delattr(model, name)
    if reducer() is not None:  # held by a reference cycle (e.g. a traceback's frames)
        gc.collect()
