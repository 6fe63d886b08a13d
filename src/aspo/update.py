"""The update stage: current log-probs and entropy in one forward, objective, backward.

Pure functions of (model, batch); the optimizer step and all state stay in the trainer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from aspo.rollout.base import Rollout


@dataclass
class UpdateBatch:
    """The tensors of one (mini-/micro-)batch of responses, all (rows, R) unless noted."""

    prompt_ids: torch.Tensor          # (rows, P)
    prompt_mask: torch.Tensor         # (rows, P) bool
    response_ids: torch.Tensor
    response_mask: torch.Tensor       # bool
    behaviour_logprobs: torch.Tensor
    advantages: torch.Tensor          # (rows,)
    ref_logprobs: torch.Tensor | None = None

    @staticmethod
    def from_rollout(rollout: Rollout, advantages: torch.Tensor,
                     ref_logprobs: torch.Tensor | None = None) -> UpdateBatch:
        return UpdateBatch(rollout.prompt_ids, rollout.prompt_mask, rollout.response_ids,
                           rollout.response_mask, rollout.behaviour_logprobs, advantages, ref_logprobs)

    def rows(self, index: torch.Tensor) -> UpdateBatch:
        """Select rows and trim columns that are padding in every selected row."""
        prompt_mask = self.prompt_mask[index]
        response_mask = self.response_mask[index]
        p_keep = int(prompt_mask.any(0).nonzero().min()) if prompt_mask.any() else prompt_mask.shape[1] - 1
        r_keep = int(response_mask.any(0).nonzero().max()) + 1 if response_mask.any() else 1
        return UpdateBatch(
            prompt_ids=self.prompt_ids[index, p_keep:], prompt_mask=prompt_mask[:, p_keep:],
            response_ids=self.response_ids[index, :r_keep], response_mask=response_mask[:, :r_keep],
            behaviour_logprobs=self.behaviour_logprobs[index, :r_keep], advantages=self.advantages[index],
            ref_logprobs=None if self.ref_logprobs is None else self.ref_logprobs[index, :r_keep],
        )

    def __len__(self) -> int:
        return self.prompt_ids.shape[0]

    def without_tokens(self, pad_token_id: int) -> UpdateBatch:
        """A one-row batch with no valid token (zero loss and gradient): keeps DDP's collective calls matched
        on a rank that has no data for this mini-batch."""
        if len(self):
            one = self.rows(torch.arange(1))
        else:
            ids = torch.full((1, 1), pad_token_id)
            one = UpdateBatch(ids, torch.ones(1, 1, dtype=torch.bool), ids.clone(),
                              torch.zeros(1, 1, dtype=torch.bool), torch.zeros(1, 1), torch.zeros(1))
        one.response_mask = torch.zeros_like(one.response_mask)
        return one


def normaliser_scale(response_mask: torch.Tensor, loss_agg_mode: str, global_tokens: float,
                     global_seqs: float, world_size: int) -> float:
    """Factor that turns a micro-batch's own mean into its share of the global mean.

    ``policy_loss`` averages over the tokens (or sequences) it is given; a mini-batch split into micro-
    batches, or across data-parallel ranks whose gradients DDP averages, must weight each part by its
    share of the global count so that the summed gradient equals the one-batch gradient.
    """
    if loss_agg_mode == "token-mean":
        local, total = float(response_mask.sum()), global_tokens
    else:
        local, total = float(response_mask.any(-1).sum()), global_seqs
    return local * world_size / max(total, 1.0)


def micro_batches(batch: UpdateBatch, size: int) -> list[UpdateBatch]:
    """Split into micro-batches of ``size`` rows (0: one micro-batch)."""
    n = len(batch)
    if size <= 0 or size >= n:
        return [batch.rows(torch.arange(n))]
    return [batch.rows(torch.arange(i, min(i + size, n))) for i in range(0, n, size)]


def mean_metrics(rows: list[dict[str, float]]) -> dict[str, float]:
    """Average dicts key by key (a key absent from a row is not counted for that row)."""
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    for row in rows:
        for key, value in row.items():
            sums[key] = sums.get(key, 0.0) + float(value)
            counts[key] = counts.get(key, 0) + 1
    return {key: sums[key] / counts[key] for key in sums}


def objective_params(algorithm: Any) -> dict[str, Any]:
    """The keyword parameters of ``policy_loss`` from an AlgorithmConfig (None means: the default)."""
    params = {
        "clip_ratio_low": algorithm.clip_ratio_low,
        "clip_ratio_high": algorithm.clip_ratio_high,
        "clip_ratio_c": algorithm.clip_ratio_c,
        "loss_agg_mode": algorithm.loss_agg_mode,
        "entropy_quantile": algorithm.entropy_quantile,
        "high_entropy_clip_ratio_low": algorithm.high_entropy_clip_ratio_low,
        "high_entropy_clip_ratio_high": algorithm.high_entropy_clip_ratio_high,
    }
    return {k: v for k, v in params.items() if v is not None}
