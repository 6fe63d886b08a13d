"""One config tree for `aspo train`: dataclasses, loaded from YAML, overridden with dotted keys.

    aspo train [CONFIG.yaml] [dotted.key=value ...]

Every key has a ``help`` string in its field metadata; `aspo train --help` prints them all, so this file is
the manual. The resolved tree is saved as ``config.yaml`` in every run directory.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import os
import types
import typing
from dataclasses import dataclass, field
from typing import Any

import yaml

from aspo.errors import UserError

REPORT_TARGETS = ("tensorboard", "wandb")

# objective parameters of clip_cov / kl_cov (aspo.objectives.covariance); None: the objective's default
COV_KEYS = ("clip_cov_ratio", "clip_cov_lb", "clip_cov_ub", "kl_cov_ratio", "kl_cov_coef")
# the adaptive entropy controller's settings and their defaults (TRL's GRPOConfig, after Skywork-OR1)
ENTROPY_CONTROL_DEFAULTS = {
    "entropy_target": 0.2,
    "entropy_coef_delta": 0.005,
    "entropy_coef_min": 0.0,
    "entropy_coef_max": 1.0,
}


def report_targets(spec: str) -> list[str]:
    """``train.report_to`` as a list: "tensorboard,wandb" -> ["tensorboard", "wandb"]; "none" -> []."""
    names = [name.strip().lower() for name in spec.split(",") if name.strip()]
    return [] if names == ["none"] else names


def _f(default: Any, help: str, bool_words: bool = False) -> Any:  # noqa: A002 - "help" reads best
    """A config field; ``bool_words``: a text key whose values include true / false, which YAML reads as
    booleans (``key=false`` on the command line): those are taken as the words."""
    return field(default=default, metadata={"help": help, "bool_words": bool_words})


@dataclass
class DataConfig:
    """Where prompts come from. With ``model=tiny`` and no files, the lab task generates them."""

    train: str | None = _f(
        None,
        "training prompts: JSONL, Parquet (verl's RLHF layout too) or a datasets "
        "save_to_disk directory, with `prompt` and `answer` fields (other fields are "
        "passed to the reward); default: the lab task's generator",
    )
    test: str | None = _f(None, "held-out prompts (same format); default: the lab task's held-out split")
    num_train: int = _f(20000, "lab only: number of generated training problems")
    num_test: int = _f(128, "held-out problems evaluated (the first N of data.test or the lab split)")


@dataclass
class PromptConfig:
    """How a record becomes the policy's input: one rule for `aspo train`, its evals and `aspo eval`."""

    template: str = _f(
        "{prompt}",
        "format string for the user message; `{prompt}` and any record field may "
        "appear (with a chat-message-list prompt, `{prompt}` is its last user turn)",
    )
    chat_template: bool = _f(
        False,
        "wrap the message in the tokenizer's chat template (if it has one); "
        "records whose prompt is a chat message list require it",
    )
    system: str | None = _f(None, "system message: a system turn with the chat template, else a first line")
    instruction: str = _f(
        "",
        'appended to the user message after a newline, e.g. "Please reason step by '
        'step, and put your final answer within \\boxed{}."',
    )


@dataclass
class AlgorithmConfig:
    """The objective (see `aspo.objectives`) and everything that shapes the advantage."""

    loss: str = _f(
        "aspo",
        "policy loss: aspo, grpo, dapo, gspo, cispo, sapo, no_is, aspo_flip_only, clip_cov, kl_cov, ...",
    )
    advantage: str = _f("grpo", "advantage estimator: grpo, dr_grpo, rloo, reinforce_plus_plus_baseline")
    clip_ratio_low: float | None = _f(None, "eps_low of the trust region (None: the objective's default)")
    clip_ratio_high: float | None = _f(None, "eps_high (None: the objective's default; dapo uses 0.28)")
    clip_ratio_c: float = _f(3.0, "dual-clip constant c (hard for grpo/dapo, soft for aspo)")
    loss_agg_mode: str | None = _f(
        None,
        "token-mean | seq-mean-token-mean | seq-mean-token-sum | "
        "seq-mean-token-sum-norm (None: the objective's registered default: "
        "seq-mean-token-mean for gspo, token-mean for the others)",
    )
    entropy_split: bool = _f(True, "pass token entropy to the objective (ASPO's entropy-aware clip ranges)")
    entropy_quantile: float = _f(
        0.8, "per-response entropy quantile above which the high-entropy range applies"
    )
    high_entropy_clip_ratio_low: float | None = _f(
        None,
        "eps_low for high-entropy tokens (None: the objective's default: 0.4 for aspo, no split for others)",
    )
    high_entropy_clip_ratio_high: float | None = _f(None, "eps_high for high-entropy tokens (None: as above)")
    clip_cov_ratio: float | None = _f(None, "clip_cov: share of tokens whose gradient is cut (None: 2e-4)")
    clip_cov_lb: float | None = _f(None, "clip_cov: lower covariance bound of the candidates (None: 1.0)")
    clip_cov_ub: float | None = _f(None, "clip_cov: upper covariance bound of the candidates (None: 5.0)")
    kl_cov_ratio: float | None = _f(None, "kl_cov: share of tokens given the KL penalty (None: 2e-4)")
    kl_cov_coef: float | None = _f(None, "kl_cov: coefficient of |log r| on those tokens (None: 1.0)")
    top_entropy_quantile: float = _f(
        1.0,
        "rho: only the top-rho share of a batch's tokens by entropy keep a policy loss (arXiv 2506.01939 "
        "recommends 0.2; 1.0: every token); composes with every objective",
    )
    off_policy_mask_threshold: float | None = _f(
        None,
        "delta: drop responses with A < 0 whose mean log(pi_old / pi) exceeds it (DeepSeek-V3.2's "
        "off-policy sequence mask; None: off); composes with every objective",
    )
    entropy_coef: float = _f(
        0.0,
        "entropy bonus: loss - coef * H, H the token entropy aggregated like the loss (verl's "
        "entropy_coeff); with entropy_adaptive, the initial coefficient",
    )
    entropy_adaptive: bool = _f(
        False,
        "Skywork-OR1's adaptive entropy control: after each optimizer step the coefficient moves by "
        "entropy_coef_delta towards keeping entropy at entropy_target, and applies only at or below it",
    )
    entropy_target: float | None = _f(None, "entropy_adaptive: target token entropy in nats (None: 0.2)")
    entropy_coef_delta: float | None = _f(None, "entropy_adaptive: step of the coefficient (None: 0.005)")
    entropy_coef_min: float | None = _f(None, "entropy_adaptive: lower bound of the coefficient (None: 0)")
    entropy_coef_max: float | None = _f(None, "entropy_adaptive: upper bound of the coefficient (None: 1)")
    kl_coef: float = _f(0.0, "weight of the KL loss to the frozen initial policy (0: no reference model)")
    kl_estimator: str = _f("k3", "k1 | k2 | k3 (low-variance KL, as the reference recipe)")
    kl_high_entropy_coef: float | None = _f(
        None,
        "KL weight on the tokens above the entropy quantile, the KL then split by entropy like the "
        "authors' code (kl_coef on the rest; each part aggregated over its own tokens); None: no split",
    )
    filter_groups: bool = _f(True, "drop groups without gradient signal (which: `filter_rule`)")
    filter_rule: str = _f(
        "zero_variance",
        "with filter_groups: zero_variance (drop every group whose rewards "
        "are all equal) | all_0_or_1 (the authors' recipe: drop only groups "
        "whose rewards, after the overlong penalty, are all 0 or all 1)",
    )
    dynamic_sampling: bool = _f(False, "DAPO: keep sampling until `prompts_per_step` groups have signal")
    max_sampling_rounds: int = _f(3, "with dynamic_sampling: rollout rounds per step at most")
    overlong_buffer: int = _f(0, "DAPO soft overlong penalty buffer B in tokens (0: off)")
    overlong_penalty: float = _f(1.0, "DAPO soft overlong penalty factor")

    def objective_params(self) -> dict[str, Any]:
        """The keyword parameters of ``policy_loss`` (a None key is left out: the objective's default)."""
        params = {
            "clip_ratio_low": self.clip_ratio_low,
            "clip_ratio_high": self.clip_ratio_high,
            "clip_ratio_c": self.clip_ratio_c,
            "loss_agg_mode": self.loss_agg_mode,
            "entropy_quantile": self.entropy_quantile,
            "high_entropy_clip_ratio_low": self.high_entropy_clip_ratio_low,
            "high_entropy_clip_ratio_high": self.high_entropy_clip_ratio_high,
            "top_entropy_quantile": self.top_entropy_quantile,
            "off_policy_mask_threshold": self.off_policy_mask_threshold,
            **{key: getattr(self, key) for key in COV_KEYS},
        }
        if not self.entropy_split and self.top_entropy_quantile < 1.0:
            # the entropy reaches the objective for the token selection only: one clip range for every token
            from aspo.objectives import POLICY_LOSS_DEFAULTS

            defaults = POLICY_LOSS_DEFAULTS.get(self.loss, {})
            for side in ("low", "high"):
                own = params[f"clip_ratio_{side}"]
                params[f"high_entropy_clip_ratio_{side}"] = (
                    own if own is not None else defaults.get(f"clip_ratio_{side}")
                )
        return {k: v for k, v in params.items() if v is not None}

    def entropy_control(self) -> dict[str, float]:
        """The adaptive entropy controller's settings, defaults filled in (TRL's / Skywork-OR1's)."""
        given = {key: getattr(self, key) for key in ENTROPY_CONTROL_DEFAULTS}
        return {key: float(ENTROPY_CONTROL_DEFAULTS[key] if v is None else v) for key, v in given.items()}

    def validate_terms(self) -> None:
        """The entropy bonus and the composable terms: values, and combinations that do not make sense."""
        for key in COV_KEYS:
            owner = "clip_cov" if key.startswith("clip_cov") else "kl_cov"
            if getattr(self, key) is not None and self.loss != owner:
                raise UserError(
                    f"algorithm.{key} applies to algorithm.loss={owner} only (algorithm.loss={self.loss!r})"
                )
        if not self.entropy_coef >= 0:
            raise UserError(f"algorithm.entropy_coef={self.entropy_coef!r} must be >= 0 (it is a bonus)")
        set_knobs = [key for key in ENTROPY_CONTROL_DEFAULTS if getattr(self, key) is not None]
        if set_knobs and not self.entropy_adaptive:
            raise UserError(f"algorithm.{set_knobs[0]} has no effect without algorithm.entropy_adaptive=true")
        if self.entropy_adaptive:
            control = self.entropy_control()
            if not control["entropy_target"] > 0:
                raise UserError(f"algorithm.entropy_target={control['entropy_target']!r} must be > 0")
            if not control["entropy_coef_delta"] > 0:
                raise UserError(f"algorithm.entropy_coef_delta={control['entropy_coef_delta']!r} must be > 0")
            if not 0 <= control["entropy_coef_min"] <= self.entropy_coef <= control["entropy_coef_max"]:
                raise UserError(
                    f"algorithm.entropy_coef={self.entropy_coef!r} must lie in [entropy_coef_min, "
                    f"entropy_coef_max] = [{control['entropy_coef_min']!r}, "
                    f"{control['entropy_coef_max']!r}], "
                    "with entropy_coef_min >= 0"
                )
        if self.loss == "gspo" and self.top_entropy_quantile < 1.0:
            raise UserError(
                f"algorithm.top_entropy_quantile={self.top_entropy_quantile!r} does not combine with "
                "algorithm.loss='gspo': GSPO's ratio and gradient are per response, token selection breaks "
                "both"
            )

    def resolved_objective_params(self) -> dict[str, Any]:
        """Every parameter the objective will run with: ``objective_params`` over its registered defaults.
        The objective's own checks apply here (a bad value raises UserError naming the key)."""
        from aspo.objectives import POLICY_LOSSES
        from aspo.objectives.base import resolve_params

        try:
            return resolve_params(self.loss, self.objective_params())[1]
        except UserError as err:  # name the key: "algorithm.clip_ratio_c must be > 1 (got 0.5)"
            where = f"algorithm.loss={self.loss!r}: " if self.loss not in POLICY_LOSSES else "algorithm."
            raise UserError(f"{where}{err}") from err


@dataclass
class RolloutConfig:
    """Sampling for training."""

    engine: str = _f("hf", "generation engine: hf (transformers, KV cache) or vllm (GPU, optional extra)")
    n: int = _f(8, "responses per prompt (the group size G)")
    max_new_tokens: int | None = _f(None, "response length cap (None: the lab task's, else 256)")
    temperature: float = _f(1.0, "sampling temperature (log-probs are taken at this temperature too)")
    top_p: float = _f(1.0, "nucleus sampling threshold")
    recompute_logprobs: str = _f(
        "auto",
        "recompute behaviour log-probs with the trainer's model: auto (for engines other than hf, "
        "whose float32 log-probs are the trainer's own; for hf in bf16; and whenever "
        "rollout.correction is set) | true | false; the gap is logged as "
        "rollout/logprob_abs_diff and the mismatch metrics as rollout_corr/*",
        bool_words=True,
    )
    correction: str = _f(
        "none",
        "importance weights for the sampler-trainer mismatch (docs/algorithm.md, Rollout correction): "
        "none | token_truncate | token_mask | sequence_truncate | sequence_mask (TRL's "
        "vllm_importance_sampling_mode, verl's rollout_is / rollout_rs); each token's policy loss is "
        "multiplied by pi_old/mu (per token, or per response as the product over its tokens), clamped "
        "into [correction_low, correction_high] (truncate) or zeroed outside them (mask)",
    )
    correction_low: float = _f(0.0, "lower bound of the rollout-correction weight (0: none)")
    correction_high: float = _f(2.0, "upper bound of the rollout-correction weight (verl's default 2)")


@dataclass
class EvalConfig:
    """Held-out evaluation before training and every `train.eval_every` steps."""

    n: int = _f(8, "samples per held-out problem (k of pass@k)")
    temperature: float = _f(1.0, "eval sampling temperature")
    top_p: float = _f(1.0, "eval nucleus threshold")


@dataclass
class TrainConfig:
    """The update: mini-batches x epochs per rollout (the off-policy regime ASPO targets)."""

    steps: int = _f(60, "training steps (one rollout each)")
    prompts_per_step: int = _f(16, "prompts sampled per step (each gets rollout.n responses)")
    mini_batches: int = _f(4, "optimizer steps per epoch over one rollout (unless mini_batch_size is set)")
    mini_batch_size: int = _f(
        0,
        "responses per mini-batch (0: `mini_batches` equal parts instead); a fixed size, "
        "as the authors' recipe: dropped groups mean fewer optimizer steps, the last "
        "mini-batch may be partial",
    )
    partial_mini_batch: str = _f(
        "full",
        "with mini_batch_size: full (every mini-batch's loss is the mean over its own responses "
        "or tokens, so a last partial one weighs as a full one) | scaled (the loss is divided by "
        "mini_batch_size responses instead, as the authors' gradient accumulation: a last "
        "mini-batch of k responses weighs k / mini_batch_size)",
    )
    shuffle: bool = _f(
        True,
        "reshuffle the rollout's responses before each epoch (false: one fixed order, as "
        "the authors' recipe)",
    )
    epochs: int = _f(2, "passes over each rollout; mini_batches*epochs > 1 makes later updates off-policy")
    micro_batch_size: int = _f(0, "sequences per forward/backward (0: the whole mini-batch at once)")
    activation_checkpointing: bool | None = _f(
        None,
        "keep only each decoder layer's input in the update's forward and recompute the layer in the "
        "backward: less memory, more compute (docs/performance.md); null: on for models of 50M "
        "parameters or more, off for smaller ones",
    )
    lr: float = _f(
        2e-5,
        "AdamW learning rate (tuned for the ~1M-parameter lab model: at 5e-5 the 8 off-policy "
        "updates per rollout already push correct responses down; the paper's 1.5B recipe uses 1e-6)",
    )
    warmup_steps: int = _f(5, "linear learning-rate warm-up, in `warmup_unit`s")
    warmup_unit: str = _f(
        "optimizer_steps",
        "what warmup_steps counts: optimizer_steps | rollouts (the authors' "
        "recipe; one rollout = mini_batches x epochs optimizer steps)",
    )
    weight_decay: float = _f(0.0, "AdamW weight decay")
    grad_clip: float = _f(1.0, "global gradient-norm clip (0: off)")
    seed: int = _f(0, "seed for sampling, shuffling and the data order")
    eval_every: int = _f(10, "held-out eval every N steps (0: only before and after training)")
    save_every: int = _f(20, "checkpoint every N steps and at the last step (0: no checkpoints at all)")
    keep_checkpoints: int = _f(2, "newest checkpoints kept on disk")
    max_nonfinite_steps: int = _f(3, "stop after this many consecutive steps with a non-finite loss")
    device: str = _f("auto", "auto | cpu | cuda | cuda:N")
    threads: int = _f(
        0,
        "torch CPU threads per process (0: OMP_NUM_THREADS if set, else one per usable core that other "
        "processes leave free, re-measured between steps: see docs/performance.md, Sharing the machine)",
    )
    on_no_signal: str = _f(
        "warn",
        "when no group of the first 3 steps has a learning signal (every response of every group scored "
        "the same: all wrong, or all right): warn (once, with sample responses, their rewards and what "
        "the reward expects) | stop (exit with that message) | ignore",
    )
    plots: bool = _f(True, "draw plots/*.png at the end of the run")
    report_to: str = _f(
        "tensorboard",
        "where metrics go besides metrics.jsonl: comma-separated tensorboard, "
        'wandb (pip install "aspo[wandb]"; project from WANDB_PROJECT, default '
        "aspo; WANDB_MODE=offline writes a local run to sync later), or none",
    )
    fsdp: bool = _f(
        False,
        "with several processes, shard weights, gradients and optimizer state over them (torch's FSDP2 "
        "fully_shard, per decoder layer; CPU/gloo or GPUs; full model only, hf engine): docs/scaling.md",
    )
    precision: str = _f(
        "auto",
        "matmul precision of sampling and training: auto | fp32 | bf16. bf16 runs the linear layers, "
        "attention and the LM head in bfloat16 under torch.autocast, with float32 weights, gradients, "
        "AdamW state, norms' statistics, log-softmax, log-probs, entropy, ratios and loss; auto: bf16 on "
        "a CUDA device, and on a CPU only with AMX (amx_bf16) for a model of >= 50M parameters, "
        "else fp32 (docs/performance.md, Precision). The choice and why "
        "are printed and saved in the run's config.yaml",
    )
    deterministic: bool = _f(
        True,
        "torch deterministic algorithms: bit-identical reruns and resumes with several "
        "CPU threads (no measurable cost on CPU; on CUDA also set "
        "CUBLAS_WORKSPACE_CONFIG=:4096:8)",
    )


@dataclass
class LoraConfig:
    """LoRA adapters through peft (off while `rank` is 0): the base model frozen, only the adapters train."""

    rank: int = _f(
        0,
        'LoRA rank r (0: off, every weight trains); needs `pip install "aspo[peft]"`. Adapters '
        "usually want a ~10x higher train.lr than full fine-tuning",
    )
    alpha: float = _f(16.0, "LoRA alpha: the adapter's update B A is scaled by alpha / rank")
    dropout: float = _f(0.0, "dropout on the adapters' input while training")
    target_modules: str = _f(
        "all-linear",
        "layers that get adapters: all-linear (every linear layer but the "
        "LM head) or comma-separated module names, e.g. q_proj,v_proj",
    )


@dataclass
class Config:
    """`aspo train` configuration. Dotted keys address nested fields: `rollout.n=16`."""

    model: str = _f(
        "tiny",
        "a local Hugging Face checkpoint directory, a .gguf file (converted once and cached), "
        "the bundled `smollm2-135m-instruct`, or `tiny` for the embedded lab",
    )
    task: str = _f(
        "arithmetic",
        "lab task generating the data when data.train is not given: arithmetic | "
        "countdown (lab model) | add (short answers, pretrained chat models)",
    )
    reward: str | None = _f(
        None,
        "reward: a name (math, number, code, arithmetic, countdown) or "
        "path/file.py:fn; default: the lab task's verifier",
    )
    reward_timeout: float = _f(
        60.0,
        "seconds a path/file.py:fn reward may take per response (it runs in a "
        "worker process; past this it is killed and the response scores 0); 0: "
        "no bound, in-process",
    )
    output_dir: str | None = _f(None, "run directory (default: runs/<time>-<task>-<loss>-s<seed>)")
    resume: bool = _f(False, "continue from the newest complete checkpoint in output_dir")
    data: DataConfig = field(default_factory=DataConfig)
    prompt: PromptConfig = field(default_factory=PromptConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)

    # -- validation -------------------------------------------------------------------------------
    def validate(self) -> Config:
        """Reject impossible values, naming the key. Names and paths first (a misspelt reward, task or
        objective, or a missing file is the real problem), then values, then the rules that depend on them."""
        from aspo.objectives.rollout_correction import CORRECTION_MODES, check_bounds
        from aspo.precision import PRECISIONS

        self._check_names()
        checks = [
            ("rollout.n", self.rollout.n >= 1, "must be >= 1"),
            ("rollout.temperature", self.rollout.temperature > 0, "must be > 0"),
            ("rollout.top_p", 0 < self.rollout.top_p <= 1, "must be in (0, 1]"),
            (
                "rollout.max_new_tokens",
                self.rollout.max_new_tokens is None or self.rollout.max_new_tokens >= 1,
                "must be >= 1",
            ),
            ("eval.n", self.eval.n >= 1, "must be >= 1"),
            (
                "rollout.recompute_logprobs",
                self.rollout.recompute_logprobs in ("auto", "true", "false"),
                "must be auto, true or false",
            ),
            (
                "rollout.correction",
                self.rollout.correction in CORRECTION_MODES,
                f"must be one of {', '.join(CORRECTION_MODES)}",
            ),
            (
                "train.precision",
                self.train.precision in PRECISIONS,
                f"must be one of {', '.join(PRECISIONS)}",
            ),
            ("eval.temperature", self.eval.temperature > 0, "must be > 0"),
            ("eval.top_p", 0 < self.eval.top_p <= 1, "must be in (0, 1]"),
            ("train.steps", self.train.steps >= 0, "must be >= 0"),
            ("train.prompts_per_step", self.train.prompts_per_step >= 1, "must be >= 1"),
            ("train.mini_batches", self.train.mini_batches >= 1, "must be >= 1"),
            ("train.epochs", self.train.epochs >= 1, "must be >= 1"),
            ("train.micro_batch_size", self.train.micro_batch_size >= 0, "must be >= 0"),
            ("train.mini_batch_size", self.train.mini_batch_size >= 0, "must be >= 0"),
            (
                "train.partial_mini_batch",
                self.train.partial_mini_batch in ("full", "scaled"),
                "must be full or scaled",
            ),
            (
                "train.warmup_unit",
                self.train.warmup_unit in ("optimizer_steps", "rollouts"),
                "must be optimizer_steps or rollouts",
            ),
            (
                "algorithm.filter_rule",
                self.algorithm.filter_rule in ("zero_variance", "all_0_or_1"),
                "must be zero_variance or all_0_or_1",
            ),
            ("train.lr", self.train.lr > 0, "must be > 0"),
            ("train.warmup_steps", self.train.warmup_steps >= 0, "must be >= 0"),
            ("train.eval_every", self.train.eval_every >= 0, "must be >= 0"),
            ("train.save_every", self.train.save_every >= 0, "must be >= 0"),
            ("train.grad_clip", self.train.grad_clip >= 0, "must be >= 0"),
            ("train.keep_checkpoints", self.train.keep_checkpoints >= 1, "must be >= 1"),
            ("train.threads", self.train.threads >= 0, "must be >= 0"),
            ("data.num_test", self.data.num_test >= 1, "must be >= 1"),
            ("algorithm.kl_coef", self.algorithm.kl_coef >= 0, "must be >= 0"),
            (
                "algorithm.kl_high_entropy_coef",
                self.algorithm.kl_high_entropy_coef is None or self.algorithm.kl_high_entropy_coef >= 0,
                "must be >= 0 (or null: no split)",
            ),
            (
                "algorithm.kl_high_entropy_coef",
                self.algorithm.kl_high_entropy_coef is None or self.algorithm.kl_coef > 0,
                "needs algorithm.kl_coef > 0 (without it there is no reference model and no KL term)",
            ),
            ("algorithm.overlong_buffer", self.algorithm.overlong_buffer >= 0, "must be >= 0"),
            ("algorithm.max_sampling_rounds", self.algorithm.max_sampling_rounds >= 1, "must be >= 1"),
            ("lora.rank", self.lora.rank >= 0, "must be >= 0"),
            ("lora.alpha", self.lora.alpha > 0, "must be > 0"),
            ("lora.dropout", 0 <= self.lora.dropout < 1, "must be in [0, 1)"),
            (
                "lora.target_modules",
                bool(self.lora.target_modules.strip(" ,")),
                "must name at least one module",
            ),
            (
                "train.on_no_signal",
                self.train.on_no_signal in ("warn", "stop", "ignore"),
                "must be warn, stop or ignore",
            ),
            (
                "train.report_to",
                set(report_targets(self.train.report_to)) <= set(REPORT_TARGETS),
                f"must be a comma-separated list of {', '.join(REPORT_TARGETS)} (or none)",
            ),
        ]
        for key, ok, why in checks:
            if not ok:
                raise UserError(f"{key}={get_key(self, key)!r} {why}")
        if self.train.mini_batches > self.train.prompts_per_step * self.rollout.n:
            raise UserError(
                f"train.mini_batches={self.train.mini_batches} is larger than the "
                f"{self.train.prompts_per_step * self.rollout.n} responses of one step"
            )
        if self.train.partial_mini_batch == "scaled" and not self.train.mini_batch_size:
            raise UserError("train.partial_mini_batch='scaled' needs train.mini_batch_size > 0 (the divisor)")
        if self.rollout.correction != "none":
            if self.rollout.recompute_logprobs == "false":
                raise UserError(
                    f"rollout.correction={self.rollout.correction!r} compares the sampler's log-probs with "
                    "the trainer's recomputation: it needs rollout.recompute_logprobs=auto or true, not false"
                )
            why = check_bounds(self.rollout.correction_low, self.rollout.correction_high)
            if why:
                raise UserError(
                    f"rollout.correction_low={self.rollout.correction_low!r}, "
                    f"rollout.correction_high={self.rollout.correction_high!r}: {why}"
                )
        if self.reward_timeout < 0:
            raise UserError(f"reward_timeout={self.reward_timeout!r} must be >= 0 (0: no bound)")
        for key in ("clip_ratio_low", "clip_ratio_high"):
            value = getattr(self.algorithm, key)
            if value is not None and not 0 <= value < 10:
                raise UserError(f"algorithm.{key}={value!r} must be in [0, 10)")
        self.algorithm.validate_terms()
        self.algorithm.resolved_objective_params()  # the objective's own value checks
        if self.lora.rank and self.rollout.engine != "hf":
            raise UserError(
                f"lora.rank={self.lora.rank} works with rollout.engine=hf only (the {self.rollout.engine!r} "
                "engine would need the merged weights pushed after every update)"
            )
        if self.train.fsdp and (self.lora.rank or self.rollout.engine != "hf"):
            raise UserError(
                "train.fsdp=true shards the full model for the hf engine: it does not combine with lora.rank "
                f"({self.lora.rank}) or rollout.engine={self.rollout.engine!r}"
            )
        # a missing optional package fails here, before any model is loaded
        if self.lora.rank and importlib.util.find_spec("peft") is None:
            raise UserError(f'lora.rank={self.lora.rank} needs the peft package: pip install "aspo[peft]"')
        if "wandb" in report_targets(self.train.report_to) and importlib.util.find_spec("wandb") is None:
            raise UserError(
                "train.report_to includes wandb, but the wandb package is not installed: "
                'pip install "aspo[wandb]"'
            )
        if self.data.train is None:
            from aspo.lab.tasks import get_task

            task = get_task(self.task)
            if self.reward is not None and self.reward not in (task.name, task.reward):
                raise UserError(
                    f"data.train is required with reward={self.reward!r} (the lab generates data only "
                    f"for its own tasks; task={task.name!r} is scored by reward={task.reward!r})"
                )
            if self.model == "tiny" and not task.lab_model:
                raise UserError(
                    f"task={task.name!r} is for pretrained chat models, not the lab's character model: "
                    "give model=smollm2-135m-instruct (or another checkpoint)"
                )
        return self

    def _check_names(self) -> None:
        """Every name and path the run depends on: lab task, reward, objective, advantage estimator, model
        and data files. Each is checked on its own, so the message names it, not a rule it feeds."""
        from aspo.advantages import ADVANTAGES
        from aspo.lab.tasks import get_task
        from aspo.objectives import POLICY_LOSSES
        from aspo.pretrained import model_source
        from aspo.rewards import check_reward_spec

        get_task(self.task)
        if self.reward is not None:
            check_reward_spec(self.reward)
        for key, value, valid in (
            ("algorithm.loss", self.algorithm.loss, POLICY_LOSSES),
            ("algorithm.advantage", self.algorithm.advantage, ADVANTAGES),
        ):
            if value not in valid:  # a transposition ("apso") first, else the closest spelling
                close = [v for v in valid if sorted(v) == sorted(value)] or difflib.get_close_matches(
                    value, valid, n=1
                )
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise UserError(f"{key}={value!r} is unknown{hint}; valid names: {', '.join(sorted(valid))}")
        if self.model != "tiny":
            model_source(self.model)  # a missing directory, file or package is named now, not after imports
        for key in ("train", "test"):
            path = getattr(self.data, key)
            if path is not None and not os.path.exists(path):  # a file, or a datasets save_to_disk directory
                raise UserError(f"data.{key} file {path!r} does not exist")

    # -- rules derived from the tree (each in one place) ---------------------------------------
    @property
    def uses_lab_task(self) -> bool:
        """The lab task supplies the data or the reward: the lab model, no reward of the user's own, or no
        training data of the user's own."""
        return self.model == "tiny" or self.reward is None or not self.data.train

    @property
    def response_cap(self) -> int:
        """Response length cap in tokens: rollout.max_new_tokens, else the lab task's, else 256."""
        if self.rollout.max_new_tokens:
            return int(self.rollout.max_new_tokens)
        if self.uses_lab_task:
            from aspo.lab import get_task

            return int(get_task(self.task).max_new_tokens)
        return 256

    def recomputes_logprobs(self, precision: str = "fp32") -> bool:
        """Whether the trainer recomputes the behaviour log-probs when it runs in ``precision`` (fp32 |
        bf16, as resolved): asked (true), or auto for an engine other than hf, for the hf engine in bf16
        (its one-token-at-a-time decode rounds differently from the packed forward: docs/performance.md,
        Precision), or with a rollout correction."""
        recompute = self.rollout.recompute_logprobs
        return recompute == "true" or (
            recompute == "auto"
            and (self.rollout.engine != "hf" or precision == "bf16" or self.rollout.correction != "none")
        )

    @property
    def has_heldout_data(self) -> bool:
        """Whether runs evaluate on held-out problems: data.test, or the lab task's split when it also
        generates the training data."""
        return bool(self.data.test) or (self.uses_lab_task and not self.data.train)


# -- dotted keys ----------------------------------------------------------------------------------


def _fields(obj: Any) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(obj)}


def all_keys(cfg: Any = None, prefix: str = "") -> list[tuple[str, dataclasses.Field, Any]]:
    """Every leaf key as (dotted name, field, current value)."""
    cfg = Config() if cfg is None else cfg
    out = []
    for name, f in _fields(cfg).items():
        value = getattr(cfg, name)
        if dataclasses.is_dataclass(value):
            out += all_keys(value, f"{prefix}{name}.")
        else:
            out.append((f"{prefix}{name}", f, value))
    return out


def get_key(cfg: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


def _unknown_key(dotted: str) -> UserError:
    names = [k for k, _, _ in all_keys()]
    near = difflib.get_close_matches(dotted, names, n=1, cutoff=0.5)
    if not near:  # a typo in the last part only: compare leaf names
        leaf = dotted.rsplit(".", 1)[-1]
        near = [k for k in names if difflib.get_close_matches(leaf, [k.rsplit(".", 1)[-1]], cutoff=0.75)][:1]
    hint = f"; did you mean {near[0]!r}?" if near else "; `aspo train --help` lists every key"
    return UserError(f"unknown config key {dotted!r}{hint}")


def _coerce(dotted: str, f: dataclasses.Field, value: Any) -> Any:
    """Check/convert a YAML-parsed value to the field's declared type, naming the key on failure."""
    hint = typing.get_type_hints(_owner_of(dotted))[f.name]
    allowed = (
        typing.get_args(hint)
        if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union
        else (hint,)
    )
    if value is None:
        if type(None) in allowed:
            return None
        raise UserError(f"{dotted} may not be null")
    for t in allowed:
        if t is type(None):
            continue
        if t is bool:
            if isinstance(value, bool):
                return value
            continue
        if t is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if t is float and isinstance(value, str):  # YAML 1.1 reads "1e-5" as a string
            try:
                return float(value)
            except ValueError:
                pass
        if t is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if t is str and isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        if t is str and isinstance(value, bool) and f.metadata.get("bool_words"):
            return "true" if value else "false"
    names = " or ".join(getattr(t, "__name__", str(t)) for t in allowed)
    raise UserError(f"{dotted}={value!r} has the wrong type: expected {names}")


def _owner_of(dotted: str) -> type:
    cls: type = Config
    for part in dotted.split(".")[:-1]:
        cls = typing.get_type_hints(cls)[part]
    return cls


# keys that moved: run directories saved before the move still load (`aspo compare`, `aspo eval`)
RENAMED_KEYS = {"data.prompt_template": "prompt.template", "data.chat_template": "prompt.chat_template"}


def set_key(cfg: Config, dotted: str, value: Any) -> None:
    """Set ``dotted`` (e.g. ``rollout.n``) on ``cfg``; unknown keys and wrong types raise UserError."""
    dotted = RENAMED_KEYS.get(dotted, dotted)
    node: Any = cfg
    parts = dotted.split(".")
    for part in parts[:-1]:
        if (
            not dataclasses.is_dataclass(node)
            or part not in _fields(node)
            or not dataclasses.is_dataclass(getattr(node, part))
        ):
            raise _unknown_key(dotted)
        node = getattr(node, part)
    fields = _fields(node) if dataclasses.is_dataclass(node) else {}
    f = fields.get(parts[-1])
    if f is None or dataclasses.is_dataclass(getattr(node, parts[-1])):
        raise _unknown_key(dotted)
    setattr(node, parts[-1], _coerce(dotted, f, value))


def _flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def load_config(path: str | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Defaults <- YAML file <- ``key=value`` overrides (values parsed as YAML scalars)."""
    cfg = Config()
    if path is not None:
        if not os.path.isfile(path):
            raise UserError(f"config file {path!r} does not exist")
        try:
            with open(path) as fh:
                tree = yaml.safe_load(fh) or {}
        except yaml.YAMLError as err:
            raise UserError(f"config file {path!r} is not valid YAML: {err}") from err
        if not isinstance(tree, dict):
            raise UserError(f"config file {path!r} must hold a mapping of keys")
        for key, value in _flatten(tree).items():
            set_key(cfg, key, value)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise UserError(f"override {item!r} is not of the form dotted.key=value")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw
        if isinstance(value, (dict, list)):  # no key takes one: `prompt.template={prompt}` is text
            value = raw
        set_key(cfg, key.strip(), value)
    return cfg


def to_dict(cfg: Config) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def save_config(cfg: Config, path: str) -> None:
    with open(path, "w") as fh:
        yaml.safe_dump(to_dict(cfg), fh, sort_keys=False)


def describe_keys() -> str:
    """The manual printed by `aspo train --help`: every key, its default and what it does."""
    lines = []
    section = None
    for dotted, f, value in all_keys():
        head = dotted.split(".")[0] if "." in dotted else ""
        if head != section:
            section = head
            owner = _owner_of(dotted)
            lines.append("")
            lines.append(f"[{head or 'top level'}] {(owner.__doc__ or '').strip().splitlines()[0]}")
        lines.append(f"  {dotted} = {value!r}")
        lines.append(f"      {f.metadata.get('help', '')}")
    return "\n".join(lines).lstrip("\n")
