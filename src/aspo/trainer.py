"""The RLVR loop, nothing else (docs/architecture.md):

    prompts -> rollout (G responses each, behaviour log-probs) -> reward -> group advantages
      -> filter (drop zero-variance groups, overlong penalty)                        aspo.batch
      -> update (mini_batches x epochs: log-probs + entropy -> objective -> AdamW)   aspo.update
      -> metrics / held-out eval / checkpoint

All state (model, optimizer, schedule, step) lives here; the math is in `aspo.objectives` and
`aspo.advantages`, sampling in `aspo.rollout`, scoring in `aspo.rewards`. Data-parallel through
`accelerate`: each rank samples whole groups for its share of the prompts, gradients are averaged by DDP
with every part weighted by its share of the global token count, metrics are reduced and written by rank 0.
"""

from __future__ import annotations

import copy
import math
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from aspo import distributed as dist
from aspo.batch import SampledRound, TrainingBatch, soft_overlong_penalty  # noqa: F401 (re-exported)
from aspo.checkpoint import latest_readable_checkpoint, restore, save_checkpoint
from aspo.config import Config, report_targets, save_config, to_dict
from aspo.errors import Interrupted, NonFiniteError, UserError
from aspo.evaluate import repetition_rate, sample_policy, summarize
from aspo.graceful_stop import GracefulStop
from aspo.lab.tasks import get_task
from aspo.lora import apply_lora, reference_policy
from aspo.memory import fix_mmap_threshold, release_free_memory
from aspo.models import checkpointing_by_default, enable_activation_checkpointing, token_logprobs
from aspo.objectives import adapted_entropy_coef, applied_entropy_coef
from aspo.objectives.rollout_correction import correction_weights, mismatch_metrics
from aspo.precision import Precision, resolve_precision, saved_precision
from aspo.prompting import format_prompt, uses_chat_template
from aspo.report.metrics import MetricsLogger, append_rows, read_metrics
from aspo.report.signal import (
    NO_SIGNAL_STEPS,
    TRAIN_SAMPLES_PER_STEP,
    no_signal_message,
    train_sample_rows,
)
from aspo.rewards import get_reward
from aspo.rollout import Rollout, make_engine
from aspo.run_setup import load_data, load_policy, resolve_run_dir, seed_for
from aspo.threads import LoadFollower, apply_threads
from aspo.update import PolicyUpdate, UpdateBatch, UpdateStats, mini_batch_indices

SAMPLES_PER_EVAL = 16  # problems whose every sample is written to samples.jsonl at each eval


class Trainer:
    def __init__(self, cfg: Config, *, progress: bool = True) -> None:
        self.cfg = cfg.validate()
        self._setup_runtime(progress)
        self._setup_reward()
        self._load_records()
        self._setup_model()
        precision = self._resolve_precision()  # sized (auto) on the whole model, before any sharding
        self._setup_data()
        self._setup_optimizer()
        self._setup_rollout()
        self._setup_update()
        self._use_precision(precision)
        self.run_dir = Path(resolve_run_dir(cfg, self.accelerator))
        self.graceful_stop: GracefulStop | None = None  # owns SIGTERM / SIGINT from `train` on
        self._resume_or_start()

    # -- set-up, part by part ----------------------------------------------------------------------
    def _setup_runtime(self, progress: bool) -> None:
        """Threads, determinism, the accelerator and this process's place in it."""
        from accelerate import Accelerator

        cfg = self.cfg
        apply_threads(cfg.train.threads)
        self.load_follower = LoadFollower.if_enabled(cfg.train.threads)
        if cfg.train.deterministic:  # multi-threaded CPU reductions otherwise differ from run to run at ~1e-8
            torch.use_deterministic_algorithms(True, warn_only=True)
        device = cfg.train.device
        dist.before_process_group()
        self.accelerator = Accelerator(
            cpu=device == "cpu" or (device == "auto" and not torch.cuda.is_available())
        )
        self.rank, self.world = self.accelerator.process_index, self.accelerator.num_processes
        self.is_main = self.accelerator.is_main_process
        if cfg.train.prompts_per_step % self.world:
            raise UserError(
                f"train.prompts_per_step={cfg.train.prompts_per_step} must be divisible by the "
                f"number of processes ({self.world})"
            )
        self.progress = progress and self.is_main

    def _setup_reward(self) -> None:
        """The reward, before the model loads: one that cannot run here (no sandbox) fails in a second."""
        self.reward = get_reward(
            self.cfg.reward or get_task(self.cfg.task).reward, timeout=self.cfg.reward_timeout
        )

    def _setup_model(self) -> None:
        """The policy (and its tokenizer, and the lab task when one applies), LoRA adapters when asked, and
        the frozen reference."""
        cfg = self.cfg
        with self.accelerator.main_process_first():  # rank 0 builds the lab warm start once
            self.model, self.tokenizer, self.task = load_policy(cfg)
        self.peft_model = (
            None  # with LoRA: peft's wrapper of self.model, for adapter saving and the reference
        )
        if cfg.lora.rank:
            self.peft_model = apply_lora(
                self.model,
                cfg.lora.rank,
                cfg.lora.alpha,
                cfg.lora.dropout,
                cfg.lora.target_modules,
                self.model.name_or_path,
                seed=seed_for(cfg.train.seed, "lora"),
            )
        torch.manual_seed(
            seed_for(cfg.train.seed, "dropout", self.rank)
        )  # dropout (LoRA's) repeats run to run
        self.model.to(self.accelerator.device)
        large = checkpointing_by_default(self.model)
        # handing freed heap back between phases pays off for large models; on the lab's it costs ~4 % a step
        self.release_between_phases = large
        if large:  # large tensors mapped per allocation: the update's heap no longer outgrows what is live
            fix_mmap_threshold()
        wanted = cfg.train.activation_checkpointing  # None: by the model's size
        if large if wanted is None else wanted:
            if not enable_activation_checkpointing(self.model) and wanted:
                warnings.warn(
                    f"train.activation_checkpointing: {type(self.model).__name__} does not support it; "
                    "training without",
                    stacklevel=2,
                )
        self.ref_model = None
        if (
            self.peft_model is not None and cfg.algorithm.kl_coef > 0
        ):  # the same model, adapters off (see update)
            self.ref_model = self.model
        elif cfg.algorithm.kl_coef > 0:
            self.ref_model = copy.deepcopy(self.model).eval().requires_grad_(False)

    def _load_records(self) -> None:
        """Training and held-out records, before the model loads: a bad data file fails in a second."""
        task = get_task(self.cfg.task) if self.cfg.uses_lab_task else None
        self.train_records, self.test_records = load_data(self.cfg, task)

    def _setup_data(self) -> None:
        """The prompt settings on the records (they need the tokenizer), the response cap."""
        cfg = self.cfg
        for record in (
            self.train_records[:1] + self.test_records[:1]
        ):  # bad prompt settings fail now, not mid-run
            self.format(record)
        self.max_new_tokens = cfg.response_cap

    def _setup_optimizer(self) -> None:
        """AdamW, linear warm-up; model and optimizer wrapped by accelerate (DDP when launched so), or the
        model sharded with FSDP2 (``train.fsdp``)."""
        cfg = self.cfg
        self.sharded = cfg.train.fsdp and self.world > 1
        if self.sharded:  # before the optimizer: fully_shard replaces the parameters with their shards
            dist.shard(self.model)
        trainable = [p for p in self.model.parameters() if p.requires_grad]  # all of them without LoRA
        self.optimizer = torch.optim.AdamW(trainable, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
        warmup = cfg.train.warmup_steps  # validated >= 0
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: min(1.0, (s + 1) / warmup) if warmup else 1.0
        )
        if self.sharded:  # FSDP reduces the gradients itself; accelerate would wrap it in DDP
            self.train_model = self.model
        else:
            self.train_model, self.optimizer = self.accelerator.prepare(self.model, self.optimizer)
        self.weights_version = 0  # optimizer steps taken; engines skip a weight push when unchanged
        self.step = 0
        self.saved_step = -1  # the step of the newest checkpoint on disk
        self.nonfinite_streak = 0
        # the entropy bonus's coefficient; with entropy_adaptive it moves after every optimizer step, gated
        # by the previous step's mean token entropy (inf before the first: no bonus yet)
        self.entropy_coef = self.cfg.algorithm.entropy_coef
        self.last_entropy = math.inf
        # signal-less steps from the first (None once a step had signal, or for a resumed run)
        self.signal_streak: list[dict[str, float]] | None = []
        self.early_samples: list[dict[str, Any]] = []  # training responses of the first steps (rank 0)

    def _setup_rollout(self) -> None:
        """The generation engine, and whether behaviour log-probs are recomputed with the trainer's model."""
        cfg = self.cfg
        self.engine = make_engine(
            cfg.rollout.engine,
            self.model,
            self.tokenizer,
            add_special_tokens=not uses_chat_template(cfg.prompt, self.tokenizer),
        )
        self.sync_seconds = 0.0  # the latest weight push into the engine
        self.recompute_logprobs = cfg.recomputes_logprobs()  # as in float32; ``_use_precision`` settles it

    def _setup_update(self) -> None:
        """The update stage (micro-batches, objective, backward) on the wrapped model."""
        train = self.cfg.train
        self.policy_update = PolicyUpdate(
            self.accelerator,
            self.train_model,
            self.cfg.algorithm,
            temperature=self.cfg.rollout.temperature,
            micro_batch_size=train.micro_batch_size,
            pad_token_id=self.tokenizer.pad_token_id,
            nominal_rows=train.mini_batch_size if train.partial_mini_batch == "scaled" else 0,
        )  # its precision: ``_use_precision``

    def _resolve_precision(self) -> Precision:
        """``train.precision`` for this model on this device; with several processes bf16 only where every
        rank chose it (``auto`` reads each machine's CPU flags)."""
        self.precision_requested = (
            self.cfg.train.precision
        )  # kept: ``_use_precision`` writes the resolved one
        precision = resolve_precision(self.cfg.train.precision, self.accelerator.device, self.model)
        if self.world > 1 and dist.reduce_max(self.accelerator, int(not precision.is_bf16)):
            if precision.is_bf16:
                precision = Precision("fp32", "auto: another rank chose fp32", precision.device_type)
        return precision

    def _use_precision(self, precision: Precision) -> None:
        """Sample, recompute and update in ``precision``; the resolved name goes into the saved config."""
        self.precision = precision
        self.cfg.train.precision = precision.name
        if hasattr(self.engine, "precision"):  # the hf engine; others sample in their own dtype
            self.engine.precision = precision
        self.policy_update.precision = precision
        self.recompute_logprobs = self.cfg.recomputes_logprobs(precision.name)

    def _resume_or_start(self) -> None:
        with warnings.catch_warnings(record=not self.is_main):  # an unreadable checkpoint is reported once
            found = latest_readable_checkpoint(self.run_dir) if self.cfg.resume else None
        resume_step = None
        if found:
            resume_step, _, parts = found
            trainer_state = restore(parts, self.model, self.optimizer, self.scheduler, self.peft_model)
            self.step = self.saved_step = int(trainer_state["step"])
            self.signal_streak = None  # the first steps were watched by the run that took them
            self.nonfinite_streak = int(trainer_state.get("nonfinite_streak", 0))
            self.entropy_coef = float(trainer_state.get("entropy_coef", self.entropy_coef))
            self.last_entropy = float(trainer_state.get("last_entropy", self.last_entropy))
            saved = saved_precision(self.run_dir)
            if self.precision_requested == "auto" and saved and saved != self.precision.name:
                # a resumed run continues in the precision its start chose, whatever this machine's flags say
                self._use_precision(
                    Precision(saved, "auto: as the run being resumed", self.precision.device_type)
                )
        elif self.cfg.resume:
            logged = max((r.get("step", 0) for r in read_metrics(self.run_dir)), default=0)
            if logged > 0:  # the run trained, but its checkpoints are gone: never restart it from scratch
                raise UserError(
                    f"resume=true but {self.run_dir} has no checkpoint, while its metrics.jsonl records "
                    f"steps up to {logged}; nothing to resume from. Restore its checkpoints/ directory, "
                    "or train into another output_dir"
                )
            if self.is_main:
                warnings.warn(
                    f"resume=true but {self.run_dir} has no complete checkpoint; starting from step 0",
                    stacklevel=2,
                )
        if self.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            save_config(self.cfg, str(self.run_dir / "config.yaml"))
            with open(self.run_dir / "config.yaml", "a") as fh:  # why this precision, for the reader
                fh.write(f"# train.precision: {self.precision_requested} -> {self.precision.describe()}\n")
            if self.progress:
                print(f"aspo: {self.precision.describe()}", flush=True)
            self.logger = MetricsLogger(
                self.run_dir,
                resume_step=resume_step if found else -1,
                report_to=report_targets(self.cfg.train.report_to),
                config=to_dict(self.cfg),
            )
        self.accelerator.wait_for_everyone()

    # -- data --------------------------------------------------------------------------------------
    def prompt_indices(self, step: int, round_: int = 0) -> list[int]:
        """This rank's training records for ``step``: a fixed walk over seeded permutations of the data.

        A pure function of (seed, step), so a resumed run reads exactly the prompts the original would.
        """
        per_step, n_data = self.cfg.train.prompts_per_step, len(self.train_records)
        start = (step * self.cfg.algorithm.max_sampling_rounds + round_) * per_step
        out = []
        for pos in range(start, start + per_step):
            epoch, offset = divmod(pos, n_data)
            perm = np.random.default_rng(seed_for(self.cfg.train.seed, "data", epoch)).permutation(n_data)
            out.append(int(perm[offset]))
        share = per_step // self.world
        return out[self.rank * share : (self.rank + 1) * share]

    def format(self, record: dict[str, Any]) -> str:
        return format_prompt(record, self.cfg.prompt, self.tokenizer)

    # -- one step: sample -> score -> filter -> update ---------------------------------------------
    def sample(self, records: list[dict[str, Any]], seed: int) -> tuple[Rollout, dict[str, float] | None]:
        """G responses per record from current weights; (rollout, the sampler-trainer mismatch metrics if the
        behaviour log-probs were recomputed). The engine's weight push, when it made one, is timed in
        ``self.sync_seconds``."""
        cfg = self.cfg
        self.release_heap_between_phases()  # what the last update or eval freed, before the KV cache
        self.model.eval()
        with dist.full_weights(self.accelerator, self.train_model):
            t0 = time.perf_counter()
            self.engine.sync_weights(self.model, version=self.weights_version)
            self.sync_seconds = time.perf_counter() - t0
            rollout = self.engine.generate(
                [self.format(r) for r in records],
                n=cfg.rollout.n,
                max_new_tokens=self.max_new_tokens,
                temperature=cfg.rollout.temperature,
                top_p=cfg.rollout.top_p,
                seed=seed,
            )
            mismatch = self.recompute_behaviour_logprobs(rollout) if self.recompute_logprobs else None
        return rollout, mismatch

    def collect(self, step: int) -> TrainingBatch:
        """Sampling rounds (sample, score, filter) until the batch is full: one round, or with dynamic
        sampling up to ``max_sampling_rounds`` until enough groups have signal."""
        cfg, alg = self.cfg, self.cfg.algorithm
        want_rows = cfg.train.prompts_per_step // self.world * cfg.rollout.n
        rounds: list[SampledRound] = []
        for round_ in range(alg.max_sampling_rounds if alg.dynamic_sampling else 1):
            records = [self.train_records[i] for i in self.prompt_indices(step, round_)]
            t0 = time.perf_counter()
            rollout, mismatch = self.sample(
                records, seed_for(cfg.train.seed, "rollout", step, self.rank, round_)
            )
            t1 = time.perf_counter()
            scored = SampledRound.score(
                records, rollout, self.reward, alg, self.max_new_tokens, cfg.rollout.n
            )
            scored.mismatch, scored.seconds_sampling = mismatch, t1 - t0
            if cfg.rollout.engine != "hf":  # hf samples from the trainer's own tensors: nothing to push
                scored.seconds_weight_sync = self.sync_seconds
            scored.seconds_scoring = time.perf_counter() - t1
            if round_ == 0:
                self.keep_train_samples(step, records, scored)
            rounds.append(scored)
            if sum(len(r.kept) for r in rounds) >= want_rows:
                break
        batch = TrainingBatch.from_rounds(
            rounds, want_rows if alg.dynamic_sampling else None, self.tokenizer.pad_token_id, cfg.rollout.n
        )
        if batch.errors and self.is_main:
            warnings.warn(
                f"step {step}: {batch.errors} reward call(s) failed ({batch.infra_errors} could not run at "
                "all); those responses got 0",
                stacklevel=2,
            )
        return batch

    @torch.no_grad()
    def recompute_behaviour_logprobs(self, rollout: Rollout) -> dict[str, float]:
        """Replace the engine's log-probs with the trainer model's, keeping the engine's as
        ``rollout.sampler_logprobs`` (the sampler side of the mismatch metrics and of a rollout
        correction); returns the mismatch metrics between the two."""
        roll = self.cfg.rollout
        logprobs = self.rollout_logprobs(self.model, rollout)
        metrics = mismatch_metrics(
            rollout.behaviour_logprobs,
            logprobs,
            rollout.response_mask,
            roll.correction,
            roll.correction_low,
            roll.correction_high,
        )
        rollout.sampler_logprobs, rollout.behaviour_logprobs = rollout.behaviour_logprobs, logprobs
        return metrics

    @torch.no_grad()
    def reference_logprobs(self, rollout: Rollout) -> torch.Tensor | None:
        """Log-probs of the frozen initial policy (None without a KL term or without rows); with LoRA the
        same model with its adapters off."""
        if self.ref_model is None or not len(rollout.group_ids):
            return None
        with reference_policy(self.peft_model):
            return self.rollout_logprobs(self.ref_model, rollout)

    @torch.no_grad()
    def rollout_logprobs(self, model: torch.nn.Module, rollout: Rollout) -> torch.Tensor:
        """(rows, R) log-probs of the rollout's responses under ``model``, sampling temperature, on CPU."""
        with self.precision.autocast():
            logprobs, _ = token_logprobs(
                model,
                rollout.prompt_ids,
                rollout.prompt_mask,
                rollout.response_ids,
                rollout.response_mask,
                temperature=self.cfg.rollout.temperature,
                with_entropy=False,
            )
        return logprobs.cpu()

    def update(self, step: int, rollout: Rollout, advantages: torch.Tensor) -> dict[str, float]:
        """mini_batches x epochs optimizer steps on one rollout."""
        cfg = self.cfg
        roll = cfg.rollout
        weights = None
        if rollout.sampler_logprobs is not None and roll.correction != "none":
            weights = correction_weights(
                rollout.sampler_logprobs,
                rollout.behaviour_logprobs,
                rollout.response_mask,
                roll.correction,
                roll.correction_low,
                roll.correction_high,
            )
        batch = UpdateBatch.from_rollout(rollout, advantages, self.reference_logprobs(rollout), weights)
        global_rows = int(dist.reduce_sum(self.accelerator, len(batch)))
        if global_rows == 0:
            return {"actor/skipped_no_signal": 1.0}
        self.release_heap_between_phases()  # the sampler's KV cache, before the activations
        self.train_model.train()
        stats = UpdateStats()
        for epoch in range(cfg.train.epochs):
            gen = (
                torch.Generator().manual_seed(seed_for(cfg.train.seed, "shuffle", step, self.rank, epoch))
                if cfg.train.shuffle
                else None
            )
            indices = mini_batch_indices(
                len(batch), cfg.train.mini_batches, gen, cfg.train.mini_batch_size, global_rows
            )
            for mini_index, index in enumerate(indices):
                draws = torch.Generator().manual_seed(
                    seed_for(cfg.train.seed, "objective", step, self.rank, epoch, mini_index)
                )
                grads = self.policy_update.backward(
                    batch.rows(index),
                    entropy_coef=self.applied_entropy_coef(),
                    generator=draws,
                    with_entropy_sum=cfg.algorithm.entropy_adaptive,
                )
                stats.add(grads, first_epoch=epoch == 0)
                if grads.global_tokens == 0:  # no rank has a token: a step would still move AdamW's weights
                    continue
                if cfg.algorithm.entropy_adaptive:
                    self.adapt_entropy_coef(grads.entropy_sum / grads.global_tokens)
                grad_norm = self.optimizer_step(grads.loss)
                if grad_norm is None:
                    stats.nonfinite_steps += 1
                else:
                    stats.grad_norms.append(grad_norm)
        return stats.metrics(self.scheduler.get_last_lr()[0])

    def applied_entropy_coef(self) -> float:
        """The entropy bonus's coefficient for the next mini-batch (adaptive: 0 while entropy is above
        target)."""
        algorithm = self.cfg.algorithm
        if not algorithm.entropy_adaptive:
            return self.entropy_coef
        target = algorithm.entropy_control()["entropy_target"]
        return applied_entropy_coef(self.entropy_coef, self.last_entropy, target)

    def adapt_entropy_coef(self, entropy: float) -> None:
        """Skywork-OR1's controller, once per optimizer step, on that mini-batch's mean token entropy."""
        control = self.cfg.algorithm.entropy_control()
        self.entropy_coef = adapted_entropy_coef(
            self.entropy_coef,
            entropy,
            target=control["entropy_target"],
            delta=control["entropy_coef_delta"],
            coef_min=control["entropy_coef_min"],
            coef_max=control["entropy_coef_max"],
        )
        self.last_entropy = entropy

    def optimizer_step(self, loss: float) -> float | None:
        """Clip, step and clear the accumulated gradient; returns the gradient norm, or None (and no step)
        when the loss or the gradient is not finite."""
        max_norm = self.cfg.train.grad_clip or math.inf
        grad_norm = dist.clip_grad_norm(self.accelerator, self.train_model, max_norm)
        if not (math.isfinite(loss) and math.isfinite(grad_norm)):
            self.optimizer.zero_grad(set_to_none=True)
            return None
        self.weights_version += 1
        self.optimizer.step()
        if self.cfg.train.warmup_unit == "optimizer_steps":
            self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return grad_norm

    # -- signal health (aspo.report.signal) -------------------------------------------------------
    def keep_train_samples(self, step: int, records: list[dict[str, Any]], scored: SampledRound) -> None:
        """A few of the step's responses (rank 0): written to samples.jsonl at once when the run has no
        held-out data, else kept for the no-signal warning of the first steps."""
        if not self.is_main or (self.test_records and step > NO_SIGNAL_STEPS):
            return
        rows = train_sample_rows(
            step,
            records,
            [self.format(r) for r in records[:TRAIN_SAMPLES_PER_STEP]],
            scored.rollout,
            scored.raw_rewards,
            self.cfg.rollout.n,
        )
        if self.test_records:
            self.early_samples += rows
        else:
            append_rows(self.run_dir / "samples.jsonl", rows)  # a full disk: one clear error
            self.early_samples = (self.early_samples + rows)[-NO_SIGNAL_STEPS * len(rows) :]

    def watch_signal(self, step: int, metrics: dict[str, float]) -> None:
        """After ``NO_SIGNAL_STEPS`` steps from the start without a group with signal, warn once (or stop,
        ``train.on_no_signal``) with the responses and rewards to look at."""
        if self.signal_streak is None or self.cfg.train.on_no_signal == "ignore":
            return
        if metrics.get("groups/with_signal", 1) > 0:
            self.signal_streak = None  # the run has signal: the check is over
            return
        self.signal_streak.append(metrics)
        if len(self.signal_streak) < NO_SIGNAL_STEPS:
            return
        steps, self.signal_streak = self.signal_streak, None
        mode = self.cfg.train.on_no_signal
        message = "no group had a learning signal in the first steps (see rank 0)"
        if self.is_main:
            samples = self.run_dir / "samples.jsonl"
            if self.test_records:  # not written yet: the held-out rows are there, add these
                append_rows(samples, self.early_samples)
            reward_name = self.cfg.reward or get_task(self.cfg.task).reward
            message = no_signal_message(
                reward_name, self.reward, steps, self.early_samples, str(samples), mode
            )
        self.early_samples = []
        if mode == "stop":
            raise UserError(f"{message}\n  stopped at step {step} (train.on_no_signal=stop)")
        if self.is_main:
            warnings.warn(message, stacklevel=2)

    # -- evaluation --------------------------------------------------------------------------------
    def evaluate(self) -> tuple[dict[str, float], list[dict[str, Any]]]:
        """Held-out pass@1 / pass@k at ``eval.*`` sampling settings, same seed at every eval.

        Returns (metrics, one row per sample from every rank); ({}, []) without held-out data."""
        cfg = self.cfg
        if not self.test_records:
            return {}, []
        t0 = time.perf_counter()
        records = self.test_records[: cfg.data.num_test][self.rank :: self.world]
        self.release_heap_between_phases()  # the update's activations, before the eval's KV cache
        self.model.eval()
        with dist.full_weights(self.accelerator, self.train_model):
            per_problem, rows = sample_policy(
                self.engine,
                records,
                [self.format(r) for r in records],
                self.reward,
                n=cfg.eval.n,
                max_new_tokens=self.max_new_tokens,
                temperature=cfg.eval.temperature,
                top_p=cfg.eval.top_p,
                seed=seed_for(cfg.train.seed, "eval", self.rank),
            )
        for row in rows:  # this rank's i-th record is test record rank + world * i
            row["index"] = self.rank + self.world * row["index"]
        per_problem, rows = (
            dist.gather_lists(self.accelerator, per_problem),
            dist.gather_lists(self.accelerator, rows),
        )
        rows.sort(key=lambda r: (r["index"], r["sample"]))  # one order whatever the world size
        stats = summarize(per_problem, cfg.eval.n)
        k = cfg.eval.n
        metrics = {
            "eval/pass@1": stats["pass@1"],
            "eval/pass@k": stats[f"pass@{k}"],
            f"eval/pass@{k}": stats[f"pass@{k}"],
            f"eval/avg@{k}": stats[f"avg@{k}"],
            "eval/k": float(k),
            "eval/response_length": float(np.mean([r["length"] for r in rows])),
            "eval/truncated_frac": float(np.mean([r["truncated"] for r in rows])),
            "eval/repetition": repetition_rate([r["token_ids"] for r in rows]),
            "time/eval": time.perf_counter() - t0,
        }
        return metrics, rows

    def write_samples(self, step: int, rows: list[dict[str, Any]]) -> None:
        """Append every sample of the first ``SAMPLES_PER_EVAL`` held-out problems to samples.jsonl (rank 0;
        ``rows`` from ``evaluate``: gathered from every rank, with global record indices)."""
        if not self.is_main or not self.test_records:
            return
        keep = [
            {
                "step": step,
                "prompt": self.format(self.test_records[r["index"]]),
                "answer": self.test_records[r["index"]].get("answer"),
                **{k: r[k] for k in ("sample", "response", "reward", "error")},
            }
            for r in rows
            if r["index"] < SAMPLES_PER_EVAL
        ]
        append_rows(self.run_dir / "samples.jsonl", keep)  # a full disk: one clear error

    def evaluate_and_record(self, step: int) -> dict[str, float]:
        """``evaluate`` then ``write_samples``; returns the metrics."""
        metrics, rows = self.evaluate()
        self.write_samples(step, rows)
        return metrics

    # -- the loop ----------------------------------------------------------------------------------
    def save(self) -> None:
        self.accelerator.wait_for_everyone()
        # gathers FSDP shards (to rank 0), a no-op copy else; with LoRA peft saves only the adapter from its
        # own wrapper
        state_dict = (
            None if self.peft_model is not None else dist.full_state_dict(self.accelerator, self.train_model)
        )
        optimizer_state = dist.full_optimizer_state(self.train_model, self.optimizer)
        if self.is_main:
            model = (
                self.accelerator.unwrap_model(self.train_model)
                if self.peft_model is None
                else self.peft_model
            )
            save_checkpoint(
                self.run_dir,
                self.step,
                model,
                self.tokenizer,
                self.optimizer,
                self.scheduler,
                {
                    "nonfinite_streak": self.nonfinite_streak,
                    "entropy_coef": self.entropy_coef,
                    "last_entropy": self.last_entropy,
                    "data_position": self.step * self.cfg.train.prompts_per_step,
                },
                keep=self.cfg.train.keep_checkpoints,
                state_dict=state_dict,
                optimizer_state=optimizer_state,
            )
        self.accelerator.wait_for_everyone()
        self.saved_step = self.step

    def stop_on_signal(self, signum: int | None) -> None:
        """Checkpoint the last finished step (unless saving is off or it is on disk) and raise Interrupted."""
        import signal

        signum = signum or signal.SIGTERM  # a rank stopped because another one was signalled
        if not self.cfg.train.save_every:
            where = "no checkpoint written (train.save_every=0)"
        elif self.step == 0:
            where = "nothing to save yet"
        else:
            if self.saved_step != self.step:
                self.save()
            where = (
                f"checkpoint {self.run_dir / 'checkpoints' / f'step-{self.step}'}; continue with resume=true"
            )
        raise Interrupted(
            signum,
            f"stopped by {signal.Signals(signum).name} after step {self.step} of "
            f"{self.cfg.train.steps}; {where}",
            quiet=not self.is_main,
        )

    def train_step(self) -> dict[str, float]:
        """collect -> update for the next step; metrics reduced over ranks; counts non-finite steps."""
        t0 = time.perf_counter()
        step = self.step + 1
        threads = self.load_follower.adjust() if self.load_follower else torch.get_num_threads()
        try:
            batch = self.collect(step)
            metrics = batch.metrics()
            t1 = time.perf_counter()
            metrics.update(self.update(step, batch.rollout, batch.advantages))
            if self.cfg.train.warmup_unit == "rollouts":  # the schedule counts rollouts, not optimizer steps
                self.scheduler.step()
        except NonFiniteError:
            t1 = time.perf_counter()
            metrics = {"actor/nonfinite_steps": 1.0, "actor/optimizer_steps": 0.0}
        metrics["time/update"] = time.perf_counter() - t1
        metrics["time/step"] = time.perf_counter() - t0
        if "time/reward" in metrics:  # the scoring's share of the step (the code reward's sandboxes)
            metrics["perf/reward_share"] = metrics["time/reward"] / metrics["time/step"]
        metrics["perf/threads"] = float(threads)
        metrics = dist.reduce_metrics(self.accelerator, metrics)
        self.step = step
        if metrics.get("actor/nonfinite_steps", 0) > 0 and metrics.get("actor/optimizer_steps", 1) == 0:
            self.nonfinite_streak += 1
            warnings.warn(f"step {step}: non-finite loss or gradient; the update was skipped", stacklevel=2)
            if self.nonfinite_streak >= self.cfg.train.max_nonfinite_steps:
                raise UserError(
                    f"the loss was non-finite in {self.nonfinite_streak} consecutive steps (up to step "
                    f"{step}); stopping. The last checkpoint in {self.run_dir / 'checkpoints'} is intact; "
                    "lower train.lr or check the reward / data"
                )
        else:
            self.nonfinite_streak = 0
        return metrics

    def train(self) -> None:
        """Train up to ``train.steps`` (from a checkpoint if resuming): eval, log and save on schedule; a
        signal stops at a step boundary with the last finished step checkpointed (``stop_on_signal``).

        The ranks agree after every step, the last one included, whether to stop; with several processes
        the signal handlers stay until ``close`` (see aspo.graceful_stop)."""
        from aspo.report.console import Progress

        cfg = self.cfg
        bar = Progress(total=cfg.train.steps, initial=self.step, enabled=self.progress)
        stop = self.graceful_stop = GracefulStop(can_abandon=self.world == 1).install()
        try:
            if self.step == 0:
                initial = stop.attempt(lambda: self.evaluate_and_record(0))
                if initial is not None:
                    self.log(0, initial)
            while not (stopping := stop.requested(self.accelerator)) and self.step < cfg.train.steps:
                counters = self.step, self.nonfinite_streak, self.entropy_coef, self.last_entropy
                metrics = stop.attempt(self.train_step)
                if metrics is None:  # abandoned before it changed anything
                    self.step, self.nonfinite_streak, self.entropy_coef, self.last_entropy = counters
                    continue
                if (
                    cfg.train.eval_every
                    and self.step % cfg.train.eval_every == 0
                    or self.step == cfg.train.steps
                ):
                    metrics.update(self.evaluate_and_record(self.step))
                self.log(self.step, metrics)
                bar.update(self.step, metrics)
                self.watch_signal(self.step, metrics)
                if cfg.train.save_every and (
                    self.step % cfg.train.save_every == 0 or self.step == cfg.train.steps
                ):
                    self.save()
            if stopping:  # some rank was signalled: every rank stops here
                self.stop_on_signal(stop.signum)
        finally:
            bar.close()
            if self.is_main:
                self.logger.close()
            if self.world == 1:  # no collective left to protect
                stop.restore()

    def report(self, wall_s: float) -> dict[str, Any]:
        """Plots (``train.plots``) and the printed summary of the finished run; rank 0 only."""
        summary: dict[str, Any] = {"run_dir": str(self.run_dir), "steps": self.step, "wall_s": wall_s}
        if self.is_main:
            from aspo.report.console import print_summary

            if self.cfg.train.plots:
                from aspo.report.plots import plot_run

                plot_run(self.run_dir)
            summary.update(print_summary(self.run_dir, wall_s, enabled=self.progress))
        return summary

    def run(self) -> dict[str, Any]:
        """``train`` then ``report``; returns the summary."""
        t_start = time.perf_counter()
        self.train()
        return self.report(time.perf_counter() - t_start)

    def release_heap_between_phases(self) -> None:
        """Give the C heap's free pages back to the OS before a phase allocates its own (large models)."""
        if self.release_between_phases:
            release_free_memory()

    def close(self) -> None:
        """Tear down the process group, then give the signals back (a rank killed before the teardown would
        leave the others waiting in its barrier)."""
        engine_close = getattr(self.engine, "close", None)
        if engine_close is not None:  # vLLM: its engine core and KV cache
            engine_close()
        dist.close(self.accelerator, self.train_model)
        if self.graceful_stop is not None:
            self.graceful_stop.restore()

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if self.is_main and metrics:
            self.logger.log(step, metrics)
