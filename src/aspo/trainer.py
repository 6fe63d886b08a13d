"""The RLVR loop, nothing else (docs/architecture.md):

    prompts -> rollout (G responses each, behaviour log-probs) -> reward -> group advantages
      -> filter (drop zero-variance groups, overlong penalty)
      -> update (mini_batches x epochs: log-probs + entropy -> objective -> AdamW)
      -> metrics / held-out eval / checkpoint

All state (model, optimizer, schedule, step) lives here; the math is in `aspo.objectives` and
`aspo.advantages`, sampling in `aspo.rollout`, scoring in `aspo.rewards`. Data-parallel through
`accelerate`: each rank samples whole groups for its share of the prompts, gradients are averaged by DDP
with every part weighted by its share of the global token count, metrics are reduced and written by rank 0.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from aspo import distributed as dist
from aspo.advantages import compute_advantages
from aspo.checkpoint import latest_readable_checkpoint, restore, save_checkpoint
from aspo.config import Config, report_targets, save_config, to_dict
from aspo.errors import Interrupted, NonFiniteError, UserError
from aspo.evaluate import repetition_rate, sample_policy, summarize
from aspo.graceful_stop import GracefulStop
from aspo.lab.tasks import get_task
from aspo.lora import apply_lora, reference_policy
from aspo.models import token_logprobs
from aspo.objectives import agg_loss, kl_penalty, policy_loss
from aspo.objectives.base import resolve_params as check_objective
from aspo.prompting import format_prompt, uses_chat_template
from aspo.report.metrics import MetricsLogger
from aspo.rewards import get_reward, score_records
from aspo.rollout import Rollout, make_engine
from aspo.run_setup import load_data, load_policy, resolve_run_dir, seed_for
from aspo.threads import apply_threads
from aspo.update import (
    UpdateBatch,
    mean_metrics,
    micro_batches,
    normaliser_scale,
    objective_params,
)

SAMPLES_PER_EVAL = 16  # problems whose every sample is written to samples.jsonl at each eval


def soft_overlong_penalty(lengths: torch.Tensor, max_len: int, buffer: int, factor: float) -> torch.Tensor:
    """DAPO's soft overlong penalty, (N,) lengths -> (N,) reward terms <= 0.

    0 up to ``max_len - buffer`` tokens, then linear down to ``-factor`` at ``max_len``; ``buffer=0``: off.
    """
    if buffer <= 0:
        return torch.zeros(len(lengths))
    over = (lengths.float() - (max_len - buffer)).clamp(min=0)
    return (-over / buffer * factor).clamp(max=0)


class Trainer:
    def __init__(self, cfg: Config, *, progress: bool = True) -> None:
        from accelerate import Accelerator

        self.cfg = cfg.validate()
        apply_threads(cfg.train.threads)
        if cfg.train.deterministic:  # multi-threaded CPU reductions otherwise differ from run to run at ~1e-8
            torch.use_deterministic_algorithms(True, warn_only=True)
        device = cfg.train.device
        self.accelerator = Accelerator(cpu=device == "cpu" or (device == "auto" and not torch.cuda.is_available()))
        self.rank, self.world = self.accelerator.process_index, self.accelerator.num_processes
        self.is_main = self.accelerator.is_main_process
        if cfg.train.prompts_per_step % self.world:
            raise UserError(f"train.prompts_per_step={cfg.train.prompts_per_step} must be divisible by the "
                            f"number of processes ({self.world})")
        self.progress = progress and self.is_main
        # before the model loads: a reward that cannot run here (no sandbox) fails in a second
        self.reward = get_reward(cfg.reward or get_task(cfg.task).reward, timeout=cfg.reward_timeout)
        with self.accelerator.main_process_first():  # rank 0 builds the lab warm start once
            self.model, self.tokenizer, self.task = load_policy(cfg)
        self.peft_model = None  # with LoRA: peft's wrapper of self.model, for adapter saving and the reference
        if cfg.lora.rank:
            self.peft_model = apply_lora(self.model, cfg.lora.rank, cfg.lora.alpha, cfg.lora.dropout,
                                         cfg.lora.target_modules, self.model.name_or_path,
                                         seed=seed_for(cfg.train.seed, "lora"))
        torch.manual_seed(seed_for(cfg.train.seed, "dropout", self.rank))  # dropout (LoRA's) repeats run to run
        self.model.to(self.accelerator.device)
        self.train_records, self.test_records = load_data(cfg, self.task)
        for record in self.train_records[:1] + self.test_records[:1]:  # bad prompt settings fail now, not mid-run
            self.format(record)
        self.max_new_tokens = cfg.rollout.max_new_tokens or (self.task.max_new_tokens if self.task else 256)
        self.ref_model = None
        if self.peft_model is not None and cfg.algorithm.kl_coef > 0:  # the same model, adapters off (see update)
            self.ref_model = self.model
        elif cfg.algorithm.kl_coef > 0:
            self.ref_model = copy.deepcopy(self.model).eval().requires_grad_(False)
        trainable = [p for p in self.model.parameters() if p.requires_grad]  # all of them without LoRA
        self.optimizer = torch.optim.AdamW(trainable, lr=cfg.train.lr,
                                           weight_decay=cfg.train.weight_decay)
        warmup = cfg.train.warmup_steps  # validated >= 0
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: min(1.0, (s + 1) / warmup) if warmup else 1.0)
        self.train_model, self.optimizer = self.accelerator.prepare(self.model, self.optimizer)
        self.engine = make_engine(cfg.rollout.engine, self.model, self.tokenizer,
                                  add_special_tokens=not uses_chat_template(cfg.prompt, self.tokenizer))
        self.params = objective_params(cfg.algorithm)
        check_objective(cfg.algorithm.loss, self.params)  # fail now, not mid-run, on a bad name or value
        recompute = cfg.rollout.recompute_logprobs
        self.recompute_logprobs = recompute == "true" or (recompute == "auto" and cfg.rollout.engine != "hf")
        self.weights_version = 0  # optimizer steps taken; engines skip a weight push when unchanged
        self.step = 0
        self.saved_step = -1  # the step of the newest checkpoint on disk
        self.nonfinite_streak = 0
        self.run_dir = Path(resolve_run_dir(cfg, self.accelerator))
        self._resume_or_start()

    # -- set-up ------------------------------------------------------------------------------------
    def _resume_or_start(self) -> None:
        with warnings.catch_warnings(record=not self.is_main):  # an unreadable checkpoint is reported once
            found = latest_readable_checkpoint(self.run_dir) if self.cfg.resume else None
        resume_step = None
        if found:
            resume_step, _, parts = found
            trainer_state = restore(parts, self.model, self.optimizer, self.scheduler, self.peft_model)
            self.step = self.saved_step = int(trainer_state["step"])
            self.nonfinite_streak = int(trainer_state.get("nonfinite_streak", 0))
        elif self.cfg.resume and self.is_main:
            warnings.warn(f"resume=true but {self.run_dir} has no complete checkpoint; starting from step 0",
                          stacklevel=2)
        if self.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            save_config(self.cfg, str(self.run_dir / "config.yaml"))
            self.logger = MetricsLogger(self.run_dir, resume_step=resume_step if found else -1,
                                        report_to=report_targets(self.cfg.train.report_to), config=to_dict(self.cfg))
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
        return out[self.rank * share:(self.rank + 1) * share]

    def format(self, record: dict[str, Any]) -> str:
        return format_prompt(record, self.cfg.prompt, self.tokenizer)

    # -- one step ----------------------------------------------------------------------------------
    def collect(self, step: int) -> tuple[Rollout, torch.Tensor, dict[str, float]]:
        """Rollout + reward + advantages + group filter; dynamic sampling adds rounds until enough groups."""
        cfg, alg = self.cfg, self.cfg.algorithm
        want_rows = cfg.train.prompts_per_step // self.world * cfg.rollout.n
        rounds: list[dict[str, Any]] = []  # one entry per sampling round: everything its metrics need
        for round_ in range(alg.max_sampling_rounds if alg.dynamic_sampling else 1):
            records = [self.train_records[i] for i in self.prompt_indices(step, round_)]
            t0 = time.perf_counter()
            self.model.eval()
            with dist.full_weights(self.accelerator, self.train_model):
                self.engine.sync_weights(self.model, version=self.weights_version)
                rollout = self.engine.generate([self.format(r) for r in records], n=cfg.rollout.n,
                                               max_new_tokens=self.max_new_tokens,
                                               temperature=cfg.rollout.temperature, top_p=cfg.rollout.top_p,
                                               seed=seed_for(cfg.train.seed, "rollout", step, self.rank, round_))
            gap = self.recompute_behaviour_logprobs(rollout) if self.recompute_logprobs else None
            t1 = time.perf_counter()
            scored = [dict(records[int(g)], response=text) for g, text in zip(rollout.group_ids, rollout.responses,
                                                                                strict=True)]
            results = score_records(self.reward, scored)
            raw = torch.tensor([r.reward for r in results], dtype=torch.float32)
            rewards = raw + soft_overlong_penalty(rollout.response_lengths, self.max_new_tokens,
                                                 alg.overlong_buffer, alg.overlong_penalty)
            grouped, raw_grouped = rewards.view(len(records), -1), raw.view(len(records), -1)
            has_signal = grouped.max(1).values > grouped.min(1).values
            advantages = compute_advantages(alg.advantage, rewards, rollout.group_ids)
            keep = has_signal.repeat_interleave(cfg.rollout.n) if alg.filter_groups else torch.ones_like(raw).bool()
            # a check that could not run is no verdict: its group has no trustworthy baseline, leave it out
            unscored = torch.tensor([r.infra for r in results]).view(len(records), -1).any(1)
            keep = keep & ~unscored.repeat_interleave(cfg.rollout.n)
            rows = keep.nonzero().squeeze(-1)
            rounds.append({
                "rollout": rollout, "kept": rollout.select(rows), "advantages": advantages[rows], "raw": raw,
                "rewards": rewards, "gap": gap, "t_gen": t1 - t0, "t_reward": time.perf_counter() - t1,
                "errors": sum(r.error is not None for r in results), "infra": sum(r.infra for r in results),
                "solve_all": int(((raw_grouped >= 1).all(1) & ~has_signal).sum()),
                "solve_none": int(((raw_grouped <= 0).all(1) & ~has_signal).sum()),
            })
            if sum(len(r["advantages"]) for r in rounds) >= want_rows:
                break
        batch = Rollout.concat([r["kept"] for r in rounds], self.tokenizer.pad_token_id)
        adv = torch.cat([r["advantages"] for r in rounds])
        if alg.dynamic_sampling and len(adv) > want_rows:  # DAPO keeps exactly the batch size
            batch, adv = batch.select(torch.arange(want_rows)), adv[:want_rows]
        sampled = [r["rollout"] for r in rounds]
        t_gen = sum(r["t_gen"] for r in rounds)
        errors = sum(r["errors"] for r in rounds)
        metrics = {
            "reward/mean": float(torch.cat([r["rewards"] for r in rounds]).mean()),
            "reward/raw_mean": float(torch.cat([r["raw"] for r in rounds]).mean()),
            "reward/errors": float(errors),
            "reward/infra_errors": float(sum(r["infra"] for r in rounds)),  # could not run: not wrong answers
            "groups/solve_all": float(sum(r["solve_all"] for r in rounds)),
            "groups/solve_none": float(sum(r["solve_none"] for r in rounds)),
            "groups/valid": float(len(adv) / cfg.rollout.n), "groups/sampling_rounds": float(len(rounds)),
            "response/length_mean": float(torch.cat([s.response_lengths.float() for s in sampled]).mean()),
            "response/truncated_frac": float(torch.cat([s.truncated.float() for s in sampled]).mean()),
            "response/repetition": float(np.mean([
                repetition_rate([ids[m].tolist() for ids, m in zip(s.response_ids, s.response_mask, strict=True)])
                for s in sampled])),
            "time/rollout": t_gen, "time/reward": sum(r["t_reward"] for r in rounds),
            "perf/tokens_per_s": sum(float(s.response_mask.sum()) for s in sampled) / max(t_gen, 1e-9),
        }
        gaps = [r["gap"] for r in rounds if r["gap"] is not None]
        if gaps:
            metrics["rollout/logprob_abs_diff"] = float(np.mean(gaps))
        if errors and self.is_main:
            infra = int(metrics["reward/infra_errors"])
            warnings.warn(f"step {step}: {errors} reward call(s) failed ({infra} could not run at all); those "
                          "responses got 0", stacklevel=2)
        return batch, adv, metrics

    @torch.no_grad()
    def recompute_behaviour_logprobs(self, rollout: Rollout) -> float:
        """Replace the engine's log-probs with the trainer model's; returns their mean absolute gap."""
        logprobs, _ = token_logprobs(self.model, rollout.prompt_ids, rollout.prompt_mask, rollout.response_ids,
                                     rollout.response_mask, temperature=self.cfg.rollout.temperature,
                                     with_entropy=False)
        logprobs = logprobs.cpu()
        mask = rollout.response_mask
        gap = float((logprobs - rollout.behaviour_logprobs)[mask].abs().mean()) if mask.any() else 0.0
        rollout.behaviour_logprobs = logprobs
        return gap

    def update(self, step: int, rollout: Rollout, advantages: torch.Tensor) -> dict[str, float]:
        """mini_batches x epochs optimizer steps on one rollout."""
        cfg = self.cfg
        ref = None
        if self.ref_model is not None and len(advantages):
            with torch.no_grad(), reference_policy(self.peft_model):
                ref, _ = token_logprobs(self.ref_model, rollout.prompt_ids, rollout.prompt_mask, rollout.response_ids,
                                       rollout.response_mask, temperature=cfg.rollout.temperature, with_entropy=False)
                ref = ref.cpu()
        batch = UpdateBatch.from_rollout(rollout, advantages, ref)
        global_rows = dist.reduce_sum(self.accelerator, len(batch))
        if global_rows == 0:
            return {"actor/skipped_no_signal": 1.0}
        self.train_model.train()
        rows_metrics, entropies, grad_norms, nonfinite = [], [], [], 0
        for epoch in range(cfg.train.epochs):
            gen = torch.Generator().manual_seed(seed_for(cfg.train.seed, "shuffle", step, self.rank, epoch))
            order = torch.randperm(len(batch), generator=gen)
            for chunk in np.array_split(order.numpy(), cfg.train.mini_batches):
                mini = batch.rows(torch.as_tensor(chunk, dtype=torch.long)) if len(chunk) else None
                tokens = dist.reduce_sum(self.accelerator, float(mini.response_mask.sum()) if mini else 0.0)
                seqs = dist.reduce_sum(self.accelerator, float(mini.response_mask.any(-1).sum()) if mini else 0.0)
                parts = micro_batches(mini, cfg.train.micro_batch_size) if mini else [batch.without_tokens(self.tokenizer.pad_token_id)]
                loss_total = 0.0
                for i, part in enumerate(parts):
                    sync = self.accelerator.no_sync(self.train_model) if i < len(parts) - 1 else contextlib.nullcontext()
                    with sync:
                        loss, metrics, entropy = self.loss(part, tokens, seqs)
                    loss_total += float(loss)
                    if mini is not None:
                        rows_metrics.append(metrics)
                        if epoch == 0:
                            entropies.append(entropy)
                grad_norm = self.accelerator.clip_grad_norm_(self.train_model.parameters(),
                                                             cfg.train.grad_clip or float("inf"))
                if not (math.isfinite(loss_total) and math.isfinite(float(grad_norm))):
                    nonfinite += 1
                    self.optimizer.zero_grad(set_to_none=True)
                    continue
                grad_norms.append(float(grad_norm))
                self.weights_version += 1
                self.optimizer.step()
                self.scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
        out = {f"actor/{k}": v for k, v in mean_metrics(rows_metrics).items()}
        valid_entropy = [e for e in entropies if e is not None]
        out.update({"actor/entropy": float(np.mean(valid_entropy)) if valid_entropy else float("nan"),
                    "actor/grad_norm": float(np.mean(grad_norms)) if grad_norms else float("nan"),
                    "actor/lr": self.scheduler.get_last_lr()[0], "actor/nonfinite_steps": float(nonfinite),
                    "actor/optimizer_steps": float(len(grad_norms))})
        return out

    def loss(self, part: UpdateBatch, global_tokens: float, global_seqs: float
             ) -> tuple[torch.Tensor, dict[str, float], float | None]:
        """Forward + objective + backward for one micro-batch; returns (loss, metrics, mean entropy)."""
        cfg, alg = self.cfg, self.cfg.algorithm
        logprobs, entropy = token_logprobs(self.train_model, part.prompt_ids, part.prompt_mask, part.response_ids,
                                           part.response_mask, temperature=cfg.rollout.temperature)
        device = logprobs.device
        mask = part.response_mask.to(device)
        if not bool(torch.isfinite(logprobs[mask]).all()):  # diverged weights: skip, the caller counts it
            return torch.tensor(float("nan")), {}, None
        loss, metrics = policy_loss(alg.loss, logprobs, part.behaviour_logprobs.to(device),
                                    part.advantages.to(device), mask,
                                    entropy=entropy if alg.entropy_split else None, **self.params)
        if part.ref_logprobs is not None:
            kl = agg_loss(kl_penalty(logprobs, part.ref_logprobs.to(device), alg.kl_estimator), mask, alg.loss_agg_mode)
            metrics["kl_loss"] = float(kl.detach())
            loss = loss + alg.kl_coef * kl
        scale = normaliser_scale(part.response_mask, alg.loss_agg_mode, global_tokens, global_seqs, self.world)
        self.accelerator.backward(loss * scale)
        mean_entropy = float(entropy.detach()[mask].mean()) if mask.any() else None
        return loss.detach(), metrics, mean_entropy

    # -- evaluation --------------------------------------------------------------------------------
    def evaluate(self, step: int) -> dict[str, float]:
        """Held-out pass@1 / pass@k at ``eval.*`` sampling settings, same seed at every eval."""
        cfg = self.cfg
        if not self.test_records:
            return {}
        t0 = time.perf_counter()
        records = self.test_records[: cfg.data.num_test][self.rank::self.world]
        self.model.eval()
        with dist.full_weights(self.accelerator, self.train_model):
            per_problem, rows = sample_policy(
                self.engine, records, [self.format(r) for r in records], self.reward, n=cfg.eval.n,
                max_new_tokens=self.max_new_tokens, temperature=cfg.eval.temperature, top_p=cfg.eval.top_p,
                seed=seed_for(cfg.train.seed, "eval", self.rank))
        for row in rows:  # this rank's i-th record is test record rank + world * i
            row["index"] = self.rank + self.world * row["index"]
        per_problem, rows = dist.gather_lists(self.accelerator, per_problem), dist.gather_lists(self.accelerator, rows)
        rows.sort(key=lambda r: (r["index"], r["sample"]))  # one order whatever the world size
        stats = summarize(per_problem, cfg.eval.n)
        k = cfg.eval.n
        metrics = {"eval/pass@1": stats["pass@1"], "eval/pass@k": stats[f"pass@{k}"], f"eval/pass@{k}": stats[f"pass@{k}"],
                   f"eval/avg@{k}": stats[f"avg@{k}"], "eval/k": float(k),
                   "eval/response_length": float(np.mean([r["length"] for r in rows])),
                   "eval/truncated_frac": float(np.mean([r["truncated"] for r in rows])),
                   "eval/repetition": repetition_rate([r["token_ids"] for r in rows]),
                   "time/eval": time.perf_counter() - t0}
        if self.is_main:
            from aspo.data import write_jsonl

            keep = [{"step": step, "prompt": self.format(self.test_records[r["index"]]),
                     "answer": self.test_records[r["index"]].get("answer"),
                     **{k_: r[k_] for k_ in ("sample", "response", "reward", "error")}}
                    for r in rows if r["index"] < SAMPLES_PER_EVAL]
            write_jsonl(str(self.run_dir / "samples.jsonl"), keep)
        return metrics

    # -- the loop ----------------------------------------------------------------------------------
    def save(self) -> None:
        self.accelerator.wait_for_everyone()
        # gathers FSDP shards, a no-op copy else; with LoRA peft saves only the adapter from its own wrapper
        state_dict = None if self.peft_model is not None else self.accelerator.get_state_dict(self.train_model)
        if self.is_main:
            model = self.accelerator.unwrap_model(self.train_model) if self.peft_model is None else self.peft_model
            save_checkpoint(self.run_dir, self.step, model, self.tokenizer,
                            self.optimizer, self.scheduler, {"nonfinite_streak": self.nonfinite_streak,
                                                             "data_position": self.step * self.cfg.train.prompts_per_step},
                            keep=self.cfg.train.keep_checkpoints, state_dict=state_dict)
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
            where = f"checkpoint {self.run_dir / 'checkpoints' / f'step-{self.step}'}; continue with resume=true"
        raise Interrupted(signum, f"stopped by {signal.Signals(signum).name} after step {self.step} of "
                                  f"{self.cfg.train.steps}; {where}", quiet=not self.is_main)

    def train_step(self) -> dict[str, float]:
        t0 = time.perf_counter()
        step = self.step + 1
        try:
            rollout, advantages, metrics = self.collect(step)
            t1 = time.perf_counter()
            metrics.update(self.update(step, rollout, advantages))
        except NonFiniteError:
            t1 = time.perf_counter()
            metrics = {"actor/nonfinite_steps": 1.0, "actor/optimizer_steps": 0.0}
        metrics["time/update"] = time.perf_counter() - t1
        metrics["time/step"] = time.perf_counter() - t0
        metrics = dist.reduce_metrics(self.accelerator, metrics)
        self.step = step
        if metrics.get("actor/nonfinite_steps", 0) > 0 and metrics.get("actor/optimizer_steps", 1) == 0:
            self.nonfinite_streak += 1
            warnings.warn(f"step {step}: non-finite loss or gradient; the update was skipped", stacklevel=2)
            if self.nonfinite_streak >= self.cfg.train.max_nonfinite_steps:
                raise UserError(f"the loss was non-finite in {self.nonfinite_streak} consecutive steps (up to step "
                                f"{step}); stopping. The last checkpoint in {self.run_dir / 'checkpoints'} is intact; "
                                "lower train.lr or check the reward / data")
        else:
            self.nonfinite_streak = 0
        return metrics

    def run(self) -> dict[str, Any]:
        """Train ``train.steps`` steps (from a checkpoint if resuming); returns the summary."""
        from aspo.report.console import Progress, print_summary

        cfg = self.cfg
        t_start = time.perf_counter()
        bar = Progress(total=cfg.train.steps, initial=self.step, enabled=self.progress)
        last: dict[str, float] = {}
        try:
            with GracefulStop(can_abandon=self.world == 1) as stop:
                if self.step == 0:
                    initial = stop.attempt(lambda: self.evaluate(0))
                    if initial is not None:
                        self.log(0, initial)
                while self.step < cfg.train.steps and not stop.requested(self.accelerator):
                    counters = self.step, self.nonfinite_streak
                    metrics = stop.attempt(self.train_step)
                    if metrics is None:  # abandoned before it changed anything
                        self.step, self.nonfinite_streak = counters
                        break
                    if cfg.train.eval_every and self.step % cfg.train.eval_every == 0 or self.step == cfg.train.steps:
                        metrics.update(self.evaluate(self.step))
                    self.log(self.step, metrics)
                    last.update(metrics)
                    bar.update(self.step, metrics)
                    if cfg.train.save_every and (self.step % cfg.train.save_every == 0 or self.step == cfg.train.steps):
                        self.save()
                if self.step < cfg.train.steps:  # stopped early: a signal on some rank
                    self.stop_on_signal(stop.signum)
        finally:
            bar.close()
            if self.is_main:
                self.logger.close()
        summary = {"run_dir": str(self.run_dir), "steps": self.step, "wall_s": time.perf_counter() - t_start}
        if self.is_main:
            if cfg.train.plots:
                from aspo.report.plots import plot_run

                plot_run(self.run_dir)
            summary.update(print_summary(self.run_dir, summary["wall_s"], enabled=self.progress))
        return summary

    def close(self) -> None:
        dist.close(self.accelerator)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if self.is_main and metrics:
            self.logger.log(step, metrics)
