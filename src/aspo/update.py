"""The update stage, in one place: a rollout's rows -> mini-batches -> micro-batches -> current log-probs and
entropy in one forward -> objective (+ KL to the reference) -> backward, each part weighted by its share of
the global normaliser.

    stage = PolicyUpdate(accelerator, model, cfg.algorithm, ...)   # once
    grads = stage.backward(mini_batch)                              # once per mini-batch
    then the trainer clips, steps the optimizer (unless grads.global_tokens == 0) and records UpdateStats.

The optimizer, the schedule and all other state stay in the trainer.
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from aspo import distributed as dist
from aspo.models import token_logprobs
from aspo.objectives import entropy_bonus, kl_penalty, policy_loss
from aspo.objectives.base import high_entropy_tokens, kl_loss
from aspo.precision import FP32, Precision
from aspo.rollout.base import Rollout, select_rows


@dataclass
class UpdateBatch:
    """The tensors of one (mini-/micro-)batch of responses, all (rows, R) unless noted."""

    prompt_ids: torch.Tensor  # (rows, P)
    prompt_mask: torch.Tensor  # (rows, P) bool
    response_ids: torch.Tensor
    response_mask: torch.Tensor  # bool
    behaviour_logprobs: torch.Tensor
    advantages: torch.Tensor  # (rows,)
    ref_logprobs: torch.Tensor | None = None
    correction_weights: torch.Tensor | None = None  # rollout correction's per-token weights (or None)

    @staticmethod
    def from_rollout(
        rollout: Rollout,
        advantages: torch.Tensor,
        ref_logprobs: torch.Tensor | None = None,
        correction_weights: torch.Tensor | None = None,
    ) -> UpdateBatch:
        return UpdateBatch(
            rollout.prompt_ids,
            rollout.prompt_mask,
            rollout.response_ids,
            rollout.response_mask,
            rollout.behaviour_logprobs,
            advantages,
            ref_logprobs,
            correction_weights,
        )

    def rows(self, index: torch.Tensor) -> UpdateBatch:
        """Select rows (as ``Rollout.select``) and trim columns that are padding in every selected row."""
        prompt_mask, response_mask = self.prompt_mask[index], self.response_mask[index]
        p_keep = int(prompt_mask.any(0).nonzero().min()) if prompt_mask.any() else prompt_mask.shape[1] - 1
        r_keep = int(response_mask.any(0).nonzero().max()) + 1 if response_mask.any() else 1
        trimmed = dataclasses.replace(
            self, prompt_ids=self.prompt_ids[:, p_keep:], prompt_mask=self.prompt_mask[:, p_keep:]
        )
        for name in (
            "response_ids",
            "response_mask",
            "behaviour_logprobs",
            "ref_logprobs",
            "correction_weights",
        ):
            value = getattr(self, name)
            setattr(trimmed, name, None if value is None else value[:, :r_keep])
        return select_rows(trimmed, index)  # indexing the trimmed views copies once, contiguous

    def __len__(self) -> int:
        return self.prompt_ids.shape[0]

    def without_tokens(self, pad_token_id: int) -> UpdateBatch:
        """A one-row batch with no valid token (zero loss and gradient): keeps DDP's collective calls matched
        on a rank that has no data for this mini-batch."""
        if len(self):
            one = self.rows(torch.arange(1))
        else:
            ids = torch.full((1, 1), pad_token_id)
            one = UpdateBatch(
                ids,
                torch.ones(1, 1, dtype=torch.bool),
                ids.clone(),
                torch.zeros(1, 1, dtype=torch.bool),
                torch.zeros(1, 1),
                torch.zeros(1),
            )
        one.response_mask = torch.zeros_like(one.response_mask)
        return one


def normaliser_scale(
    response_mask: torch.Tensor, loss_agg_mode: str, global_tokens: float, global_rows: float, world_size: int
) -> float:
    """Factor that turns a micro-batch's own mean into its share of the global mean.

    ``policy_loss`` averages over the tokens it is given (token-mean) or over all its rows (the seq-mean
    modes count every row, one without valid tokens too: ``agg_loss``). A mini-batch split into micro-
    batches, or across data-parallel ranks whose gradients DDP averages, must weight each part by its
    share of the same global count so that the summed gradient equals the one-batch gradient.
    """
    if loss_agg_mode == "token-mean":
        local, total = float(response_mask.sum()), global_tokens
    else:
        local, total = float(response_mask.shape[0]), global_rows
    return local * world_size / max(total, 1.0)


def micro_batches(batch: UpdateBatch, size: int) -> list[UpdateBatch]:
    """Split into micro-batches of ``size`` rows (0: one micro-batch)."""
    n = len(batch)
    if size <= 0 or size >= n:
        return [batch.rows(torch.arange(n))]
    return [batch.rows(torch.arange(i, min(i + size, n))) for i in range(0, n, size)]


def mini_batch_indices(
    rows: int, count: int, generator: torch.Generator | None, size: int = 0, global_rows: int | None = None
) -> list[torch.Tensor]:
    """This rank's rows of each mini-batch of one epoch, in a random order (``generator``) or in order (None).

    ``size`` 0: ``count`` near-equal parts (some empty when rows < count). ``size`` > 0: mini-batches of
    ``size`` responses, the last partial; over several ranks (``global_rows`` in all) every rank cuts its
    rows into the same number of parts, ceil(global_rows / size), so that every rank steps together.
    """
    order = torch.randperm(rows, generator=generator) if generator is not None else torch.arange(rows)
    if size > 0:
        if global_rows is None or global_rows == rows:
            return list(order.split(size))
        count = -(-global_rows // size)
    return [torch.as_tensor(chunk, dtype=torch.long) for chunk in np.array_split(order.numpy(), count)]


@dataclass
class GradientPass:
    """What one mini-batch's forward and backward left behind (the gradients sit in the model)."""

    global_tokens: float  # valid response tokens of this mini-batch on all ranks; 0: nothing was computed
    loss: float = 0.0  # sum of the micro-batches' losses on this rank (non-finite: skip the step)
    metrics: list[dict[str, float]] = field(default_factory=list)  # per micro-batch with rows on this rank
    entropy: list[float] = field(default_factory=list)  # mean token entropy per micro-batch with tokens
    # mean entropy of the tokens above their response's entropy quantile (the top 20 % by default)
    entropy_high: list[float] = field(default_factory=list)
    entropy_sum: float = 0.0  # token entropies summed over this mini-batch on all ranks (with_entropy_sum)


@dataclass
class UpdateStats:
    """What the update on one rollout reports, accumulated over its mini-batches."""

    micro_metrics: list[dict[str, float]] = field(default_factory=list)
    entropy: list[float] = field(default_factory=list)  # first epoch only: the policy that sampled
    entropy_high: list[float] = field(default_factory=list)  # likewise
    grad_norms: list[float] = field(default_factory=list)  # one per optimizer step taken
    nonfinite_steps: int = 0

    def add(self, grads: GradientPass, first_epoch: bool) -> None:
        self.micro_metrics += grads.metrics
        if first_epoch:
            self.entropy += grads.entropy
            self.entropy_high += grads.entropy_high

    def metrics(self, lr: float) -> dict[str, float]:
        out = {f"actor/{k}": v for k, v in dist.mean_metrics(self.micro_metrics).items()}
        out.update(
            {
                "actor/entropy": float(np.mean(self.entropy)) if self.entropy else float("nan"),
                "actor/entropy_high": float(np.mean(self.entropy_high))
                if self.entropy_high
                else float("nan"),
                "actor/grad_norm": float(np.mean(self.grad_norms)) if self.grad_norms else float("nan"),
                "actor/lr": lr,
                "actor/nonfinite_steps": float(self.nonfinite_steps),
                "actor/optimizer_steps": float(len(self.grad_norms)),
            }
        )
        return out


class PolicyUpdate:
    """Forward, objective and backward for one mini-batch, split into micro-batches and over ranks.

    Each part's loss is its own mean (``policy_loss``), scaled by ``normaliser_scale`` so that the gradient
    accumulated over micro-batches and averaged by DDP equals the gradient of the mini-batch's loss.
    """

    def __init__(
        self,
        accelerator: Any,
        model: torch.nn.Module,
        algorithm: Any,
        *,
        temperature: float,
        micro_batch_size: int,
        pad_token_id: int,
        nominal_rows: int = 0,
        precision: Precision = FP32,
    ) -> None:
        self.accelerator, self.model = accelerator, model
        self.precision = (
            precision  # the forward runs in its autocast; the backward follows the forward's dtypes
        )
        self.objective, self.params = algorithm.loss, algorithm.objective_params()
        # the aggregation the objective really uses (its registered default unless set): the KL term and
        # the normalisers must agree with it
        self.loss_agg_mode = algorithm.resolved_objective_params()["loss_agg_mode"]
        self.entropy_split = algorithm.entropy_split
        # the objective sees the entropies for the entropy split or the top-entropy token selection
        self.pass_entropy = algorithm.entropy_split or algorithm.top_entropy_quantile < 1.0
        self.entropy_bonus_on = algorithm.entropy_coef != 0 or algorithm.entropy_adaptive  # logs its coef
        self.kl_coef, self.kl_estimator = algorithm.kl_coef, algorithm.kl_estimator
        self.kl_high_entropy_coef, self.entropy_quantile = (
            algorithm.kl_high_entropy_coef,
            algorithm.entropy_quantile,
        )
        self.temperature, self.micro_batch_size, self.pad_token_id = (
            temperature,
            micro_batch_size,
            pad_token_id,
        )
        # > 0: a mini-batch's loss is divided by this many responses, not its own count (the authors'
        # gradient accumulation: a last partial mini-batch weighs less; train.partial_mini_batch=scaled)
        self.nominal_rows = nominal_rows

    def backward(
        self,
        mini: UpdateBatch,
        *,
        entropy_coef: float = 0.0,
        generator: torch.Generator | None = None,
        with_entropy_sum: bool = False,
    ) -> GradientPass:
        """Accumulate the gradient of ``mini``'s loss (this rank's rows; may be empty) into the model.

        entropy_coef: the entropy bonus's coefficient for this mini-batch (the trainer owns its schedule);
        generator: the objective's random draws (clip_cov); with_entropy_sum: also all-reduce the token
        entropy sum into ``GradientPass.entropy_sum`` (the adaptive entropy controller's measurement).
        """
        acc = self.accelerator
        tokens = dist.reduce_sum(acc, float(mini.response_mask.sum()))
        if tokens == 0:  # on every rank: nothing to learn from, and every rank knows it
            return GradientPass(global_tokens=0.0)
        rows = dist.reduce_sum(acc, float(len(mini)))
        # a rank without rows still runs one empty part: DDP's all-reduce needs every rank
        parts = (
            micro_batches(mini, self.micro_batch_size)
            if len(mini)
            else [mini.without_tokens(self.pad_token_id)]
        )
        share = rows / self.nominal_rows if self.nominal_rows else 1.0
        real_parts = len(parts) if len(mini) else 0
        if dist.is_sharded(self.model):  # each forward and backward is a collective: as many as any rank
            missing = dist.reduce_max(acc, len(parts)) - len(parts)
            parts += [mini.without_tokens(self.pad_token_id)] * missing
        out = GradientPass(global_tokens=tokens)
        local_entropy_sum = 0.0
        for i, part in enumerate(parts):
            # gradients are all-reduced once, after the last part
            sync = acc.no_sync(self.model) if i < len(parts) - 1 else contextlib.nullcontext()
            with sync:
                loss, metrics, entropy = self.loss(part, entropy_coef=entropy_coef, generator=generator)
                entropy_high = metrics.pop("entropy_high", None)
                value = float(loss.detach())
                scale = normaliser_scale(
                    part.response_mask, self.loss_agg_mode, tokens, rows, acc.num_processes
                )
                # a non-finite loss still goes backward: the other ranks' gradient all-reduce needs this
                # rank, and the NaN it brings makes every rank's gradient norm NaN, so all skip the step
                acc.backward(loss * (scale * share))
            out.loss += value
            if i < real_parts:
                out.metrics.append(metrics)
                if entropy is not None:
                    out.entropy.append(entropy)
                    local_entropy_sum += entropy * float(part.response_mask.sum())
                if entropy_high is not None:
                    out.entropy_high.append(entropy_high)
        if with_entropy_sum:
            out.entropy_sum = dist.reduce_sum(acc, local_entropy_sum)
        return out

    def loss(
        self, part: UpdateBatch, *, entropy_coef: float = 0.0, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, dict[str, float], float | None]:
        """(loss, metrics, mean token entropy) of one micro-batch; a NaN loss when the log-probs are not
        finite (diverged weights: the caller skips the step and counts it). With ``entropy_coef`` > 0 the
        loss includes the entropy bonus -coef * agg(H), aggregated like the policy loss."""
        with self.precision.autocast():
            logprobs, entropy = token_logprobs(
                self.model,
                part.prompt_ids,
                part.prompt_mask,
                part.response_ids,
                part.response_mask,
                temperature=self.temperature,
            )
        device = logprobs.device
        mask = part.response_mask.to(device)
        if not bool(torch.isfinite(logprobs[mask]).all()):  # through the graph: see ``backward``
            return logprobs[mask].sum() * float("nan"), {}, None
        loss, metrics = policy_loss(
            self.objective,
            logprobs,
            part.behaviour_logprobs.to(device),
            part.advantages.to(device),
            mask,
            entropy=entropy if self.pass_entropy else None,
            generator=generator,
            token_weights=None if part.correction_weights is None else part.correction_weights.to(device),
            **self.params,
        )
        assert entropy is not None  # with_entropy=True
        high = high_entropy_tokens(entropy.detach(), mask, self.entropy_quantile)
        if high.any():  # popped by ``backward``: averaged over the first epoch like the mean entropy
            metrics["entropy_high"] = float(entropy.detach()[high].mean())
        if part.ref_logprobs is not None:
            kl, kl_metrics = kl_loss(
                kl_penalty(logprobs, part.ref_logprobs.to(device), self.kl_estimator),
                mask,
                self.loss_agg_mode,
                self.kl_coef,
                high_entropy=high if self.kl_high_entropy_coef is not None else None,
                high_entropy_coef=self.kl_high_entropy_coef or 0.0,
            )
            metrics.update(kl_metrics)
            loss = loss + kl
        if entropy_coef:
            loss = loss + entropy_bonus(entropy, mask, entropy_coef, self.loss_agg_mode)
        if entropy_coef or self.entropy_bonus_on:  # the coefficient applied (0 while adaptive is gated off)
            metrics["entropy_coef"] = entropy_coef
        mean_entropy = float(entropy.detach()[mask].mean()) if mask.any() else None
        return loss, metrics, mean_entropy
