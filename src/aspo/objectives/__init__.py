"""Policy objectives (ASPO and its baselines), loss aggregation and KL estimators -- pure tensor functions.

    loss, metrics = policy_loss("aspo", log_prob, old_log_prob, advantages, response_mask, entropy=entropy)

Registered names (``POLICY_LOSSES``): aspo, aspo_flip_only, grpo, dapo, ppo, no_is, gspo, cispo, sapo. Each
objective's docstring (in ``aspo.objectives.losses``) holds its gradient-weight table; docs/algorithm.md
derives aspo / grpo. Adding one is a few lines:

    @register_policy_loss("mine", clip_ratio_high=0.3)
    def mine(tokens: TokenInputs) -> TokenTerms:
        return TokenTerms(value=-tokens.advantages * tokens.ratio, weight=tokens.ratio)

Imports torch only (never transformers).
"""

from aspo.objectives import losses as _losses  # noqa: F401  (registers the built-in objectives)
from aspo.objectives.base import (
    LOSS_AGG_MODES,
    POLICY_LOSS_DEFAULTS,
    POLICY_LOSSES,
    TokenInputs,
    TokenTerms,
    agg_loss,
    high_entropy_tokens,
    kl_penalty,
    register_policy_loss,
)
from aspo.objectives.policy import PROB_BUCKET_NAMES, policy_loss

__all__ = [
    "LOSS_AGG_MODES",
    "POLICY_LOSSES",
    "POLICY_LOSS_DEFAULTS",
    "PROB_BUCKET_NAMES",
    "TokenInputs",
    "TokenTerms",
    "agg_loss",
    "high_entropy_tokens",
    "kl_penalty",
    "policy_loss",
    "register_policy_loss",
]
