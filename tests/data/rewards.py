"""Reward functions used by the trainer tests through the `reward=path/file.py:fn` interface."""


def digit_share(prompt, response, answer, **fields):
    """Fraction of digits in the response: varied rewards even from a random policy, so groups have signal."""
    return sum(c.isdigit() for c in response) / max(len(response), 1)


def flaky(prompt, response, answer, **fields):
    """Raises on every response of odd length; the trainer must score those 0 and go on."""
    if len(response) % 2:
        raise RuntimeError("reward crashed on purpose")
    return digit_share(prompt, response, answer)


def wrong_signature(x):
    return 1.0
