"""ASPO (and every other ``aspo.objectives`` policy loss) inside TRL's ``GRPOTrainer``.

    from aspo.integrations.trl import ASPOConfig, ASPOTrainer

    args = ASPOConfig(output_dir="out", loss_type="aspo", num_iterations=2, beta=0.001)
    trainer = ASPOTrainer(model="path/to/checkpoint", reward_funcs=my_reward, args=args, train_dataset=ds)
    trainer.train()

TRL keeps doing everything but the loss: generation (transformers or vLLM), rewards, advantages, the
reference model, accelerate / DeepSpeed / FSDP, logging. ``ASPOTrainer`` overrides only ``_compute_loss``:
it takes the log-probs and entropies TRL computes with its fused LM head, hands them to
``aspo.objectives.policy_loss`` (so the entropy-aware clip ranges of ``aspo`` see TRL's entropies), scales
the result for TRL's gradient accumulation, and adds TRL's KL, entropy-bonus and MoE aux terms unchanged.

Aggregation. TRL's ``loss_type`` fixes the objective *and* the normaliser together; here ``loss_type``
names the objective and ``loss_agg_mode`` the normaliser. The TRL equivalents:

    TRL "dapo" / "cispo" -> "token-mean": sum over the tokens of the whole accumulated batch (all
                            processes) / its number of tokens, like TRL's dapo (``num_items_in_batch``).
    TRL "grpo"           -> "seq-mean-token-mean": mean over sequences of each one's token mean.
    TRL "dr_grpo"        -> "seq-mean-token-sum-norm": token sum / (sequences * max_completion_length).
    (no TRL name)        -> "seq-mean-token-sum": mean over sequences of each one's token sum.
TRL's "bnpo" (token mean of each micro-batch) has no equivalent: "token-mean" is its global version.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from trl import GRPOConfig, GRPOTrainer

from aspo.errors import UserError
from aspo.objectives import (
    LOSS_AGG_MODES,
    POLICY_LOSSES,
    PROB_BUCKET_NAMES,
    adapted_entropy_coef,
    agg_loss,
    applied_entropy_coef,
    kl_penalty,
    policy_loss,
    top_entropy_tokens,
)
from aspo.objectives.base import resolve_params

# The metrics ``policy_loss`` can return, in a fixed order so every process gathers the same vector.
_METRIC_KEYS = (
    "clipfrac/pos",
    "clipfrac/neg",
    "dualclip/pos",
    "dualclip/neg",
    "ppo_kl",
    "ratio/min",
    "ratio/mean",
    "ratio/max",
    "weight/pos",
    "weight/neg",
    *(f"pos_weight_by_prob/{name}" for name in PROB_BUCKET_NAMES),
    "entropy_high_frac",
    "cov_selected_frac",
    "top_entropy_frac",
    "offpolicy_masked_frac",
)
# clip_cov / kl_cov parameters (``aspo.objectives.covariance``); None = the objective's default
_COV_PARAMS = {
    "clip_cov": ("clip_cov_ratio", "clip_cov_lb", "clip_cov_ub"),
    "kl_cov": ("kl_cov_ratio", "kl_cov_coef"),
}


@dataclass
class ASPOConfig(GRPOConfig):
    """``GRPOConfig`` whose ``loss_type`` names an ``aspo.objectives`` policy loss (default ``"aspo"``).

    Every ``GRPOConfig`` argument keeps its meaning except:

    - ``loss_type``: one of ``aspo.objectives.POLICY_LOSSES`` (aspo, aspo_flip_only, grpo, dapo, ppo,
      no_is, gspo, cispo, sapo, clip_cov, kl_cov). Note ours differ from TRL's same-named losses where
      documented there:
      our ``grpo`` has the hard dual clip (verl's vanilla), ``ppo`` is TRL's ``grpo`` per-token rule, our
      ``cispo`` bounds the weight at ``1 + epsilon_high`` (TRL: at ``epsilon_high``).
    - ``epsilon`` / ``epsilon_high``: ``clip_ratio_low`` / ``clip_ratio_high`` (eps in 1 - eps, 1 + eps).
      ``None`` (the default here) means the objective's own default (0.2 for aspo; dapo 0.2 / 0.28);
      ``epsilon_high=None`` with ``epsilon`` set means ``epsilon`` for both, as in TRL.
    - ``sapo_temperature_pos`` / ``_neg`` are the ``sapo`` objective's ``tau_pos`` / ``tau_neg``.
    - TRL's own terms compose with every objective, in TRL's forms: ``top_entropy_quantile`` (the
      threshold over this process's micro-batch; TRL gathers it over processes, the same on one),
      ``off_policy_mask_threshold`` (against ``sampling_per_token_logps`` when vLLM supplies them),
      ``entropy_coef`` and ``use_adaptive_entropy`` (the bonus over the selected tokens, TRL's controller).

    Added:

    - ``loss_agg_mode``: how per-token losses become one number (see the module docstring).
    - ``clip_ratio_c``: the dual-clip constant c (aspo's soft dual clip, grpo's hard one).
    - ``entropy_quantile``, ``high_entropy_clip_ratio_low``, ``high_entropy_clip_ratio_high``: the
      entropy-aware ranges -- tokens above the per-response ``entropy_quantile`` of TRL's token entropies
      get the looser range (aspo's default 0.4 / 0.4 above the 0.8 quantile; None = objective default).
    - ``clip_cov_ratio``, ``clip_cov_lb``, ``clip_cov_ub`` (``loss_type="clip_cov"``) and ``kl_cov_ratio``,
      ``kl_cov_coef`` (``loss_type="kl_cov"``): None = verl's defaults (2e-4, 1, 5; 2e-4, 1).

    Rejected (``UserError``), because they reshape the loss in ways the objectives already cover or that
    would silently change their weights: ``importance_sampling_level="sequence"`` (use ``loss_type="gspo"``),
    ``delta`` (use ``loss_type="grpo"``).
    """

    loss_type: str = field(
        default="aspo",
        metadata={
            "help": "Policy loss from aspo.objectives.POLICY_LOSSES (aspo, grpo, dapo, ppo, gspo, ...)."
        },
    )
    epsilon: float | None = field(
        default=None,
        metadata={"help": "clip_ratio_low (eps in 1 - eps); None = the objective's default (0.2 for aspo)."},
    )
    loss_agg_mode: str = field(
        default="token-mean",
        metadata={"help": f"Loss aggregation, one of {list(LOSS_AGG_MODES)}; token-mean is the ASPO recipe."},
    )
    clip_ratio_c: float = field(
        default=3.0, metadata={"help": "Dual-clip constant c (> 1): aspo's soft dual clip, grpo's hard one."}
    )
    entropy_quantile: float = field(
        default=0.8, metadata={"help": "Per-response entropy quantile above which tokens get the high range."}
    )
    high_entropy_clip_ratio_low: float | None = field(
        default=None,
        metadata={"help": "eps_low for high-entropy tokens; None = objective default (aspo 0.4)."},
    )
    high_entropy_clip_ratio_high: float | None = field(
        default=None,
        metadata={"help": "eps_high for high-entropy tokens; None = objective default (aspo 0.4)."},
    )
    clip_cov_ratio: float | None = field(default=None, metadata={"help": "clip_cov: share cut (None: 2e-4)."})
    clip_cov_lb: float | None = field(
        default=None, metadata={"help": "clip_cov: covariance lower bound (1)."}
    )
    clip_cov_ub: float | None = field(
        default=None, metadata={"help": "clip_cov: covariance upper bound (5)."}
    )
    kl_cov_ratio: float | None = field(default=None, metadata={"help": "kl_cov: share penalised (2e-4)."})
    kl_cov_coef: float | None = field(default=None, metadata={"help": "kl_cov: |log r| coefficient (1)."})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.loss_type not in POLICY_LOSSES:
            raise UserError(
                f"ASPOConfig.loss_type {self.loss_type!r} is not an aspo objective; valid: "
                f"{', '.join(sorted(POLICY_LOSSES))} (TRL's own loss types run with trl.GRPOTrainer)"
            )
        if self.loss_agg_mode not in LOSS_AGG_MODES:
            raise UserError(
                f"ASPOConfig.loss_agg_mode {self.loss_agg_mode!r} is not one of {list(LOSS_AGG_MODES)}"
            )
        unsupported = {
            "importance_sampling_level": (self.importance_sampling_level != "token", "use loss_type='gspo'"),
            "delta": (self.delta is not None, "use loss_type='grpo' (hard dual clip clip_ratio_c)"),
        }
        for name, (is_set, hint) in unsupported.items():
            if is_set:
                raise UserError(
                    f"ASPOConfig.{name}={getattr(self, name)!r} is not supported by ASPOTrainer: {hint}"
                )
        for loss_type, keys in _COV_PARAMS.items():
            for key in keys:
                if getattr(self, key) is not None and self.loss_type != loss_type:
                    raise UserError(
                        f"ASPOConfig.{key} applies to loss_type={loss_type!r} only "
                        f"(loss_type={self.loss_type!r})"
                    )
        try:
            resolve_params(self.loss_type, self.policy_loss_params())
        except UserError as err:
            raise UserError(f"ASPOConfig: {err}") from err

    def policy_loss_params(self) -> dict[str, Any]:
        """The keyword parameters for ``aspo.objectives.policy_loss`` (None = objective default)."""
        params: dict[str, Any] = {
            "clip_ratio_low": self.epsilon,
            "clip_ratio_high": self.epsilon_high if self.epsilon_high is not None else self.epsilon,
            "clip_ratio_c": self.clip_ratio_c,
            "loss_agg_mode": self.loss_agg_mode,
            "entropy_quantile": self.entropy_quantile,
            "high_entropy_clip_ratio_low": self.high_entropy_clip_ratio_low,
            "high_entropy_clip_ratio_high": self.high_entropy_clip_ratio_high,
        }
        params["top_entropy_quantile"] = self.top_entropy_quantile  # 1.0 (TRL's default): every token
        if self.off_policy_mask_threshold is not None:
            params["off_policy_mask_threshold"] = self.off_policy_mask_threshold
        if self.loss_type == "sapo":
            params.update(tau_pos=self.sapo_temperature_pos, tau_neg=self.sapo_temperature_neg)
        for key in _COV_PARAMS.get(self.loss_type, ()):
            params[key] = getattr(self, key)
        return params


class ASPOTrainer(GRPOTrainer):
    """``GRPOTrainer`` whose policy loss is ``aspo.objectives.policy_loss(args.loss_type, ...)``.

    Needs an ``ASPOConfig``. Logged metrics, besides TRL's (rewards, ``entropy``, ``kl``, lengths):
    ``clipfrac/pos|neg``, ``dualclip/pos|neg``, ``ppo_kl``, ``ratio/min|mean|max``, ``weight/pos|neg``,
    ``pos_weight_by_prob/<bucket>`` and, when the entropy split applies, ``entropy_high_frac`` (means over
    processes; ratio/min and ratio/max are the min and max).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        train_args = kwargs.get("args", args[2] if len(args) > 2 else None)
        if not isinstance(train_args, ASPOConfig):
            raise UserError(
                "ASPOTrainer needs args=ASPOConfig(...) (a GRPOConfig lacks the objective settings)"
            )
        super().__init__(*args, **kwargs)
        self._policy_loss_params = train_args.policy_loss_params()

    def _compute_loss(self, model: torch.nn.Module, inputs: dict[str, Any]) -> torch.Tensor:
        prompt_ids, prompt_mask = inputs["prompt_ids"], inputs["prompt_mask"]
        completion_ids, completion_mask = inputs["completion_ids"], inputs["completion_mask"]
        mask = completion_mask if "tool_mask" not in inputs else completion_mask * inputs["tool_mask"]
        forward_kwargs = {
            key: inputs.get(key)
            for key in (
                "pixel_values",
                "image_grid_thw",
                "num_images",
                "pixel_attention_mask",
                "spatial_shapes",
                "num_tiles",
                "image_sizes",
                "token_type_ids",
                "mm_token_type_ids",
                "image_position_ids",
            )
        }
        log_prob, entropy, aux_loss = self._get_per_token_logps_and_entropies(
            model,
            torch.cat([prompt_ids, completion_ids], dim=1),
            torch.cat([prompt_mask, completion_mask], dim=1),
            completion_ids.size(1),
            compute_entropy=True,  # the entropy-aware clip ranges, the entropy metric and the bonus
            compute_aux_loss=self.aux_loss_enabled,
            **forward_kwargs,
        )
        # Without num_iterations > 1 (or misaligned accumulation) TRL skips old log-probs: on-policy, r = 1.
        old_log_prob = inputs.get("old_per_token_logps")
        old_log_prob = log_prob.detach() if old_log_prob is None else old_log_prob
        advantages = inputs["advantages"]
        advantages = advantages.unsqueeze(1) if advantages.dim() == 1 else advantages
        if self.use_vllm and self.vllm_importance_sampling_correction:
            # TRL multiplies each token loss by this non-negative weight; every objective is linear in A at a
            # fixed sign of A, so scaling A is the same loss and gradient.
            advantages = advantages * inputs["importance_sampling_ratio"]
        advantages = advantages.expand_as(log_prob)

        loss, metrics = policy_loss(
            self.loss_type,
            log_prob,
            old_log_prob,
            advantages,
            mask,
            entropy=entropy,
            sampling_log_prob=inputs.get("sampling_per_token_logps"),  # vLLM's own, for the off-policy mask
            **self._policy_loss_params,
        )
        mode = "train" if self.model.training else "eval"
        scale = self._aggregation_scale(mask, inputs, mode)
        loss = loss * scale
        policy_term = loss.detach()

        if self.beta != 0.0:
            # TRL's k3 KL term, aggregated like the policy term (adding it per token first is the same sum).
            per_token_kl = kl_penalty(log_prob, inputs["ref_per_token_logps"], "k3")
            if self.args.use_bias_correction_kl:
                per_token_kl = per_token_kl * torch.exp(log_prob - old_log_prob)
            loss = loss + self.beta * agg_loss(per_token_kl, mask, self.args.loss_agg_mode) * scale
            self._metrics[mode]["kl"].append(self._global_masked_mean(per_token_kl, mask))

        accumulation = self.current_gradient_accumulation_steps if mode == "train" else 1.0
        if getattr(self, "_entropy_bonus_enabled", self.entropy_coef != 0.0):
            loss = loss - self._entropy_bonus(entropy, mask, mode) / accumulation
        if self.aux_loss_enabled:
            loss = loss + self.router_aux_loss_coef * aux_loss / accumulation
            self._metrics[mode]["aux_loss"].append(
                self.accelerator.gather_for_metrics(aux_loss).mean().item()
            )

        self._metrics[mode]["policy_loss"].append(self.accelerator.gather(policy_term).mean().item())
        self._metrics[mode]["entropy"].append(self._global_masked_mean(entropy, mask))
        self._log_objective_metrics(metrics, mode, log_prob.device)
        return loss

    def _entropy_bonus(self, entropy: torch.Tensor, mask: torch.Tensor, mode: str) -> torch.Tensor:
        """TRL's bonus, coef * mean entropy over the tokens the policy loss uses (the top-entropy ones when
        top_entropy_quantile < 1), and with use_adaptive_entropy its controller (Skywork-OR1): the coefficient
        applies only while the previous optimizer step's entropy was at or below entropy_target, and moves
        by entropy_coef_delta at every optimizer step (``aspo.objectives.terms``)."""
        args = self.args
        effective = mask.float()
        if args.top_entropy_quantile < 1.0:
            effective = effective * top_entropy_tokens(entropy, mask.bool(), args.top_entropy_quantile)
        mean_entropy = (entropy * effective).sum() / effective.sum().clamp(min=1.0)
        if not args.use_adaptive_entropy:
            if mode == "train" and self.accelerator.sync_gradients:
                self._metrics[mode]["entropy_coef"].append(self.entropy_coef)
            return self.entropy_coef * mean_entropy
        coef = applied_entropy_coef(self.entropy_coef, self._last_world_entropy, args.entropy_target)
        if mode == "train":
            stats = torch.stack([(entropy * effective).sum(), effective.sum()]).detach()
            window = getattr(self, "_entropy_window_stats", None)
            self._entropy_window_stats = stats if window is None else window + stats
            if self.accelerator.sync_gradients:  # an optimizer step: adapt on the window's global entropy
                totals = self.accelerator.reduce(self._entropy_window_stats, reduction="sum")
                world_entropy = (totals[0] / totals[1].clamp(min=1.0)).item()
                self.entropy_coef = adapted_entropy_coef(
                    self.entropy_coef,
                    world_entropy,
                    target=args.entropy_target,
                    delta=args.entropy_coef_delta,
                    coef_min=args.entropy_coef_min,
                    coef_max=args.entropy_coef_max,
                )
                self._last_world_entropy = world_entropy
                self._entropy_window_stats = None
                self._metrics[mode]["entropy_coef"].append(self.entropy_coef)
        return coef * mean_entropy

    def _aggregation_scale(self, mask: torch.Tensor, inputs: dict[str, Any], mode: str) -> float:
        """Factor turning ``policy_loss``'s micro-batch aggregate into this micro-batch's share of the
        accumulated (and, for token-mean, all-process) aggregate that TRL backpropagates.

        token-mean: local mean * local tokens / tokens per process and accumulation window (TRL's dapo).
        seq-mean-*: micro-batches hold equally many sequences, so dividing by the accumulation steps is exact;
        seq-mean-token-sum-norm also swaps the padded length T for ``max_completion_length`` (Dr. GRPO).
        """
        accumulation = self.current_gradient_accumulation_steps if mode == "train" else 1.0
        mode_name = self.args.loss_agg_mode
        if mode_name == "token-mean":
            per_process = inputs["num_items_in_batch"].clamp(min=1.0) / self.accelerator.num_processes
            if mode == "train":  # num_items_in_batch spans the generation batch (steps_per_generation slices)
                per_process = per_process * accumulation / self.args.steps_per_generation
            return float(mask.sum()) / float(per_process)
        if mode_name == "seq-mean-token-sum-norm":
            return mask.shape[-1] / self.max_completion_length / accumulation
        return 1.0 / accumulation

    def _global_masked_mean(self, values: torch.Tensor, mask: torch.Tensor) -> float:
        local = torch.stack([(values.detach() * mask).sum(), mask.sum().float()])
        total = self.accelerator.reduce(local, reduction="sum")
        return (total[0] / total[1].clamp(min=1.0)).item()

    def _log_objective_metrics(self, metrics: dict[str, float], mode: str, device: torch.device) -> None:
        """Gather the objective's metrics over processes (a fixed-length vector, NaN where one is absent)."""
        local = torch.tensor([metrics.get(key, math.nan) for key in _METRIC_KEYS], device=device)
        gathered = self.accelerator.gather(local.unsqueeze(0))  # (processes, keys)
        for index, key in enumerate(_METRIC_KEYS):
            column = gathered[:, index]
            column = column[~column.isnan()]
            if column.numel() == 0:
                continue
            reduce = {"ratio/min": torch.min, "ratio/max": torch.max}.get(key, torch.mean)
            self._metrics[mode][key].append(reduce(column).item())
