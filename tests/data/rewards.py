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


def hangs_or_dies(prompt, response, answer, **fields):
    """Real misbehaviour keyed by the response: `spin` loops forever on the CPU, `sleep` blocks forever,
    `die` ends the process, `raise` raises; anything else scores 1."""
    import os
    import time

    if response == "spin":
        while True:
            pass
    if response == "sleep":
        time.sleep(1e6)
    if response == "die":
        os._exit(3)
    if response == "raise":
        raise ValueError("bad response")
    return 1.0


def spins_on_some(prompt, response, answer, **fields):
    """For training: hangs (CPU loop) on responses of length 1 mod 4, ends its process on 3 mod 4."""
    import os

    if len(response) % 4 == 1:
        while True:
            pass
    if len(response) % 4 == 3:
        os._exit(1)
    return digit_share(prompt, response, answer)


def always_one(prompt, response, answer, **fields):
    """Accepts anything: every group is solved, so no group has a learning signal."""
    return 1.0
