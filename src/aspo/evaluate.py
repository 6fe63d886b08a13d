"""Evaluation statistics: avg@k, pass@k (unbiased, Chen et al. 2021) and maj@k.

Pure functions over per-sample rewards, so the trainer's held-out eval, `aspo eval` and the comparison
report all compute the same numbers.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Sequence

import numpy as np


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct: 1 - C(n-c, k) / C(n, k)."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"need 0 <= c <= n and 1 <= k <= n, got n={n} c={c} k={k}")
    if n - c < k:
        return 1.0
    # product form avoids huge binomials
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def summarize(
    rewards_per_problem: Sequence[Sequence[float]],
    k: int,
    *,
    threshold: float = 1.0,
    answers_per_problem: Sequence[Sequence[Hashable | None]] | None = None,
) -> dict[str, float]:
    """avg@k, pass@1, pass@k (and maj@k when answers are given) over problems.

    A sample counts as correct when its reward >= ``threshold``. ``answers_per_problem`` holds each
    sample's extracted answer (None when it has none); maj@k scores the most common answer's reward.
    With n > k samples, avg@k is the mean over all n (the unbiased estimate of a k-sample mean) and
    maj@k votes over the first k samples.
    """
    if not rewards_per_problem:
        raise ValueError("no problems to summarize")
    avg, p1, pk, maj = [], [], [], []
    for i, rewards in enumerate(rewards_per_problem):
        n = len(rewards)
        if n < k:
            raise ValueError(f"problem {i} has {n} samples, fewer than k={k}")
        correct = sum(r >= threshold for r in rewards)
        avg.append(float(np.mean(rewards)))
        p1.append(pass_at_k(n, correct, 1))
        pk.append(pass_at_k(n, correct, k))
        if answers_per_problem is not None:
            answers, voted = answers_per_problem[i][:k], rewards[:k]
            counts = Counter(a for a in answers if a is not None)
            if counts:
                top = counts.most_common(1)[0][0]
                maj.append(
                    float(next(r for a, r in zip(answers, voted, strict=True) if a == top) >= threshold)
                )
            else:
                maj.append(0.0)
    out = {f"avg@{k}": float(np.mean(avg)), "pass@1": float(np.mean(p1)), f"pass@{k}": float(np.mean(pk))}
    if answers_per_problem is not None:
        out[f"maj@{k}"] = float(np.mean(maj))
    return out


def repetition_rate(token_ids: Sequence[Sequence[int]], ngram: int = 4) -> float:
    """Mean over responses of the fraction of repeated ``ngram``-grams (0: no loop, -> 1: one loop).

    The paper's "repetitive outputs" symptom of premature convergence, measured per response on tokens;
    responses shorter than two n-grams count as 0.
    """
    rates = []
    for ids in token_ids:
        grams = [tuple(ids[i : i + ngram]) for i in range(len(ids) - ngram + 1)]
        rates.append(1.0 - len(set(grams)) / len(grams) if len(grams) >= 2 else 0.0)
    return float(np.mean(rates)) if rates else 0.0


def sample_policy(
    engine,
    records: Sequence[dict],
    prompts: Sequence[str],
    reward,
    *,
    n: int,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    seed: int,
    workers: int | None = None,
) -> tuple[list[list[float]], list[dict]]:
    """Sample ``n`` responses per prompt with ``engine`` and score them with ``reward``.

    Returns (rewards per problem, one row per sample with ``index``, ``sample``, ``response``, ``reward``,
    ``error``, ``answer`` (the answer that earned the reward, for rewards that extract one), ``length``,
    ``truncated``). Used by the trainer's held-out eval and by `aspo eval`.
    """
    from aspo.rewards import score_records

    rollout = engine.generate(
        list(prompts), n=n, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed
    )
    scored = [dict(records[i // n], response=text) for i, text in enumerate(rollout.responses)]
    results = score_records(reward, scored, workers=workers)
    lengths = rollout.response_mask.sum(-1).tolist()
    rows, per_problem = [], [[] for _ in prompts]
    for i, result in enumerate(results):
        per_problem[i // n].append(result.reward)
        rows.append(
            {
                "index": i // n,
                "sample": i % n,
                "response": rollout.responses[i],
                "reward": result.reward,
                "error": result.error,
                "unscored": result.unscored,
                "answer": result.answer,
                "length": int(lengths[i]),
                "truncated": bool(rollout.truncated[i]),
                "token_ids": rollout.response_ids[i, : int(lengths[i])].tolist(),
            }
        )
    return per_problem, rows
