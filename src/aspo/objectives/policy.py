"""``policy_loss``: input checks, the entropy split, the differentiable surrogate, the metrics."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from aspo.errors import UserError
from aspo.objectives.base import (
    COMMON_DEFAULTS,
    LOG_RATIO_CLAMP,
    TokenInputs,
    TokenTerms,
    aggregate_zero_padded,
    high_entropy_tokens,
    resolve_params,
)
from aspo.objectives.terms import off_policy_keep, top_entropy_tokens

# Buckets of the behaviour probability exp(old_log_prob) for the pos_weight_by_prob/* metrics.
PROB_BUCKET_EDGES = (0.0, 0.25, 0.5, 0.75, 0.9, 1.0)
PROB_BUCKET_NAMES = tuple(
    f"{lo:.2f}-{hi:.2f}" for lo, hi in zip(PROB_BUCKET_EDGES[:-1], PROB_BUCKET_EDGES[1:], strict=True)
)


def policy_loss(
    name: str,
    log_prob: Tensor,
    old_log_prob: Tensor,
    advantages: Tensor,
    response_mask: Tensor,
    *,
    entropy: Tensor | None = None,
    generator: torch.Generator | None = None,
    sampling_log_prob: Tensor | None = None,
    token_weights: Tensor | None = None,
    **params: Any,
) -> tuple[Tensor, dict[str, float]]:
    """Policy-gradient loss ``name`` (see ``POLICY_LOSSES``) and its metrics.

    Args:
        log_prob: (B, T) log pi_theta(y_t), carries the gradient.
        old_log_prob: (B, T) behaviour log-probs log pi_old(y_t).
        advantages: (B, T), or (B,) broadcast over the response.
        response_mask: (B, T) bool or 0/1; padding positions never affect the loss or any gradient.
        entropy: optional (B, T) token entropies of pi_theta; when given and the objective's
            high-entropy ranges differ from its normal ones (aspo: 0.4 vs 0.2), tokens above the
            per-response ``entropy_quantile`` use ``high_entropy_clip_ratio_low/high``; required by
            ``top_entropy_quantile`` < 1.
        generator: the random draws of objectives that make them (clip_cov); None: torch's global one.
        sampling_log_prob: (B, T) the sampler's own log-probs, when they differ from old_log_prob (vLLM):
            the off-policy mask measures the drift from them (TRL's ``sampling_per_token_logps``); NaN
            entries (tokens the sampler could not score) count as no drift. Default: old_log_prob.
        token_weights: optional (B, T) constant weights multiplying each token's loss and gradient (the
            rollout correction's importance weights, ``aspo.objectives.rollout_correction``); the
            normaliser is unchanged.
        params: ``clip_ratio_low``, ``clip_ratio_high``, ``clip_ratio_c``, ``loss_agg_mode``,
            ``entropy_quantile``, ``high_entropy_clip_ratio_low``, ``high_entropy_clip_ratio_high``, the
            composable terms ``top_entropy_quantile`` (rho < 1: only the batch's top-rho tokens by entropy
            keep a loss) and ``off_policy_mask_threshold`` (delta: drop negative responses whose mean
            log(pi_old / pi) exceeds it; see ``aspo.objectives.terms``), and the objective's own (sapo:
            ``tau_pos``, ``tau_neg``; clip_cov: ``clip_cov_ratio|lb|ub``; kl_cov: ``kl_cov_ratio|coef``);
            None means the objective's default.

    Returns:
        (loss, metrics): a scalar whose gradient w.r.t. ``log_prob`` is -A * w / normaliser per token,
        w from the objective's weight table, normaliser from ``loss_agg_mode`` (see ``agg_loss``); and
        a dict of floats (see ``_metrics``). (kl_cov adds its penalty's gradient to -A * w.)

    Raises:
        UserError (a ValueError): unknown name or parameter, mismatched shapes, a mask that is not 0/1,
            NaN or inf inside the mask in log_prob, old_log_prob, advantages, or in entropy where the
            entropy split uses it.
    """
    objective, settings = resolve_params(name, params)
    mask = _check_inputs(log_prob, old_log_prob, advantages, response_mask, entropy)
    if settings["top_entropy_quantile"] < 1.0 and entropy is None:
        raise UserError("top_entropy_quantile < 1 selects tokens by entropy: pass entropy=(B, T) entropies")
    if token_weights is not None and token_weights.shape != log_prob.shape:
        raise UserError(
            f"token_weights has shape {tuple(token_weights.shape)}, log_prob {tuple(log_prob.shape)}"
        )
    with torch.no_grad():
        # padding gets neutral values (log-probs 0, ratio 1, advantage 0) with one select each
        current = torch.where(mask, log_prob.detach().float(), 0.0)
        behaviour = torch.where(mask, old_log_prob.detach().float(), 0.0)
        adv = advantages.detach().float()
        adv = torch.where(mask, adv.unsqueeze(-1) if adv.dim() == 1 else adv, 0.0)
        _check_finite(current, behaviour, adv)

        log_ratio = (current - behaviour).clamp_(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
        ratio = log_ratio.exp()
        clip_low_bound, clip_high_bound, high_entropy = _clip_bounds(settings, entropy, mask)
        tokens = TokenInputs(
            log_ratio=log_ratio,
            ratio=ratio,
            log_prob=current,
            advantages=adv,
            mask=mask,
            clip_low_bound=clip_low_bound,
            clip_high_bound=clip_high_bound,
            clip_c=float(settings["clip_ratio_c"]),
            generator=generator,
        )
        own_params = {k: v for k, v in settings.items() if k not in COMMON_DEFAULTS}
        terms = objective(tokens, **own_params)
        sampler = behaviour
        if sampling_log_prob is not None and settings["off_policy_mask_threshold"] is not None:
            if sampling_log_prob.shape != log_prob.shape:
                raise UserError(
                    f"sampling_log_prob has shape {tuple(sampling_log_prob.shape)} but log_prob has "
                    f"{tuple(log_prob.shape)}"
                )
            sampling = sampling_log_prob.detach().float()
            sampler = torch.where(mask & ~sampling.isnan(), sampling, current)
        kept, term_metrics = _kept_tokens(settings, entropy, tokens, sampler)
        keep = mask if kept is None else kept  # the composable terms drop tokens by zeroing value and weight
        value = terms.value * keep.to(terms.value.dtype)  # objectives are finite at padding; drop it
        weight = terms.weight if kept is None else terms.weight * kept.to(terms.weight.dtype)
        grad_coef = (adv * weight).neg_()  # exactly 0 at padding: adv is 0 there, weights finite
        if terms.penalty_grad is not None:
            grad_coef.add_(terms.penalty_grad * keep.to(grad_coef.dtype))
        if token_weights is not None:  # the rollout correction scales each token's loss and gradient
            weights = torch.where(mask, token_weights.detach().float(), 0.0)
            value, grad_coef = value * weights, grad_coef * weights
        terms = TokenTerms(
            value, weight, terms.clipped, terms.dual_clipped, terms.selected, terms.penalty_grad
        )

    per_token_loss = _PolicyGradient.apply(log_prob, value, grad_coef)
    loss = aggregate_zero_padded(per_token_loss, mask, settings["loss_agg_mode"])
    metrics = _metrics(tokens, terms, behaviour, high_entropy)
    metrics.update(term_metrics)
    return loss, metrics


def _kept_tokens(
    settings: dict[str, Any], entropy: Tensor | None, tokens: TokenInputs, sampler: Tensor
) -> tuple[Tensor | None, dict[str, float]]:
    """(B, T) bool of the valid tokens the composable terms keep (None when none is on) and their metrics:
    ``top_entropy_frac`` (share of valid tokens selected by entropy) and ``offpolicy_masked_frac`` (share of
    responses with a valid token that the off-policy mask drops)."""
    kept, metrics = None, {}
    n_valid = max(int(tokens.mask.count_nonzero()), 1)
    if settings["top_entropy_quantile"] < 1.0:
        assert entropy is not None  # checked on entry
        kept = top_entropy_tokens(entropy, tokens.mask, float(settings["top_entropy_quantile"]))
        metrics["top_entropy_frac"] = int(kept.count_nonzero()) / n_valid
    if settings["off_policy_mask_threshold"] is not None:
        threshold = float(settings["off_policy_mask_threshold"])
        keep = off_policy_keep(tokens.advantages, tokens.log_prob, sampler, tokens.mask, threshold)
        responses = tokens.mask.any(dim=-1)
        dropped = (~keep & tokens.mask).any(dim=-1)
        metrics["offpolicy_masked_frac"] = int(dropped.count_nonzero()) / max(
            int(responses.count_nonzero()), 1
        )
        kept = (tokens.mask if kept is None else kept) & keep
    return kept, metrics


class _PolicyGradient(torch.autograd.Function):
    """Forward: the objective's per-token value. Backward: d value / d log_prob = -A * w, exactly.

    Equivalent to ``value + grad_coef * (log_prob - log_prob.detach())`` without touching ``log_prob``
    in the forward pass, so whatever sits in the padding (even inf) never meets an arithmetic op, and
    the backward pass is one multiplication.
    """

    @staticmethod
    def forward(ctx, log_prob: Tensor, value: Tensor, grad_coef: Tensor) -> Tensor:
        ctx.save_for_backward(grad_coef)
        ctx.log_prob_dtype = log_prob.dtype
        return value.clone()

    @staticmethod
    def backward(ctx, grad_output: Tensor) -> tuple[Tensor, None, None]:
        (grad_coef,) = ctx.saved_tensors
        return (grad_output * grad_coef).to(ctx.log_prob_dtype), None, None


def _check_inputs(
    log_prob: Tensor, old_log_prob: Tensor, advantages: Tensor, response_mask: Tensor, entropy: Tensor | None
) -> Tensor:
    """Shape and dtype checks; returns the bool mask. No broadcasting beyond advantages (B,) -> (B, T)."""
    named = {"log_prob": log_prob, "old_log_prob": old_log_prob, "advantages": advantages}
    named["response_mask"] = response_mask
    if entropy is not None:
        named["entropy"] = entropy
    for arg, tensor in named.items():
        if not isinstance(tensor, Tensor):
            raise UserError(f"{arg} must be a torch.Tensor, got {type(tensor).__name__}")
    if log_prob.dim() != 2:
        raise UserError(f"log_prob must be (batch, response_len); got shape {tuple(log_prob.shape)}")
    shape = log_prob.shape
    for arg in ("old_log_prob", "response_mask", "entropy"):
        if arg in named and named[arg].shape != shape:
            raise UserError(f"{arg} has shape {tuple(named[arg].shape)} but log_prob has {tuple(shape)}")
    if advantages.shape not in (shape, shape[:1]):
        raise UserError(
            f"advantages has shape {tuple(advantages.shape)}; expected {tuple(shape)} or ({shape[0]},)"
        )
    for arg in ("log_prob", "old_log_prob", "entropy"):
        if arg in named and not named[arg].is_floating_point():
            raise UserError(f"{arg} must be a floating-point tensor, got {named[arg].dtype}")
    if response_mask.dtype == torch.bool:
        return response_mask
    if ((response_mask != 0) & (response_mask != 1)).any():
        raise UserError("response_mask must be bool or hold only 0 and 1")
    return response_mask.bool()


def _check_finite(current: Tensor, behaviour: Tensor, adv: Tensor) -> None:
    """NaN/inf at valid positions -> UserError naming the argument (entropy: see high_entropy_tokens).

    Cheap path: the inputs are already zeroed at padding, so one sum per tensor is finite unless some
    valid entry is not (or the sum overflowed); only then look element by element.
    """
    named = {"log_prob": current, "old_log_prob": behaviour, "advantages": adv}
    if bool(torch.stack([t.sum() for t in named.values()]).isfinite().all()):
        return
    for arg, tensor in named.items():
        if not bool(tensor.isfinite().all()):
            raise UserError(f"{arg} holds NaN or inf at valid (response_mask) positions")


def _clip_bounds(
    settings: dict[str, Any], entropy: Tensor | None, mask: Tensor
) -> tuple[float | Tensor, float | Tensor, Tensor | None]:
    """lo = 1 - eps_low and hi = 1 + eps_high, per token when the entropy split applies."""
    eps_low, eps_high = float(settings["clip_ratio_low"]), float(settings["clip_ratio_high"])
    high_low = settings["high_entropy_clip_ratio_low"]
    high_high = settings["high_entropy_clip_ratio_high"]
    high_low = eps_low if high_low is None else float(high_low)
    high_high = eps_high if high_high is None else float(high_high)
    if entropy is None or (high_low == eps_low and high_high == eps_high):
        return 1.0 - eps_low, 1.0 + eps_high, None
    high = high_entropy_tokens(entropy, mask, float(settings["entropy_quantile"]))
    as_float = high.float()
    low_base = torch.tensor(1.0 - eps_low, device=mask.device)
    high_base = torch.tensor(1.0 + eps_high, device=mask.device)
    lo = torch.add(low_base, as_float, alpha=eps_low - high_low)  # 1 - eps per token, no select needed
    hi = torch.add(high_base, as_float, alpha=high_high - eps_high)
    return lo, hi, high


def _metrics(
    tokens: TokenInputs, terms: TokenTerms, behaviour: Tensor, high_entropy: Tensor | None
) -> dict[str, float]:
    """All metrics from one batch of reductions and a single host transfer.

    - ``clipfrac/pos``, ``clipfrac/neg``: share of positive / negative valid tokens the trust region
      clipped (per-sign denominators; Archer logs the same counts over all tokens). 0 with no such token.
    - ``dualclip/pos``, ``dualclip/neg``: share in a dual-clip region (hard or soft).
    - ``ppo_kl``: mean of -log r over valid tokens (verl's convention).
    - ``ratio/min|mean|max``: token ratio r over valid tokens.
    - ``weight/pos``, ``weight/neg``: mean gradient weight w per advantage sign.
    - ``pos_weight_by_prob/<lo>-<hi>``: mean w of positive tokens whose behaviour probability
      exp(old_log_prob) lies in [lo, hi) (the last bucket includes 1.0). Under grpo it rises with the
      probability (w = r); under aspo it does not.
    - ``{pos,neg}_unclipped_weight_by_prob/<bucket>``: the same mean per sign over the tokens neither the
      trust region nor a dual clip touched, and ``{pos,neg}_clipfrac_by_prob/<bucket>`` the share they
      touched: a weight of 0 by clipping is the clip range's doing, not the ratio's (flipped or not).
    - ``entropy_high_frac``: share of valid tokens given the high-entropy range (only when split).
    - ``cov_selected_frac``: share of valid tokens clip_cov / kl_cov selected (only for them).
    A mean over no tokens is omitted rather than faked.
    """
    mask, adv, ratio, weight = tokens.mask, tokens.advantages, tokens.ratio, terms.weight
    positive = adv > 0  # adv is 0 at padding, so the signs already imply validity
    negative = adv < 0
    zero = torch.zeros((), device=mask.device)
    n_buckets = len(PROB_BUCKET_NAMES)
    # code = bucket of exp(old_log_prob) (compared in log space) + n_buckets * sign code + 3 * n_buckets if
    # clipped, where the sign code is 0 for A > 0, 1 for A = 0 or padding, 2 for A < 0: one bincount gives
    # every per-sign, per-clip sum
    code = torch.zeros(mask.shape, dtype=torch.uint8, device=mask.device)
    for edge in PROB_BUCKET_EDGES[1:-1]:
        code += behaviour >= math.log(edge)
    code += (~positive).to(torch.uint8).add_(negative).mul_(n_buckets)
    touched = [f for f in (terms.clipped, terms.dual_clipped) if f is not None]
    if touched:
        code += (touched[0] if len(touched) == 1 else touched[0] | touched[1]).to(torch.uint8) * (
            3 * n_buckets
        )
    code = code.flatten()
    n_bins = 6 * n_buckets
    ratio_lo, ratio_hi = torch.aminmax(ratio) if ratio.numel() else (zero, zero)

    def count(flags: Tensor | None, sign: Tensor) -> Tensor:
        return zero if flags is None else (flags & sign).count_nonzero()

    scalars = [
        mask.count_nonzero(),
        count(terms.clipped, positive),
        count(terms.clipped, negative),
        count(terms.dual_clipped, positive),
        count(terms.dual_clipped, negative),
        -tokens.log_ratio.sum(),  # log_ratio is 0 at padding
        ratio.sum(),  # ratio is 1 at padding
        ratio_lo,
        ratio_hi,
        zero if high_entropy is None else high_entropy.count_nonzero(),
        zero if terms.selected is None else (terms.selected & mask).count_nonzero(),
    ]
    flat = torch.cat(
        [
            torch.stack([s.double() for s in scalars]),
            torch.bincount(code, minlength=n_bins).double(),
            torch.bincount(code, weights=weight.flatten().float(), minlength=n_bins).double(),
        ]
    ).tolist()
    (n_valid, clip_pos, clip_neg, dual_pos, dual_neg, neg_log_ratio_sum, ratio_sum, ratio_min, ratio_max,
     n_high, n_selected) = flat[: len(scalars)]  # fmt: skip
    bin_counts = flat[len(scalars) : len(scalars) + n_bins]
    bin_weights = flat[len(scalars) + n_bins :]
    half = 3 * n_buckets  # bins [0, half) untouched by any clip, [half, 2 * half) touched

    def by_bucket(sign: int, clipped: bool) -> tuple[list[float], list[float]]:
        start = sign * n_buckets + (half if clipped else 0)
        return bin_counts[start : start + n_buckets], bin_weights[start : start + n_buckets]

    free = {sign: by_bucket(sign, False) for sign in (0, 2)}  # 0: A > 0, 2: A < 0
    cut = {sign: by_bucket(sign, True) for sign in (0, 2)}
    counts = [a + b for a, b in zip(free[0][0], cut[0][0], strict=True)]  # A > 0, per probability bucket
    sums = [a + b for a, b in zip(free[0][1], cut[0][1], strict=True)]
    n_pos, weight_pos = sum(counts), sum(sums)
    n_neg = sum(free[2][0]) + sum(cut[2][0])
    weight_neg = sum(free[2][1]) + sum(cut[2][1])
    n_padding = mask.numel() - n_valid
    if n_padding and n_valid and (ratio_min == 1.0 or ratio_max == 1.0):
        # padding's neutral 1 may have won the min or max: recompute over the valid tokens only
        valid_ratio = ratio[mask]
        ratio_min, ratio_max = valid_ratio.min().item(), valid_ratio.max().item()

    metrics = {
        "clipfrac/pos": clip_pos / max(n_pos, 1.0),
        "clipfrac/neg": clip_neg / max(n_neg, 1.0),
        "dualclip/pos": dual_pos / max(n_pos, 1.0),
        "dualclip/neg": dual_neg / max(n_neg, 1.0),
        "ppo_kl": neg_log_ratio_sum / max(n_valid, 1.0),
    }
    if n_valid:
        metrics["ratio/min"] = ratio_min
        metrics["ratio/mean"] = (ratio_sum - n_padding) / n_valid
        metrics["ratio/max"] = ratio_max
    if n_pos:
        metrics["weight/pos"] = weight_pos / n_pos
    if n_neg:
        metrics["weight/neg"] = weight_neg / n_neg
    for bucket_name, n_bucket, total in zip(PROB_BUCKET_NAMES, counts, sums, strict=True):
        if n_bucket:
            metrics[f"pos_weight_by_prob/{bucket_name}"] = total / n_bucket
    for sign, prefix in ((0, "pos"), (2, "neg")):
        for i, bucket_name in enumerate(PROB_BUCKET_NAMES):
            n_free, n_cut = free[sign][0][i], cut[sign][0][i]
            if n_free:
                metrics[f"{prefix}_unclipped_weight_by_prob/{bucket_name}"] = free[sign][1][i] / n_free
            if n_free + n_cut:
                metrics[f"{prefix}_clipfrac_by_prob/{bucket_name}"] = n_cut / (n_free + n_cut)
    if high_entropy is not None:
        metrics["entropy_high_frac"] = n_high / max(n_valid, 1.0)
    if terms.selected is not None:
        metrics["cov_selected_frac"] = n_selected / max(n_valid, 1.0)
    return metrics
