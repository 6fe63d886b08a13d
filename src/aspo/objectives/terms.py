"""Terms that compose with every objective: token selection, sequence masking and the entropy bonus.

- ``top_entropy_tokens``: train only on the top-rho tokens by entropy ("Beyond the 80/20 Rule",
  arXiv 2506.01939; TRL's ``top_entropy_quantile``).
- ``off_policy_keep``: drop negative-advantage responses that drifted too far from the behaviour policy
  (DeepSeek-V3.2, arXiv 2512.02556, Eq. 9; TRL's ``off_policy_mask_threshold``).
- ``entropy_bonus``: -coef * the aggregated token entropy (verl's ``entropy_coeff``), and the adaptive
  coefficient of Skywork-OR1 (arXiv 2505.22312; TRL's ``use_adaptive_entropy``).

``policy_loss`` applies the first two (parameters ``top_entropy_quantile`` and ``off_policy_mask_threshold``)
by zeroing the value and the weight of the tokens they drop; the normaliser is unchanged (dropped tokens still
count, as in both references). The bonus needs the entropy's own graph, so the update stage adds it.
"""

from __future__ import annotations

import torch
from torch import Tensor

from aspo.errors import UserError
from aspo.objectives.base import agg_loss


def top_entropy_tokens(entropy: Tensor, mask: Tensor, rho: float) -> Tensor:
    """(B, T) bool: valid tokens whose entropy is >= the (1 - rho) quantile of all valid tokens' entropies.

    TRL's ``get_high_entropy_mask`` on one process: one threshold for the whole batch (``torch.quantile``'s
    linear interpolation, computed here with two ``kthvalue`` so no size limit applies), ``>=`` so ties with
    the threshold are kept; rho = 1 keeps every token, rho = 0 only the highest-entropy one(s). No valid
    token: nothing is kept. Raises UserError if a valid entropy is NaN or inf.
    """
    with torch.no_grad():
        values = entropy.detach().float()[mask]
        if values.numel() == 0:
            return torch.zeros_like(mask)
        if not bool(values.isfinite().all()):
            raise UserError("entropy holds NaN or inf at valid (response_mask) positions")
        position = (1.0 - rho) * (values.numel() - 1)
        lower = int(position)
        below = values.kthvalue(lower + 1).values
        above = values.kthvalue(min(lower + 2, values.numel())).values
        threshold = torch.lerp(below, above, torch.tensor(position - lower, dtype=values.dtype))
        return (entropy.detach().float() >= threshold) & mask


def off_policy_keep(
    advantages: Tensor, current: Tensor, behaviour: Tensor, mask: Tensor, threshold: float
) -> Tensor:
    """(B, T) bool: False on the tokens of responses DeepSeek-V3.2's off-policy sequence mask drops.

    M_i,t = 0 when A_i,t < 0 and (1 / |o_i|) sum_t (log pi_old - log pi_theta) > delta, else 1; pi_old is the
    behaviour (sampling) policy. Inputs (B, T), zero at padding (as ``policy_loss`` holds them); the mean is
    over each response's valid tokens (TRL's ``get_off_policy_mask``; a response without one has mean 0).
    """
    counts = mask.sum(dim=-1, keepdim=True).clamp(min=1)
    mean_kl = (behaviour - current).sum(dim=-1, keepdim=True) / counts
    return (advantages >= 0) | (mean_kl <= threshold)


def entropy_bonus(entropy: Tensor, mask: Tensor, coef: float, loss_agg_mode: str) -> Tensor:
    """-coef * agg(H): the term verl adds to the policy loss (``policy_loss - entropy_coeff * entropy``).

    entropy (B, T) with its graph; aggregated like the policy loss (``agg_loss``), so the update's
    normalisers apply to it unchanged. dL/dH_t = -coef / N (token-mean, N valid tokens).
    """
    return agg_loss(entropy, mask, loss_agg_mode) * -coef


def applied_entropy_coef(coef: float, last_entropy: float, target: float) -> float:
    """Skywork-OR1's alpha_k = c_k * 1[e_k <= target]: the bonus acts only once entropy is at or below the
    target. ``last_entropy`` is the previous optimizer step's (inf before the first: no bonus yet)."""
    return coef if last_entropy <= target else 0.0


def adapted_entropy_coef(
    coef: float, entropy: float, *, target: float, delta: float, coef_min: float, coef_max: float
) -> float:
    """Skywork-OR1's controller after one optimizer step with mean token entropy ``entropy``:
    min(c + delta, coef_max) when entropy <= target, else max(c - delta, coef_min) (TRL's form)."""
    return min(coef + delta, coef_max) if entropy <= target else max(coef - delta, coef_min)
