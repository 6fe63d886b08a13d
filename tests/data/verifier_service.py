"""A batch reward (the `score_batch` interface) whose checks sometimes cannot run, as a remote verifier's
would when it is unreachable: those results are marked ``infra`` rather than scored."""

from aspo.rewards import ScoreResult


def digits(prompt, response, answer, **fields):
    return sum(c.isdigit() for c in response) / max(len(response), 1)


def score_batch(records, workers=None):
    # every 8th check fails to run (with 4 samples per prompt: one sample of every other group)
    return [
        ScoreResult(0.0, "infrastructure: verifier unreachable", infra=True)
        if i % 8 == 0
        else ScoreResult(digits(**r))
        for i, r in enumerate(records)
    ]


score_batch.reward_fn = digits
