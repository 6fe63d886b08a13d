"""ASPO in verl: importing this module registers our objectives in verl's own policy-loss registry.

    VERL_USE_EXTERNAL_MODULES=aspo.integrations.verl python -m verl.trainer.main_ppo \\
        actor_rollout_ref.actor.policy_loss.loss_mode=aspo ...

(or install ``aspo`` with its ``verl.plugins`` entry point, which verl loads on ``import verl`` in every
process, Ray workers included). Tested against verl 0.9.1 (``make test-verl``); the registry interface
used here -- a two-value ``(loss, metrics)`` return and ``rollout_is_weights`` -- exists since verl 0.6.

Registered names: every ``aspo.objectives.POLICY_LOSSES`` name verl does not already define -- ``aspo``,
``aspo_flip_only``, ``grpo`` (= verl's ``vanilla``), ``dapo``, ``ppo``, ``no_is``. verl's own ``gspo``,
``sapo``, ``cispo``, ``clip_cov`` and ``kl_cov`` keep their verl implementations (verl's ``clip_cov`` /
``kl_cov`` and ours give the same loss and gradient: tests/verl; mind that verl's ``PolicyLossConfig``
defaults ``ppo_kl_coef`` to 0.1, ours ``kl_cov_coef`` to 1.0, the function's own fallback). Each is a
function with verl's signature
``(old_log_prob, log_prob, advantages, response_mask, loss_agg_mode, config, rollout_is_weights)
-> (loss, metrics)``:

- clip ranges come from verl's ``ActorConfig``: ``clip_ratio_low`` / ``clip_ratio_high`` (falling back to
  ``clip_ratio``) and ``clip_ratio_c`` (the dual-clip c, default 3.0) -- exactly what ``vanilla`` reads.
- aggregation follows verl: every ``loss_agg_mode`` verl accepts (token-mean, token-sum, seq-mean-*) with
  the global batch sizes verl stores in ``config.global_batch_info`` (dp_size, batch_num_tokens,
  global_batch_size, loss_scale_factor), so the gradient summed over micro-batches and ranks is the same
  as for verl's own losses.
- ``rollout_is_weights`` (verl's rollout correction) multiply each token's loss; every objective here is
  linear in the advantage at a fixed sign, so they are applied by scaling the advantages.
- metrics: ours under ``actor/`` (``actor/clipfrac/pos``, ``actor/dualclip/neg``, ``actor/ppo_kl``, ...);
  verl averages them over micro-batches.

The entropy bonus is verl's own ``actor.entropy_coeff`` (the same form as ours: -coef times the entropy
aggregated like the loss). What the interface cannot carry is not offered here: top-entropy token
selection (no entropies reach a policy loss), the off-policy sequence mask (no config key for its
threshold) and the adaptive entropy coefficient (trainer state).

No entropy: verl's policy-loss interface passes no token entropies, so ASPO's entropy-aware ranges (the
looser 0.4 range for each response's top-20% entropy tokens) cannot apply. Every token gets the single
``clip_ratio_low`` / ``clip_ratio_high`` from ``ActorConfig``; the asymmetric weights (1/r for positive
tokens) and the soft dual clip are unaffected. Running the paper's recipe in verl therefore means choosing
one range (0.2, the low-entropy tokens' one, or something between) for all tokens; our own trainer and
``aspo.integrations.trl`` pass entropies and apply the split.
"""

from __future__ import annotations

from typing import Any

import torch
from verl.trainer.ppo import core_algos

from aspo.errors import UserError
from aspo.objectives import POLICY_LOSS_DEFAULTS, POLICY_LOSSES, policy_loss

# Objective parameters that verl's config carries under another name (ours -> verl's ActorConfig field).
_FROM_ACTOR_CONFIG = {"tau_pos": "tau_pos", "tau_neg": "tau_neg"}


def _config_value(config: Any, key: str, default: Any = None) -> Any:
    """Read ``key`` from an ActorConfig dataclass or a DictConfig alike (both have attribute access)."""
    value = getattr(config, key, None) if config is not None else None
    return default if value is None else value


def _objective_params(name: str, config: Any) -> dict[str, Any]:
    """policy_loss keyword parameters from verl's actor config, as verl's vanilla loss reads them."""
    if config is None:
        raise UserError(f"verl called policy loss {name!r} without an actor config")
    clip_ratio = _config_value(config, "clip_ratio", 0.2)
    params: dict[str, Any] = {
        "clip_ratio_low": _config_value(config, "clip_ratio_low", clip_ratio),
        "clip_ratio_high": _config_value(config, "clip_ratio_high", clip_ratio),
        "clip_ratio_c": _config_value(config, "clip_ratio_c", 3.0),
    }
    own = set(POLICY_LOSS_DEFAULTS[name]) & set(_FROM_ACTOR_CONFIG)
    for key in own:
        value = _config_value(config, _FROM_ACTOR_CONFIG[key])
        if value is not None:
            params[key] = value
    return params


def _verl_aggregation(
    response_mask: torch.Tensor, loss_agg_mode: str, batch_info: dict[str, Any]
) -> tuple[str, float]:
    """Our aggregation mode and the factor that turns its micro-batch value into verl's ``agg_loss``.

    Aggregation is linear in the per-token loss, so (ours * factor) is verl's value and gradient:
    - token-mean: S / n_local  ->  S / batch_num_tokens * dp_size   (batch_num_tokens None: n_local)
    - token-sum:  via token-mean, S / n_local  ->  S * dp_size
    - seq-mean-token-{sum,mean}: R / B  ->  R / global_batch_size * dp_size  (None: non-empty rows)
    - seq-mean-token-sum-norm: S / (B T)  ->  S / global_batch_size * dp_size / loss_scale_factor (None: T)
    with S the masked token sum, R the sum of per-row aggregates, B the rows, T the padded length.
    """
    mask = response_mask.bool()
    rows, length = mask.shape
    dp_size = float(batch_info.get("dp_size") or 1)
    n_local = float(mask.sum())

    def given(key: str, local: float) -> float:
        value = batch_info.get(key)
        if value is None:
            if dp_size > 1:
                raise UserError(
                    f"verl loss_agg_mode {loss_agg_mode!r} with dp_size > 1 needs {key} in global_batch_info"
                )
            return local
        return float(value)

    if loss_agg_mode == "token-mean":
        tokens = given("batch_num_tokens", n_local)
        return "token-mean", (n_local / tokens * dp_size) if tokens else 0.0
    if loss_agg_mode == "token-sum":
        return "token-mean", n_local * dp_size
    if loss_agg_mode in ("seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm"):
        sequences = given("global_batch_size", float(mask.any(dim=-1).sum()))
        if not sequences:
            return loss_agg_mode, 0.0
        factor = rows / sequences * dp_size
        if loss_agg_mode == "seq-mean-token-sum-norm":
            scale = batch_info.get("loss_scale_factor") or length
            factor *= length / float(scale)
        return loss_agg_mode, factor
    raise UserError(f"unknown verl loss_agg_mode {loss_agg_mode!r}")


def make_verl_policy_loss(name: str):
    """verl-signature wrapper around ``aspo.objectives.policy_loss(name, ...)``."""
    if name not in POLICY_LOSSES:
        raise UserError(f"unknown policy loss {name!r}; valid names: {', '.join(sorted(POLICY_LOSSES))}")

    def compute_policy_loss(
        old_log_prob: torch.Tensor,
        log_prob: torch.Tensor,
        advantages: torch.Tensor,
        response_mask: torch.Tensor,
        loss_agg_mode: str = "token-mean",
        config: Any = None,
        rollout_is_weights: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        """Policy loss ``name`` of aspo.objectives; tensors (batch, response_len). No entropy (see module)."""
        params = _objective_params(name, config)
        batch_info = dict(_config_value(config, "global_batch_info", {}) or {})
        our_mode, factor = _verl_aggregation(response_mask, loss_agg_mode, batch_info)
        if rollout_is_weights is not None:
            advantages = advantages * rollout_is_weights.detach()
        loss, metrics = policy_loss(
            name, log_prob, old_log_prob, advantages, response_mask, loss_agg_mode=our_mode, **params
        )
        return loss * factor, {f"actor/{key}": value for key, value in metrics.items()}

    compute_policy_loss.__name__ = f"compute_policy_loss_{name}"
    compute_policy_loss.__qualname__ = compute_policy_loss.__name__
    return compute_policy_loss


def register_all() -> tuple[str, ...]:
    """Register every objective verl lacks (never replacing one of verl's own); idempotent.

    Returns the names in verl's registry that are served by aspo."""
    for name in sorted(POLICY_LOSSES):
        if name not in core_algos.POLICY_LOSS_REGISTRY:
            core_algos.register_policy_loss(name)(make_verl_policy_loss(name))
    return tuple(
        name
        for name, fn in core_algos.POLICY_LOSS_REGISTRY.items()
        if getattr(fn, "__module__", "") == __name__
    )


REGISTERED = register_all()
