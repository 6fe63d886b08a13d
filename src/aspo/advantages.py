"""Outcome-reward advantage estimators: one scalar per response from the rewards of its group.

    advantages = compute_advantages("grpo", rewards, group_ids)     # (N,) -> (N,)

``rewards`` (N,) float: one reward per response. ``group_ids`` (N,) int: responses with the same id were
sampled from the same prompt (any integers, not necessarily contiguous or sorted). The result is per
response; ``policy_loss`` broadcasts a (B,) advantage over each response's tokens.

Estimators (``ADVANTAGES``):

- ``grpo``: (R_i - mean_g) / (std_g + eps), std with Bessel's correction (as verl and TRL);
  ``norm_by_std=False`` skips the division.
- ``dr_grpo``: R_i - mean_g (Dr. GRPO: no std normalisation).
- ``rloo``: R_i - mean of the *other* responses of the group = n/(n-1) (R_i - mean_g).
- ``reinforce_plus_plus_baseline``: R_i - mean_g, then whitened over the batch: (x - mean) / sqrt(var + 1e-8),
  unbiased var (verl whitens over tokens, so long responses weigh more there; this is per response).

A group of one response has no baseline to compare against, so every estimator gives it advantage 0 (verl's
grpo would give it its raw reward; 0 keeps a lone sample from pushing the policy on an unnormalised scale).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from aspo.errors import UserError

AdvantageFn = Callable[..., Tensor]
ADVANTAGES: dict[str, AdvantageFn] = {}


def register_advantage(name: str) -> Callable[[AdvantageFn], AdvantageFn]:
    """Decorator: register ``fn(rewards: Tensor (N,), group_ids: Tensor (N,), **params) -> Tensor (N,)``."""

    def decorator(fn: AdvantageFn) -> AdvantageFn:
        ADVANTAGES[name] = fn
        return fn

    return decorator


def compute_advantages(name: str, rewards: Tensor, group_ids: Tensor, **params: Any) -> Tensor:
    """Advantages (N,) float32 for rewards (N,) grouped by group_ids (N,); see the module docstring."""
    if name not in ADVANTAGES:
        raise UserError(f"unknown advantage estimator {name!r}; valid names: {', '.join(sorted(ADVANTAGES))}")
    fn = ADVANTAGES[name]
    accepted = [p for p in inspect.signature(fn).parameters if p not in ("rewards", "group_ids")]
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise UserError(
            f"advantage estimator {name!r} got unknown parameter(s) {unknown}; it accepts {accepted}"
        )
    rewards, group_ids = _check(rewards, group_ids)
    return fn(rewards, group_ids, **params)


def _check(rewards: Tensor, group_ids: Tensor) -> tuple[Tensor, Tensor]:
    rewards = torch.as_tensor(rewards)
    group_ids = torch.as_tensor(group_ids)
    if rewards.dim() != 1:
        raise UserError(f"rewards must be 1-D (one per response); got shape {tuple(rewards.shape)}")
    if group_ids.shape != rewards.shape:
        raise UserError(
            f"group_ids has shape {tuple(group_ids.shape)} but rewards has {tuple(rewards.shape)}"
        )
    if group_ids.is_floating_point() or group_ids.is_complex():
        raise UserError(f"group_ids must hold integers, got {group_ids.dtype}")
    rewards = rewards.float()
    if not bool(rewards.isfinite().all()):
        raise UserError("rewards holds NaN or inf")
    return rewards, group_ids


def group_stats(rewards: Tensor, group_ids: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per response: its group's size, mean and unbiased std (0 for a group of one). All (N,)."""
    _, index = torch.unique(group_ids, return_inverse=True)
    n_groups = int(index.max()) + 1 if index.numel() else 0
    size = torch.zeros(n_groups, device=rewards.device).index_add_(0, index, torch.ones_like(rewards))
    total = torch.zeros(n_groups, device=rewards.device).index_add_(0, index, rewards)
    mean = total / size
    squared = torch.zeros(n_groups, device=rewards.device).index_add_(
        0, index, (rewards - mean[index]).square()
    )
    std = (squared / (size - 1).clamp(min=1)).sqrt()
    return size[index], mean[index], std[index]


@register_advantage("grpo")
def grpo_advantages(
    rewards: Tensor, group_ids: Tensor, *, eps: float = 1e-6, norm_by_std: bool = True
) -> Tensor:
    """(R_i - mean_g) / (std_g + eps), or R_i - mean_g with norm_by_std=False; 0 for a group of one."""
    size, mean, std = group_stats(rewards, group_ids)
    advantages = rewards - mean
    if norm_by_std:
        advantages = advantages / (std + eps)
    return torch.where(size > 1, advantages, 0.0)


@register_advantage("dr_grpo")
def dr_grpo_advantages(rewards: Tensor, group_ids: Tensor) -> Tensor:
    """R_i - mean_g (Dr. GRPO drops the std normalisation); 0 for a group of one."""
    return grpo_advantages(rewards, group_ids, norm_by_std=False)


@register_advantage("rloo")
def rloo_advantages(rewards: Tensor, group_ids: Tensor) -> Tensor:
    """R_i minus the mean reward of the other responses of its group; 0 for a group of one."""
    size, mean, _ = group_stats(rewards, group_ids)
    leave_one_out = size / (size - 1).clamp(min=1) * (rewards - mean)
    return torch.where(size > 1, leave_one_out, 0.0)


@register_advantage("reinforce_plus_plus_baseline")
def reinforce_plus_plus_baseline_advantages(rewards: Tensor, group_ids: Tensor) -> Tensor:
    """R_i - mean_g, then whitened across the batch; 0 for a group of one (and for a batch of one)."""
    size, mean, _ = group_stats(rewards, group_ids)
    centred = torch.where(size > 1, rewards - mean, 0.0)
    if centred.numel() < 2:
        return torch.zeros_like(centred)
    whitened = (centred - centred.mean()) * torch.rsqrt(centred.var() + 1e-8)
    return torch.where(size > 1, whitened, 0.0)
