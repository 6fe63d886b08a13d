"""Clip-Cov and KL-Cov ("The Entropy Mechanism of RL for Reasoning LMs", arXiv 2505.22617), as verl's
``compute_policy_loss_clip_cov`` / ``compute_policy_loss_kl_cov`` (0.9.1) define them.

Both rank tokens by the centred covariance of log-prob and advantage, per token,
cov_t = (A_t - mean A) * (logp_t - mean logp) (means over the valid tokens of the batch the loss sees: one
micro-batch, as in verl), and treat a small fraction of high-covariance tokens differently -- the tokens
whose updates drive entropy down. Notation as in ``aspo.objectives.losses``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from aspo.errors import UserError
from aspo.objectives.base import TokenInputs, TokenTerms, register_policy_loss
from aspo.objectives.losses import _combine, _ppo_negative, _ppo_positive


def _centred_covariance(tokens: TokenInputs, eps: float) -> Tensor:
    """(B, T) cov_t over valid tokens (0 at padding); eps is added to the token count as verl's means do."""
    mask = tokens.mask.to(tokens.ratio.dtype)
    count = mask.sum() + eps
    mean_adv = tokens.advantages.sum() / count  # advantages and log_prob are 0 at padding
    mean_log_prob = tokens.log_prob.sum() / count
    return (tokens.advantages - mean_adv) * (tokens.log_prob - mean_log_prob) * mask


def _share(params: dict[str, Any], key: str) -> None:
    if not 0.0 < params[key] <= 1.0:
        raise UserError(f"{key} must be in (0, 1] (got {params[key]})")


def _check_clip_cov(params: dict[str, Any]) -> None:
    _share(params, "clip_cov_ratio")
    if not params["clip_cov_lb"] < params["clip_cov_ub"]:
        raise UserError(
            f"clip_cov_lb ({params['clip_cov_lb']}) must be below clip_cov_ub ({params['clip_cov_ub']})"
        )


def _check_kl_cov(params: dict[str, Any]) -> None:
    _share(params, "kl_cov_ratio")
    if not params["kl_cov_coef"] >= 0.0:
        raise UserError(f"kl_cov_coef must be >= 0 (got {params['kl_cov_coef']})")


@register_policy_loss("clip_cov", _check_clip_cov, clip_cov_ratio=2e-4, clip_cov_lb=1.0, clip_cov_ub=5.0)
def clip_cov_loss(
    tokens: TokenInputs, *, clip_cov_ratio: float, clip_cov_lb: float, clip_cov_ub: float
) -> TokenTerms:
    """Clip-Cov: PPO-clip (no dual clip) whose gradient is cut for a random few high-covariance tokens.

    Candidates: valid tokens PPO did not clip with lb < cov_t < ub. max(floor(ratio * N), 1) of them (N the
    valid tokens; all if fewer) are drawn uniformly at random (verl's ``randperm`` order over the candidates
    in row-major order, from ``tokens.generator``) and *selected*: their value and weight become 0.

    | A     | region                       | w | value          |
    |-------|------------------------------|---|----------------|
    | any   | selected                     | 0 | 0              |
    | A > 0 | r > hi                       | 0 | -A * hi        |
    | A > 0 | r <= hi                      | r | -A * r         |
    | A < 0 | r < lo                       | 0 | -A * lo        |
    | A < 0 | r >= lo                      | r | -A * r         |

    Defaults are verl's: ratio 2e-4, lb 1, ub 5 (the paper's). ``clipped`` marks PPO's clip only.
    """
    ratio = tokens.ratio
    ppo = _combine(
        tokens, _ppo_positive(ratio, tokens.clip_high_bound), _ppo_negative(tokens, ratio, dual=False)
    )
    # verl's clip_by_origin: the clipped surrogate is strictly larger (A = 0 tokens are never clipped)
    ppo_clipped = ((tokens.advantages > 0) & (ratio > tokens.clip_high_bound)) | (
        (tokens.advantages < 0) & (ratio < tokens.clip_low_bound)
    )
    cov = _centred_covariance(tokens, eps=1e-8)
    candidates = tokens.mask & ~ppo_clipped & (cov > clip_cov_lb) & (cov < clip_cov_ub)
    n_valid = int(tokens.mask.count_nonzero())
    n_pick = max(int(clip_cov_ratio * n_valid), 1)
    flat = candidates.flatten().nonzero().squeeze(1)
    order = torch.randperm(flat.numel(), generator=tokens.generator).to(flat.device)
    selected = torch.zeros_like(candidates.flatten())
    selected[flat[order[:n_pick]]] = True
    selected = selected.view_as(candidates)
    keep = (~selected).to(ratio.dtype)
    return TokenTerms(ppo.value * keep, ppo.weight * keep, ppo.clipped, None, selected=selected)


@register_policy_loss("kl_cov", _check_kl_cov, kl_cov_ratio=2e-4, kl_cov_coef=1.0)
def kl_cov_loss(tokens: TokenInputs, *, kl_cov_ratio: float, kl_cov_coef: float) -> TokenTerms:
    """KL-Cov: the unclipped surrogate -A * r, plus coef * |log r| on the top-k tokens by covariance.

    k = max(floor(ratio * N), 1) valid tokens with the largest cov_t (``torch.topk`` over the valid tokens
    in row-major order, as verl) are *selected*. No trust-region clip and no dual clip anywhere.

    | A     | region    | w | extra gradient        | value                       |
    |-------|-----------|---|-----------------------|-----------------------------|
    | any   | selected  | r | coef * sign(log r)    | -A * r + coef * abs(log r)  |
    | any   | otherwise | r | 0                     | -A * r                      |

    dL_t/dlogp_t = -A_t r_t + coef * sign(log r_t) on selected tokens, so -- alone among the objectives --
    a selected token with A = 0 still has a gradient (towards r = 1). Defaults are verl's: ratio 2e-4,
    coef 1 (verl's ``ppo_kl_coef``). The means of cov are plain means here (verl's code has no eps there).
    """
    ratio = tokens.ratio
    cov = _centred_covariance(tokens, eps=0.0)
    flat = tokens.mask.flatten().nonzero().squeeze(1)
    selected = torch.zeros_like(tokens.mask.flatten())
    if flat.numel():
        k = max(int(flat.numel() * kl_cov_ratio), 1)
        top = torch.topk(cov.flatten()[flat], k, largest=True).indices
        selected[flat[top]] = True
    selected = selected.view_as(tokens.mask)
    on = selected.to(ratio.dtype) * kl_cov_coef
    value = torch.addcmul(-tokens.advantages * ratio, on, tokens.log_ratio.abs())
    return TokenTerms(
        value, ratio.clone(), None, None, selected=selected, penalty_grad=on * tokens.log_ratio.sign()
    )
