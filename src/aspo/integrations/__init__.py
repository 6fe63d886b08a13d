"""Plug-ins that give ``aspo.objectives`` to the engines people scale with.

- ``aspo.integrations.trl``: ``ASPOConfig`` / ``ASPOTrainer`` on TRL's ``GRPOTrainer`` (extra ``aspo[trl]``).
- ``aspo.integrations.verl``: importing it registers ``aspo`` (and our objectives verl lacks) in verl's
  policy-loss registry, selected with ``actor_rollout_ref.actor.policy_loss.loss_mode=aspo``.

Neither is imported here: each needs its engine installed.
"""
