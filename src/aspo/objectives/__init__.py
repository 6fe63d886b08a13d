"""Policy objectives (ASPO and its baselines), loss aggregation and KL estimators -- pure tensor functions.

    loss, metrics = policy_loss("aspo", log_prob, old_log_prob, advantages, response_mask, entropy=entropy)

Registered names (``POLICY_LOSSES``): aspo, aspo_flip_only, grpo, dapo, ppo, no_is, gspo, cispo, sapo,
clip_cov, kl_cov. Each objective's docstring (in ``aspo.objectives.losses`` and ``.covariance``) holds its
gradient-weight table; docs/algorithm.md derives aspo / grpo. Every objective composes with the terms of
``aspo.objectives.terms`` (top-entropy token selection, off-policy sequence masking: ``policy_loss``
parameters; the entropy bonus: added by the update stage). Adding one is a few lines:

    @register_policy_loss("mine", clip_ratio_high=0.3)
    def mine(tokens: TokenInputs) -> TokenTerms:
        return TokenTerms(value=-tokens.advantages * tokens.ratio, weight=tokens.ratio)

Imports torch only (never transformers).
"""

from aspo.objectives import covariance as _covariance  # noqa: F401  (registers clip_cov, kl_cov)
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
from aspo.objectives.terms import (
    adapted_entropy_coef,
    applied_entropy_coef,
    entropy_bonus,
    off_policy_keep,
    top_entropy_tokens,
)

__all__ = [
    "LOSS_AGG_MODES",
    "POLICY_LOSSES",
    "POLICY_LOSS_DEFAULTS",
    "PROB_BUCKET_NAMES",
    "TokenInputs",
    "TokenTerms",
    "adapted_entropy_coef",
    "agg_loss",
    "applied_entropy_coef",
    "entropy_bonus",
    "high_entropy_tokens",
    "kl_penalty",
    "off_policy_keep",
    "policy_loss",
    "register_policy_loss",
    "top_entropy_tokens",
]
