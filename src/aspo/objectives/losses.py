"""The registered policy objectives, each with its gradient-weight table.

Notation: r = exp(clamp(logp - old_logp, -20, 20)) per token, A the advantage, lo = 1 - clip_ratio_low,
hi = 1 + clip_ratio_high, c = clip_ratio_c. Each objective gives the weight w with dL_t/dlogp_t = -A_t w_t
(before aggregation) and the loss value the reference implementations report. A token with A = 0 has
zero loss and zero gradient in every objective but kl_cov (whose penalty acts on selected tokens whatever
A). Tokens with A = 0 take the positive branch below; that only matters for the value (it is 0) and never
for the metrics, which split tokens by the sign of A.

Because r is clamped, where |logp - old_logp| > 20 a weight "r" means the clamped r (at most e^-20 ~ 2e-9
below, where verl's autograd through the clamp gives exactly 0; the two differ by less than 2.1e-9).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from aspo.objectives.base import TokenInputs, TokenTerms, register_policy_loss


class _Side(NamedTuple):
    """One advantage sign's rule, evaluated on every token; ``_combine`` keeps it where the sign fits.

    value = -A * surrogate; weight = ``weight``, except 0 where ``clipped`` or ``dual_clipped`` (hard dual
    clip). CPU selects and bool-by-float products cost several times an arithmetic pass, so the sides
    use clamps and ``_combine`` 0/1 float factors.
    """

    surrogate: Tensor
    weight: Tensor
    clipped: Tensor
    dual_clipped: Tensor | None = None


def _ppo_positive(ratio: Tensor, hi: float | Tensor) -> _Side:
    """A > 0 under PPO-clip: value -A * min(r, hi); w = r, or 0 above hi (the upper clip)."""
    return _Side(ratio.clamp(max=hi), ratio, ratio > hi)


def _ppo_negative(tokens: TokenInputs, ratio: Tensor, dual: bool) -> _Side:
    """A < 0 under PPO-clip: value -A * max(r, lo); w = r, or 0 below lo (the lower clip).

    With the (hard) dual clip (Ye et al. 2019, verl's vanilla): above c the value is -A * c and w = 0.
    """
    clipped = ratio < tokens.clip_low_bound
    surrogate = ratio.clamp(min=tokens.clip_low_bound)
    if not dual:
        return _Side(surrogate, ratio, clipped)
    c = tokens.clip_c
    dual_clipped = ratio > c  # implies r > lo, so never also `clipped`
    # max(r, lo) > c exactly when r > c, so capping the surrogate at c is the hard dual clip
    return _Side(surrogate.clamp_(max=c), ratio, clipped, dual_clipped)


def _flipped_positive(tokens: TokenInputs) -> _Side:
    """A > 0 flipped as in ASPO, without its dual clip: value -A / min(r, hi), w = 1/r (0 above hi).

    The value is the reference's -A * (r_til / sg(r_til)) / sg(r_til): its gradient is -A * (1/r) dlogp.
    r >= e^-20, so 1/r <= 4.9e8 stays finite.
    """
    ratio = tokens.ratio
    surrogate = ratio.clamp(max=tokens.clip_high_bound).reciprocal_()
    return _Side(surrogate, ratio.reciprocal(), ratio > tokens.clip_high_bound)


def _combine(tokens: TokenInputs, positive: _Side, negative: _Side) -> TokenTerms:
    """Keep each token's side by the sign of its advantage (A = 0 takes the positive side).

    x * 1 + y * 0 == x exactly for finite y, so the 0/1 float factors select without a select.
    """
    is_negative = tokens.advantages < 0
    is_positive = ~is_negative
    dtype = tokens.ratio.dtype
    dual_clipped = None
    zeroed_positive, zeroed_negative = positive.clipped, negative.clipped
    if positive.dual_clipped is not None:
        dual_clipped = positive.dual_clipped & is_positive
        zeroed_positive = zeroed_positive | positive.dual_clipped
    if negative.dual_clipped is not None:
        negative_dual = negative.dual_clipped & is_negative
        dual_clipped = negative_dual if dual_clipped is None else dual_clipped | negative_dual
        zeroed_negative = zeroed_negative | negative.dual_clipped
    weight = positive.weight * (is_positive & ~zeroed_positive).to(dtype)
    weight.addcmul_(negative.weight, (is_negative & ~zeroed_negative).to(dtype))
    positive_factor = is_positive.to(dtype)
    surrogate = positive.surrogate * positive_factor
    surrogate.addcmul_(negative.surrogate, positive_factor.neg_().add_(1.0))
    return TokenTerms(
        value=surrogate.mul_(tokens.advantages).neg_(),
        weight=weight,
        clipped=(negative.clipped & is_negative) | (positive.clipped & is_positive),
        dual_clipped=dual_clipped,
    )


@register_policy_loss("aspo", high_entropy_clip_ratio_low=0.4, high_entropy_clip_ratio_high=0.4)
def aspo_loss(tokens: TokenInputs) -> TokenTerms:
    """ASPO (arXiv 2510.06062): flipped IS ratio for positive tokens, soft dual clip on both sides.

    | A     | region            | w     | value            |
    |-------|-------------------|-------|------------------|
    | A > 0 | r > hi            | 0     | -A / hi          |
    | A > 0 | 1/c <= r <= hi    | 1/r   | -A / r           |
    | A > 0 | r < 1/c           | c     | -A * c * logp    |
    | A < 0 | r < lo            | 0     | -A * lo          |
    | A < 0 | lo <= r <= c      | r     | -A * r           |
    | A < 0 | r > c             | c     | -A * c * logp    |

    Defaults are the reference recipe: eps 0.2 / 0.2, c = 3, and with ``entropy`` given, eps 0.4 / 0.4 for
    tokens above the per-response 0.8 entropy quantile.

    Both halves of the table are one rule. With rho = r for A < 0 and rho = 1/r for A >= 0, and the
    lower bound b = lo for A < 0 and b = 1/hi for A >= 0 (r > hi is exactly rho < 1/hi, r < 1/c exactly
    rho > c): w = 0 if rho < b; w = c if rho > c (value -A * c * logp); else w = rho; and the value is
    -A * max(rho, b) outside the dual clip. ASPO is PPO's negative-token rule with the soft dual clip,
    applied to the flipped ratio for positive tokens -- and computed that way here, once for all tokens.
    """
    dtype = tokens.ratio.dtype
    negative = (tokens.advantages < 0).to(dtype)
    positive = 1.0 - negative  # A >= 0; A = 0 tokens have zero value and gradient anyway
    rho = (tokens.log_ratio * (negative - positive)).exp_()  # r^(-1) for A >= 0, r for A < 0
    lo, hi = tokens.clip_low_bound, tokens.clip_high_bound
    bound = negative * lo  # x * 1 + y * 0 is exact: b is lo or 1/hi to the bit
    if isinstance(hi, Tensor):
        bound.addcmul_(positive, hi.reciprocal())
    else:
        bound.add_(positive, alpha=1.0 / hi)
    c = tokens.clip_c
    clipped = rho < bound
    dual_clipped = rho > c  # never also `clipped`: b <= 1 < c
    weight = rho.clamp(max=c).mul_((~clipped).to(dtype))
    surrogate = rho.clamp_(min=bound)  # rho is not needed any more
    torch.where(dual_clipped, c * tokens.log_prob, surrogate, out=surrogate)
    return TokenTerms(surrogate.mul_(tokens.advantages).neg_(), weight, clipped, dual_clipped)


@register_policy_loss("aspo_flip_only", high_entropy_clip_ratio_low=0.4, high_entropy_clip_ratio_high=0.4)
def aspo_flip_only_loss(tokens: TokenInputs) -> TokenTerms:
    """Ablation: ASPO's flipped weight for positive tokens, no soft dual clip anywhere.

    | A     | region            | w     | value                 |
    |-------|-------------------|-------|-----------------------|
    | A > 0 | r > hi            | 0     | -A / hi               |
    | A > 0 | r <= hi           | 1/r   | -A / r (uncapped)     |
    | A < 0 | r < lo            | 0     | -A * lo               |
    | A < 0 | lo <= r <= c      | r     | -A * r                |
    | A < 0 | r > c             | 0     | -A * c (hard dual)    |

    Negative tokens are exactly grpo's. Positive weights grow as 1/r without the cap c (up to e^20).
    """
    return _combine(tokens, _flipped_positive(tokens), _ppo_negative(tokens, tokens.ratio, dual=True))


def _grpo_terms(tokens: TokenInputs) -> TokenTerms:
    return _combine(
        tokens,
        _ppo_positive(tokens.ratio, tokens.clip_high_bound),
        _ppo_negative(tokens, tokens.ratio, dual=True),
    )


@register_policy_loss("grpo")
def grpo_loss(tokens: TokenInputs) -> TokenTerms:
    """PPO-clip with the hard dual clip on negative tokens (verl's "vanilla" policy loss, GRPO).

    | A     | region            | w | value          |
    |-------|-------------------|---|----------------|
    | A > 0 | r > hi            | 0 | -A * hi        |
    | A > 0 | r <= hi           | r | -A * r         |
    | A < 0 | r < lo            | 0 | -A * lo        |
    | A < 0 | lo <= r <= c      | r | -A * r         |
    | A < 0 | r > c             | 0 | -A * c         |
    """
    return _grpo_terms(tokens)


@register_policy_loss("dapo", clip_ratio_high=0.28)
def dapo_loss(tokens: TokenInputs) -> TokenTerms:
    """DAPO: grpo's table with clip-higher (default clip_ratio_high 0.28); use token-mean aggregation."""
    return _grpo_terms(tokens)


@register_policy_loss("ppo")
def ppo_loss(tokens: TokenInputs) -> TokenTerms:
    """Plain PPO-clip without any dual clip (TRL's GRPOTrainer default): grpo's table except that
    negative tokens with r > c keep w = r (value -A * r)."""
    return _combine(
        tokens,
        _ppo_positive(tokens.ratio, tokens.clip_high_bound),
        _ppo_negative(tokens, tokens.ratio, dual=False),
    )


@register_policy_loss("no_is", clip_ratio_high=0.28)
def no_is_loss(tokens: TokenInputs) -> TokenTerms:
    """The paper's "without IS" ablation: w = 1 wherever grpo's weight is r, w = 0 wherever grpo clips.

    | A     | region            | w | value |
    |-------|-------------------|---|-------|
    | A > 0 | r > hi            | 0 | 0     |
    | A > 0 | r <= hi           | 1 | -A    |
    | A < 0 | r < lo            | 0 | 0     |
    | A < 0 | lo <= r <= c      | 1 | -A    |
    | A < 0 | r > c             | 0 | 0     |

    The value is -A * (r / sg(r)) on kept tokens. Default clip_ratio_high is DAPO's 0.28 because the paper
    ran this ablation on DAPO; pass 0.2 for the GRPO version.
    """
    grpo = _grpo_terms(tokens)
    clipped = grpo.clipped
    assert clipped is not None  # _combine always marks the trust-region clip
    dropped = clipped if grpo.dual_clipped is None else clipped | grpo.dual_clipped
    keep = (~dropped).to(tokens.ratio.dtype)
    return TokenTerms(-tokens.advantages * keep, keep, grpo.clipped, grpo.dual_clipped)


@register_policy_loss("gspo", clip_ratio_low=3e-4, clip_ratio_high=4e-4, loss_agg_mode="seq-mean-token-mean")
def gspo_loss(tokens: TokenInputs) -> TokenTerms:
    """GSPO (Zheng et al. 2025), token form: the ratio is the sequence's s_i = exp(mean_t log r_t).

    Per token the loss is PPO-clip (no dual clip) on s_i,t = sg(s_i) * pi_t / sg(pi_t), so w_t = s_i,
    or 0 where s_i is clipped (A > 0 and s_i > hi, or A < 0 and s_i < lo); value -A * clip-side(s_i).
    With seq-mean-token-mean aggregation (its default) the gradient -A s_i / (B |y_i|) per token equals the
    sequence-level GSPO gradient. Defaults: eps 3e-4 / 4e-4 (the GSPO paper). The ratio/* metrics still
    report the token ratio r_t.
    """
    counts = tokens.mask.sum(dim=-1, keepdim=True).clamp(min=1)
    sequence_ratio = (tokens.log_ratio.sum(dim=-1, keepdim=True) / counts).exp().expand_as(tokens.ratio)
    return _combine(
        tokens,
        _ppo_positive(sequence_ratio, tokens.clip_high_bound),
        _ppo_negative(tokens, sequence_ratio, dual=False),
    )


@register_policy_loss("cispo", clip_ratio_low=1.0, clip_ratio_high=0.28)
def cispo_loss(tokens: TokenInputs) -> TokenTerms:
    """CISPO (MiniMax-M1): REINFORCE with a clipped, stop-gradient IS weight; no token loses its gradient.

    w = clamp(r, lo, hi) for both signs; value -A * sg(clamp(r, lo, hi)) * logp. "clipped" counts tokens
    whose weight was truncated (r > hi or r < lo) although they keep a gradient. Defaults: no lower bound
    (clip_ratio_low 1.0, as MiniMax-M1) and clip_ratio_high 0.28.
    """
    ratio = tokens.ratio
    weight = ratio.clamp(min=tokens.clip_low_bound).clamp(max=tokens.clip_high_bound)
    clipped = (ratio > tokens.clip_high_bound) | (ratio < tokens.clip_low_bound)
    return TokenTerms(-tokens.advantages * weight * tokens.log_prob, weight, clipped, None)


@register_policy_loss("sapo", tau_pos=1.0, tau_neg=1.05)
def sapo_loss(tokens: TokenInputs, *, tau_pos: float, tau_neg: float) -> TokenTerms:
    """SAPO (Gao et al. 2025): a soft sigmoid gate instead of a hard clip; no token is ever clipped.

    value -A * (4 / tau) * sigmoid(tau (r - 1)), tau = tau_pos for A > 0 and tau_neg for A < 0;
    w = 4 * sigmoid(x) * sigmoid(-x) * r with x = tau (r - 1): 1 at r = 1, decaying smoothly off-policy
    (the derivative of the gate times dr/dlogp = r). Written with sigmoid(-x) so it is 0, not NaN, far out.
    """
    tau = torch.where(tokens.advantages < 0, tau_neg, tau_pos).to(tokens.ratio.dtype)
    x = tau * (tokens.ratio - 1.0)
    gate = torch.sigmoid(x)
    weight = 4.0 * gate * torch.sigmoid(-x) * tokens.ratio
    return TokenTerms(-tokens.advantages * (4.0 / tau) * gate, weight)
