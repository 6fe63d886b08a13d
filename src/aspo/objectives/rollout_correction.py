"""Rollout correction: the sampler's and the trainer's policies differ (bf16 sampling, another engine).

The sampler reports log mu(y_t) of the tokens it drew; the trainer's forward recomputes log pi_old(y_t)
for the same tokens (``rollout.recompute_logprobs``). Numerically the two should be equal; in practice
they are not (bf16 matmuls, vLLM's kernels, batch-dependent reductions): the training-inference mismatch.
The PPO-style ratio is then taken against the trainer's pi_old, and each token's policy loss is multiplied
by a detached importance weight for the mismatch, rho = pi_old / mu, in one of the forms verl and TRL ship:

    mode               rho per                                  kept as
    token_truncate     token: exp(lp_old - lp_mu)               min(rho, high), max(rho, low)
    token_mask         token                                    rho inside [low, high], else 0
    sequence_truncate  response: exp(sum_t (lp_old - lp_mu))    as token_truncate, one weight per response
    sequence_mask      response                                 as token_mask, one weight per response

TRL: ``GRPOConfig.vllm_importance_sampling_mode`` (these four names) with ``vllm_importance_sampling_cap``
(newer releases: ``..._clip_min`` / ``..._clip_max``); verl: ``algorithm.rollout_correction``,
``rollout_is`` token|sequence with ``rollout_is_threshold`` (truncation) and ``rollout_rs`` token|sequence
(rejection = masking) in ``verl/trainer/ppo/rollout_corr_helper.py``. A masked token keeps its place in the
loss's normaliser (TRL's form; verl's rejection removes it from the mask instead).

Everything here is a pure function of (rows, R) tensors; the trainer calls ``correction_weights`` and
``mismatch_metrics``; the vLLM engine can call ``mismatch_metrics`` on its own log-probs.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

CORRECTION_MODES = ("none", "token_truncate", "token_mask", "sequence_truncate", "sequence_mask")
# exp() of a log-ratio is taken within +-this (verl's SAFETY_BOUND): the weights stay finite
LOG_RATIO_BOUND = 20.0


def _log_ratio(sampler_logp: Tensor, trainer_logp: Tensor, mask: Tensor, sequence: bool) -> Tensor:
    """log(pi_old / mu) per token (B, R), or per response summed over its tokens and broadcast to (B, R);
    0 on padding."""
    diff = torch.where(mask, trainer_logp.float() - sampler_logp.float(), 0.0)
    if sequence:
        diff = diff.sum(-1, keepdim=True).expand_as(diff)
    return diff


def correction_weights(
    sampler_logp: Tensor, trainer_logp: Tensor, mask: Tensor, mode: str, low: float = 0.0, high: float = 2.0
) -> Tensor:
    """The importance weight of every token for the sampler-trainer mismatch.

    sampler_logp, trainer_logp (B, R) float log-probs of the sampled tokens under the sampler (mu) and the
    trainer's forward (pi_old); mask (B, R) bool. ``mode`` one of ``CORRECTION_MODES``; ``low`` <= ``high``
    the bounds (truncate: clamp into them; mask: weight 0 outside them). Returns (B, R) float32 weights,
    detached, 0 on padding; all ones on valid tokens for ``none``.
    """
    mask = mask.bool()
    if mode not in CORRECTION_MODES:
        raise ValueError(f"unknown rollout correction mode {mode!r}; valid: {', '.join(CORRECTION_MODES)}")
    if mode == "none":
        return mask.float()
    log_rho = _log_ratio(sampler_logp, trainer_logp, mask, mode.startswith("sequence")).detach()
    rho = log_rho.clamp(-LOG_RATIO_BOUND, LOG_RATIO_BOUND).exp()
    if mode.endswith("truncate"):
        rho = rho.clamp(min=low, max=high)
    else:
        rho = torch.where((rho >= low) & (rho <= high), rho, 0.0)
    return torch.where(mask, rho, 0.0)


def mismatch_metrics(
    sampler_logp: Tensor,
    trainer_logp: Tensor,
    mask: Tensor,
    mode: str = "none",
    low: float = 0.0,
    high: float = 2.0,
) -> dict[str, float]:
    """How far apart the sampler's and the trainer's log-probs of the same tokens are.

    sampler_logp, trainer_logp, mask (B, R) as in ``correction_weights``. Returns (empty when no token
    is valid), with delta = lp_old - lp_mu per valid token:

    - ``logprob_diff``: mean delta; ``logprob_abs_diff``: mean |delta|; ``logprob_abs_diff_max``: max |delta|
    - ``kl``: KL(mu || pi_old) by the k1 estimator over mu's samples, mean(-delta) (verl's ``kl``)
    - ``k3_kl``: mean(exp(delta) - delta - 1), the non-negative k3 estimator (verl's ``k3_kl``)
    - ``chi2_token``: mean(exp(delta)^2) - 1, the variance of the token weights under mu
    - ``seq_log_ratio_abs``: mean over responses of |sum_t delta|, the scale sequence-level weights see
    - with a ``mode``: ``truncated_frac`` (truncate modes: valid tokens whose weight was clamped) or
      ``masked_frac`` (mask modes: valid tokens weighted 0), and ``weight_mean``, the mean kept weight.
    """
    mask = mask.bool()
    n = int(mask.sum())
    if n == 0:
        return {}
    delta = _log_ratio(sampler_logp, trainer_logp, mask, sequence=False).detach()
    valid = delta[mask]
    bounded = valid.clamp(-LOG_RATIO_BOUND, LOG_RATIO_BOUND)
    rows = mask.any(-1)
    out = {
        "logprob_diff": float(valid.mean()),
        "logprob_abs_diff": float(valid.abs().mean()),
        "logprob_abs_diff_max": float(valid.abs().max()),
        "kl": float(-valid.mean()),
        "k3_kl": float((bounded.exp() - bounded - 1).mean()),
        "chi2_token": float((2 * bounded).exp().mean() - 1),
        "seq_log_ratio_abs": float(delta.sum(-1)[rows].abs().mean()),
    }
    if mode != "none":
        weights = correction_weights(sampler_logp, trainer_logp, mask, mode, low, high)[mask]
        raw = _log_ratio(sampler_logp, trainer_logp, mask, mode.startswith("sequence"))[mask]
        rho = raw.clamp(-LOG_RATIO_BOUND, LOG_RATIO_BOUND).exp()
        outside = (rho < low) | (rho > high)
        key = "truncated_frac" if mode.endswith("truncate") else "masked_frac"
        out[key] = float(outside.float().mean())
        out["weight_mean"] = float(weights.mean())
    return out


def check_bounds(low: float, high: float) -> str | None:
    """Why (low, high) are not usable correction bounds, or None."""
    if not (math.isfinite(high) and high > 0):
        return "the upper bound must be a positive number"
    if not (0 <= low <= 1 <= high):
        return "the bounds must satisfy 0 <= low <= 1 <= high"
    return None
