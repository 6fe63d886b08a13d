"""One step's training batch, built from its sampling rounds: score -> shape -> advantages -> group filter.

    round_ = SampledRound.score(records, rollout, reward, ...)  # per sampling round (>1: dynamic sampling)
    batch = TrainingBatch.from_rounds(rounds, want_rows, ...)   # the kept rows, cut to the batch size
    batch.metrics()                                             # reward / group / response metrics of a step

Pure records and functions; sampling itself (engine, seeds, weights) is the trainer's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from aspo.advantages import compute_advantages
from aspo.evaluate import repetition_rate
from aspo.rewards import score_records
from aspo.rollout import Rollout


def soft_overlong_penalty(lengths: torch.Tensor, max_len: int, buffer: int, factor: float) -> torch.Tensor:
    """DAPO's soft overlong penalty, (N,) lengths -> (N,) reward terms <= 0.

    0 up to ``max_len - buffer`` tokens, then linear down to ``-factor`` at ``max_len``; ``buffer=0``: off.
    """
    if buffer <= 0:
        return torch.zeros(len(lengths))
    over = (lengths.float() - (max_len - buffer)).clamp(min=0)
    return (-over / buffer * factor).clamp(max=0)


def keep_groups(rewards: torch.Tensor, rule: str) -> torch.Tensor:
    """(groups, G) shaped rewards -> (groups,) bool: the groups the filter keeps.

    ``zero_variance``: groups whose rewards are not all equal (the others have zero advantage everywhere).
    ``all_0_or_1``: all but the groups whose rewards are all 0 or all 1 (the authors' recipe; a group of
    equal rewards of any other value, e.g. after the overlong penalty, is kept).
    """
    if rule == "all_0_or_1":
        return ~((rewards == 0).all(1) | (rewards == 1).all(1))
    return rewards.max(1).values > rewards.min(1).values


@dataclass
class SampledRound:
    """One sampling round: what was sampled, how it scored, and which rows the group filter kept."""

    rollout: Rollout  # every sampled response (B*G rows)
    raw_rewards: torch.Tensor  # (B*G,) the reward function's scores
    rewards: torch.Tensor  # (B*G,) raw + soft overlong penalty: what the advantages see
    advantages: torch.Tensor  # (B*G,)
    kept: torch.Tensor  # (K,) long: rows the group filter kept
    errors: int  # reward calls that failed (scored 0)
    infra_errors: int  # of those, checks that could not run at all (not wrong answers)
    solve_all: int  # groups dropped for having every response right
    solve_none: int  # groups dropped for having every response wrong
    # the sampler-trainer mismatch (``rollout_correction.mismatch_metrics``) when the trainer recomputed
    # the behaviour log-probs
    mismatch: dict[str, float] | None = None
    seconds_sampling: float = 0.0  # the engine's weight push included
    seconds_weight_sync: float | None = None  # that push alone (engines other than hf)
    seconds_scoring: float = 0.0

    @staticmethod
    def score(
        records: list[dict[str, Any]],
        rollout: Rollout,
        reward: Any,
        algorithm: Any,
        max_new_tokens: int,
        group_size: int,
    ) -> SampledRound:
        """Score ``rollout`` (G responses for each of ``records``), shape the rewards, compute the group
        advantages and apply the group filter (``algorithm.filter_groups``: drop groups with equal
        rewards)."""
        scored = [
            dict(records[int(g)], response=text)
            for g, text in zip(rollout.group_ids, rollout.responses, strict=True)
        ]
        results = score_records(reward, scored)
        raw = torch.tensor([r.reward for r in results], dtype=torch.float32)
        rewards = raw + soft_overlong_penalty(
            rollout.response_lengths, max_new_tokens, algorithm.overlong_buffer, algorithm.overlong_penalty
        )
        grouped, raw_grouped = rewards.view(len(records), -1), raw.view(len(records), -1)
        has_signal = keep_groups(grouped, algorithm.filter_rule)
        keep = (
            has_signal.repeat_interleave(group_size)
            if algorithm.filter_groups
            else torch.ones_like(raw).bool()
        )
        # a check that could not run is no verdict: its group has no trustworthy baseline, leave it out
        unscored = torch.tensor([r.infra for r in results]).view(len(records), -1).any(1)
        keep = keep & ~unscored.repeat_interleave(group_size)
        return SampledRound(
            rollout=rollout,
            raw_rewards=raw,
            rewards=rewards,
            advantages=compute_advantages(algorithm.advantage, rewards, rollout.group_ids),
            kept=keep.nonzero().squeeze(-1),
            # not wrong answers (the code reward says why a program failed): calls that gave no verdict
            errors=sum(r.unscored for r in results),
            infra_errors=sum(r.infra for r in results),
            solve_all=int(((raw_grouped >= 1).all(1) & ~has_signal).sum()),
            solve_none=int(((raw_grouped <= 0).all(1) & ~has_signal).sum()),
        )


@dataclass
class TrainingBatch:
    """The rows one step trains on (kept rows of every round, at most ``want_rows``) and the rounds."""

    rollout: Rollout
    advantages: torch.Tensor  # (rows,)
    rounds: list[SampledRound]
    group_size: int

    @staticmethod
    def from_rounds(
        rounds: list[SampledRound], want_rows: int | None, pad_token_id: int, group_size: int
    ) -> TrainingBatch:
        """Concatenate the kept rows; ``want_rows`` cuts the batch to that size (DAPO's dynamic sampling)."""
        rollout = Rollout.concat([r.rollout.select(r.kept) for r in rounds], pad_token_id)
        advantages = torch.cat([r.advantages[r.kept] for r in rounds])
        if want_rows is not None and len(advantages) > want_rows:
            rollout, advantages = rollout.select(torch.arange(want_rows)), advantages[:want_rows]
        return TrainingBatch(rollout, advantages, rounds, group_size)

    @property
    def errors(self) -> int:
        return sum(r.errors for r in self.rounds)

    @property
    def infra_errors(self) -> int:
        return sum(r.infra_errors for r in self.rounds)

    def metrics(self) -> dict[str, float]:
        """Reward, group and response statistics over everything sampled this step; timings."""
        sampled = [r.rollout for r in self.rounds]
        seconds_sampling = sum(r.seconds_sampling for r in self.rounds)
        seconds_scoring = sum(r.seconds_scoring for r in self.rounds)
        metrics = {
            "reward/mean": float(torch.cat([r.rewards for r in self.rounds]).mean()),
            "reward/raw_mean": float(torch.cat([r.raw_rewards for r in self.rounds]).mean()),
            "reward/errors": float(self.errors),
            "reward/infra_errors": float(self.infra_errors),  # could not run: not wrong answers
            "groups/solve_all": float(sum(r.solve_all for r in self.rounds)),
            "groups/solve_none": float(sum(r.solve_none for r in self.rounds)),
            "groups/valid": float(len(self.advantages) / self.group_size),
            # groups whose responses did not all score alike: the only ones with a gradient signal
            "groups/with_signal": float(
                sum(
                    int(keep_groups(r.rewards.view(-1, self.group_size), "zero_variance").sum())
                    for r in self.rounds
                )
            ),
            "groups/sampled": float(sum(len(r.rewards) // self.group_size for r in self.rounds)),
            "groups/sampling_rounds": float(len(self.rounds)),
            "response/length_mean": float(torch.cat([s.response_lengths.float() for s in sampled]).mean()),
            "response/truncated_frac": float(torch.cat([s.truncated.float() for s in sampled]).mean()),
            "response/repetition": float(
                np.mean(
                    [
                        repetition_rate(
                            [ids[m].tolist() for ids, m in zip(s.response_ids, s.response_mask, strict=True)]
                        )
                        for s in sampled
                    ]
                )
            ),
            "time/rollout": seconds_sampling,
            "time/reward": seconds_scoring,
            "perf/reward_checks_per_s": sum(len(r.raw_rewards) for r in self.rounds)
            / max(seconds_scoring, 1e-9),
            "perf/tokens_per_s": sum(float(s.response_mask.sum()) for s in sampled)
            / max(seconds_sampling, 1e-9),
        }
        syncs = [r.seconds_weight_sync for r in self.rounds if r.seconds_weight_sync is not None]
        if syncs:
            metrics["time/weight_sync"] = sum(syncs)
        mismatches = [r.mismatch for r in self.rounds if r.mismatch]
        for key in mismatches[0] if mismatches else ():
            metrics[f"rollout_corr/{key}"] = float(np.mean([m[key] for m in mismatches]))
        if mismatches:  # the name it had before the other mismatch metrics
            metrics["rollout/logprob_abs_diff"] = metrics["rollout_corr/logprob_abs_diff"]
        return metrics
