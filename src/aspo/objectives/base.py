"""Shared pieces of the policy objectives: the registry, loss aggregation, KL estimators, entropy split.

Every objective is a pure function ``fn(tokens: TokenInputs, **params) -> TokenTerms`` registered under a
name. It returns, per token, the surrogate loss *value* and the analytic *gradient weight* ``w`` defined by
``dL_t / dlogp_t = -A_t * w_t`` (before aggregation). ``policy_loss`` builds the differentiable per-token
loss from these two (see ``surrogate_per_token_loss``), so the gradient is the weight table by construction
and every metric is read off ``w`` in one pass.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from aspo.errors import UserError

LOG_RATIO_CLAMP = 20.0  # |log pi - log pi_old| is clamped here before exp (docs/algorithm.md)
LOSS_AGG_MODES = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm")

# Parameters every objective accepts; an objective may override these defaults in its registration.
COMMON_DEFAULTS: dict[str, Any] = {
    "clip_ratio_low": 0.2,
    "clip_ratio_high": 0.2,
    "clip_ratio_c": 3.0,
    "loss_agg_mode": "token-mean",
    "entropy_quantile": 0.8,
    # None = same range as the low-entropy tokens, i.e. no entropy split (everything but aspo).
    "high_entropy_clip_ratio_low": None,
    "high_entropy_clip_ratio_high": None,
    # composable terms (``aspo.objectives.terms``): 1.0 / None = off
    "top_entropy_quantile": 1.0,
    "off_policy_mask_threshold": None,
}


@dataclass(frozen=True)
class TokenInputs:
    """What an objective sees. All tensors (B, T), float32, no grad; padding holds neutral values.

    Attributes:
        log_ratio: clamp(logp - old_logp, -20, 20), 0 at padding.
        ratio: exp(log_ratio), 1 at padding.
        log_prob: current log-probs (detached), 0 at padding -- some reference loss *values* use it.
        advantages: broadcast to (B, T), 0 at padding.
        mask: bool validity.
        clip_low_bound: lo = 1 - eps_low, a float, or a (B, T) tensor when the entropy split applies.
        clip_high_bound: hi = 1 + eps_high, a float, or a (B, T) tensor when the entropy split applies.
        clip_c: the dual-clip constant c.
        generator: for objectives that draw at random (clip_cov); None means torch's global generator.
    """

    log_ratio: Tensor
    ratio: Tensor
    log_prob: Tensor
    advantages: Tensor
    mask: Tensor
    clip_low_bound: float | Tensor
    clip_high_bound: float | Tensor
    clip_c: float
    generator: torch.Generator | None = None


@dataclass(frozen=True)
class TokenTerms:
    """What an objective returns, all (B, T).

    Attributes:
        value: the per-token surrogate loss value (what the reference implementation reports).
        weight: w_t with dL_t/dlogp_t = -A_t * w_t.
        clipped: tokens whose weight the trust region cut (to 0, or truncated for cispo); None = never.
        dual_clipped: tokens in a dual-clip region (hard: weight 0; soft: weight c); None = never.
        selected: tokens the objective singled out (Clip-Cov's detached, KL-Cov's penalised); None = none.
        penalty_grad: a gradient d value / d logp not proportional to A, added to -A * w (KL-Cov's
            coef * sign(log r)); None = 0. Must be 0 at padding.
    """

    value: Tensor
    weight: Tensor
    clipped: Tensor | None = None
    dual_clipped: Tensor | None = None
    selected: Tensor | None = None
    penalty_grad: Tensor | None = None


ObjectiveFn = Callable[..., TokenTerms]


POLICY_LOSSES: dict[str, ObjectiveFn] = {}  # name -> objective function
POLICY_LOSS_DEFAULTS: dict[str, dict[str, Any]] = {}  # name -> every parameter it accepts, with defaults
POLICY_LOSS_CHECKS: dict[str, Callable[[dict[str, Any]], None]] = {}  # name -> its own parameters' checks


def register_policy_loss(
    name: str, check: Callable[[dict[str, Any]], None] | None = None, **defaults: Any
) -> Callable[[ObjectiveFn], ObjectiveFn]:
    """Decorator: register ``fn(tokens: TokenInputs, **params) -> TokenTerms`` under ``name``.

    ``defaults`` override ``COMMON_DEFAULTS`` and declare extra parameters the objective accepts, e.g.
    ``@register_policy_loss("sapo", tau_pos=1.0, tau_neg=1.05)``. The function receives every parameter
    that is not a common one (clip ranges, c and the aggregation reach it through ``TokenInputs``).
    ``check(params)`` raises UserError on a bad value of the objective's own parameters.
    """

    def decorator(fn: ObjectiveFn) -> ObjectiveFn:
        POLICY_LOSSES[name] = fn
        POLICY_LOSS_DEFAULTS[name] = {**COMMON_DEFAULTS, **defaults}
        if check is not None:
            POLICY_LOSS_CHECKS[name] = check
        return fn

    return decorator


def resolve_params(name: str, params: dict[str, Any]) -> tuple[ObjectiveFn, dict[str, Any]]:
    """Look ``name`` up and merge ``params`` over its defaults (None means 'use the default')."""
    if name not in POLICY_LOSSES:
        raise UserError(f"unknown policy loss {name!r}; valid names: {', '.join(sorted(POLICY_LOSSES))}")
    defaults = POLICY_LOSS_DEFAULTS[name]
    unknown = sorted(set(params) - set(defaults))
    if unknown:
        raise UserError(
            f"policy loss {name!r} got unknown parameter(s) {unknown}; it accepts {sorted(defaults)}"
        )
    merged = dict(defaults)
    merged.update({k: v for k, v in params.items() if v is not None})
    if merged["loss_agg_mode"] not in LOSS_AGG_MODES:
        raise UserError(f"loss_agg_mode {merged['loss_agg_mode']!r} is not one of {list(LOSS_AGG_MODES)}")
    if not merged["clip_ratio_c"] > 1.0:
        raise UserError(f"clip_ratio_c must be > 1 (got {merged['clip_ratio_c']})")
    for key in ("entropy_quantile", "top_entropy_quantile"):
        if not 0.0 <= merged[key] <= 1.0:
            raise UserError(f"{key} must be in [0, 1] (got {merged[key]})")
    threshold = merged["off_policy_mask_threshold"]
    if threshold is not None and not threshold >= 0.0:
        raise UserError(f"off_policy_mask_threshold must be >= 0 (got {threshold})")
    for key in (
        "clip_ratio_low",
        "clip_ratio_high",
        "high_entropy_clip_ratio_low",
        "high_entropy_clip_ratio_high",
    ):
        value = merged[key]
        if value is not None and not value >= 0.0:
            raise UserError(f"{key} must be >= 0 (got {value})")
    if name in POLICY_LOSS_CHECKS:
        POLICY_LOSS_CHECKS[name](merged)
    return POLICY_LOSSES[name], merged


def agg_loss(per_token_loss: Tensor, response_mask: Tensor, loss_agg_mode: str) -> Tensor:
    """Aggregate a (B, T) per-token loss into a scalar over the valid tokens of ``response_mask``.

    - ``token-mean``: sum / number of valid tokens (every token weighs the same; DAPO, the ASPO recipe).
    - ``seq-mean-token-mean``: mean over the B rows of each row's token mean (GRPO paper, GSPO).
    - ``seq-mean-token-sum``: mean over the B rows of each row's token sum.
    - ``seq-mean-token-sum-norm``: sum / (B * T), a constant normaliser (Dr. GRPO). verl divides by T
      only; we keep Dr. GRPO's 1/B so the scale does not grow with the batch.

    Rows are always counted B (a constant, as verl); a row with no valid token contributes 0 (not NaN),
    and an all-padding batch gives 0. Padding values never reach the result or its gradient.
    """
    if loss_agg_mode not in LOSS_AGG_MODES:
        raise UserError(f"loss_agg_mode {loss_agg_mode!r} is not one of {list(LOSS_AGG_MODES)}")
    mask = response_mask.bool()
    masked = torch.where(mask, per_token_loss, 0.0)  # a select: padding NaN/inf cannot leak
    return aggregate_zero_padded(masked, mask, loss_agg_mode)


def aggregate_zero_padded(per_token_loss: Tensor, mask: Tensor, loss_agg_mode: str) -> Tensor:
    """``agg_loss`` for a loss that is already exactly 0 at padding (skips the select)."""
    rows = max(mask.shape[0], 1)
    if loss_agg_mode == "token-mean":
        return per_token_loss.sum() / max(int(mask.count_nonzero()), 1)
    if loss_agg_mode == "seq-mean-token-sum-norm":
        return per_token_loss.sum() / (rows * mask.shape[-1])
    row_sums = per_token_loss.sum(dim=-1)
    if loss_agg_mode == "seq-mean-token-mean":
        row_sums = row_sums / mask.count_nonzero(dim=-1).clamp(min=1)
    return row_sums.sum() / rows


def kl_penalty(log_prob: Tensor, ref_log_prob: Tensor, kind: str) -> Tensor:
    """Per-token KL(pi || pi_ref) estimate, (B, T) -> (B, T); aggregate it with ``agg_loss``.

    kinds (Schulman's estimators, as named in verl), with d = ref_log_prob - log_prob:

    - ``k1``: -d (unbiased, high variance, can be negative);
    - ``k2`` / ``mse``: d^2 / 2 (its gradient is the true KL gradient to first order);
    - ``k3`` / ``low_var_kl``: exp(d) - d - 1 >= 0, clamped to [-10, 10] like verl (the ASPO recipe's
      KL loss, coefficient 0.001). d is clamped to [-20, 20] first so exp cannot overflow.
    """
    if log_prob.shape != ref_log_prob.shape:
        raise UserError(
            f"ref_log_prob has shape {tuple(ref_log_prob.shape)} but log_prob has {tuple(log_prob.shape)}"
        )
    diff = ref_log_prob - log_prob
    if kind == "k1":
        return -diff
    if kind in ("k2", "mse"):
        return 0.5 * diff.square()
    if kind in ("k3", "low_var_kl"):
        diff = diff.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
        return (diff.exp() - diff - 1.0).clamp(-10.0, 10.0)
    raise UserError(f"unknown KL estimator {kind!r}; valid kinds: k1, k2, mse, k3, low_var_kl")


def kl_loss(
    per_token_kl: Tensor,
    mask: Tensor,
    loss_agg_mode: str,
    coef: float,
    *,
    high_entropy: Tensor | None = None,
    high_entropy_coef: float = 0.0,
) -> tuple[Tensor, dict[str, float]]:
    """The weighted KL term of the loss and its metrics; (B, T) inputs.

    Without ``high_entropy``: ``coef * agg_loss(per_token_kl, mask)``. With it (a (B, T) bool of the tokens
    above the entropy quantile, ``high_entropy_tokens``), the KL is split as in the authors' code
    (Archer2.0 ``dp_actor``, ``use_token_entropy_separate``): ``coef`` times the KL aggregated over the other
    valid tokens plus ``high_entropy_coef`` times the KL aggregated over the high-entropy ones, each over
    its own tokens. ``metrics["kl_loss"]`` is the unweighted sum of the parts, as there.
    """
    valid = mask.bool()
    if high_entropy is None:
        kl = agg_loss(per_token_kl, valid, loss_agg_mode)
        return coef * kl, {"kl_loss": float(kl.detach())}
    high = high_entropy & valid
    low_kl = agg_loss(per_token_kl, valid & ~high, loss_agg_mode)
    high_kl = agg_loss(per_token_kl, high, loss_agg_mode)
    metrics = {
        "kl_loss": float((low_kl + high_kl).detach()),
        "kl_loss/low_entropy": float(low_kl.detach()),
        "kl_loss/high_entropy": float(high_kl.detach()),
    }
    return coef * low_kl + high_entropy_coef * high_kl, metrics


_FAR_BELOW = 3e38  # pushes padding under every valid entropy (entropies are >= 0; anything > -1e38 works)


def high_entropy_tokens(entropy: Tensor, mask: Tensor, quantile: float) -> Tensor:
    """(B, T) bool: valid tokens whose entropy is strictly above their response's ``quantile``.

    Matches the authors' reference (Archer2.0 ``dp_actor``): per row, ``torch.nanquantile`` over the valid
    tokens with linear interpolation, and "high" means ``entropy > q``; so ties with the quantile, a row
    with one token and ``quantile=1`` give no high tokens. (Their variable names are swapped --
    ``high_entropy_mask`` holds the *low* tokens -- but the effect is the one documented here.) One
    difference: we always work in float32, the reference in the entropy's own dtype (bf16 there), so
    near-ties can fall differently.
    Raises UserError if ``entropy`` holds NaN or inf at a valid position.

    Fast path (nanquantile sorts every row; this does one selection). The quantile interpolates the
    valid values of descending rank d and d - 1, with d = n - 1 - floor(q (n - 1)). Each row gets D - d
    extra +inf entries (D = max over rows of d) and padding goes below every valid value, so the wanted
    values sit at the same descending rank D in every row: one selection with a constant rank for the
    whole batch (numpy's introselect on CPU, an unsorted topk elsewhere).
    """
    batch, length = mask.shape
    if batch == 0 or length == 0:
        return mask.clone()
    with torch.no_grad():
        entropy = entropy.detach().float()
        # cheap: an all-finite sum means every entry is finite; only otherwise look at the valid ones
        all_finite = bool(entropy.sum().isfinite())  # then every entry is finite, padding included
        if not all_finite and not bool(torch.where(mask, entropy, 0.0).isfinite().all()):
            raise UserError("entropy holds NaN or inf at valid (response_mask) positions")
        padding = (~mask).to(entropy.dtype)
        counts = length - padding.sum(dim=-1).long()  # (B,); a float sum beats a bool count on CPU
        position = quantile * (counts - 1).clamp(min=0).to(entropy.dtype)  # ascending rank, as torch
        lower_rank = position.floor()
        frac = (position - lower_rank).unsqueeze(-1)
        desc_rank = (counts - 1 - lower_rank.long()).clamp(min=0)  # d per row
        top_rank = int(desc_rank.max())  # D
        minus_inf = torch.tensor(float("-inf"), device=mask.device)
        n_inf = (top_rank - desc_rank).unsqueeze(-1)
        filler = torch.where(torch.arange(top_rank, device=mask.device) < n_inf, -minus_inf, minus_inf)
        select = _above_quantile_numpy if entropy.device.type == "cpu" else _above_quantile_torch
        return select(entropy, mask, padding if all_finite else None, filler, frac)


def _above_quantile_torch(
    entropy: Tensor, mask: Tensor, padding: Tensor | None, filler: Tensor, frac: Tensor
) -> Tensor:
    """Rows [valid entropies, far below at padding | filler] -> unsorted topk -> ``entropy > q``.

    ``padding`` (0/1 floats) is given when every entropy is finite: padding then becomes e - 3e38, an
    add instead of a select. ``filler`` (B, D) holds the D - d +inf columns; frac (B, 1) the weights.
    """
    if padding is not None:
        values = torch.add(entropy, padding, alpha=-_FAR_BELOW)
    else:
        values = torch.where(mask, entropy, float("-inf"))
    rank = filler.shape[-1]
    top = torch.cat([values, filler], dim=-1).topk(rank + 1, dim=-1, sorted=False).values
    if rank == 0:
        below = above = top
    else:
        below, above = top.topk(2, dim=-1, largest=False, sorted=True).values.unbind(-1)
        below, above = below.unsqueeze(-1), above.unsqueeze(-1)
    return values > _interpolate(below, above, frac)


def _above_quantile_numpy(
    entropy: Tensor, mask: Tensor, padding: Tensor | None, filler: Tensor, frac: Tensor
) -> Tensor:
    """CPU version of ``_above_quantile_torch``: numpy's introselect (``np.partition`` with one kth)
    is several times faster than torch's topk, and numpy writes into the wide buffer without a copy."""
    batch, length = entropy.shape
    rank = filler.shape[-1]
    extended = np.empty((batch, length + rank), dtype=np.float32)
    values = extended[:, :length]
    if padding is not None:
        np.multiply(padding.numpy(), np.float32(-_FAR_BELOW), out=values)
        np.add(values, entropy.numpy(), out=values)
    else:
        np.copyto(values, np.where(mask.numpy(), entropy.numpy(), np.float32(-np.inf)))
    extended[:, length:] = filler.numpy()
    kth = length - 1  # ascending position of descending rank `rank`
    partitioned = np.partition(extended, kth, axis=-1)
    below = torch.from_numpy(partitioned[:, kth : kth + 1].copy())
    above = below if rank == 0 else torch.from_numpy(partitioned[:, kth + 1 :].min(axis=-1, keepdims=True))
    threshold = _interpolate(below, above, frac).numpy()
    return torch.from_numpy(np.greater(values, threshold))


def _interpolate(below: Tensor, above: Tensor, frac: Tensor) -> Tensor:
    """torch.quantile's linear interpolation; with frac = 0 ``above`` is unused (it may be +inf)."""
    return torch.lerp(below, torch.where(frac > 0, above, below), frac)
