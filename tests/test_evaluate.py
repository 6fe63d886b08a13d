"""Evaluation statistics (aspo.evaluate) against their definitions."""

from __future__ import annotations

import itertools
from math import comb

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aspo.evaluate import pass_at_k, summarize


def _brute_pass_at_k(n: int, c: int, k: int) -> float:
    """Fraction of the k-subsets of n samples (c correct) that contain a correct one."""
    samples = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(samples, k))
    return sum(any(s) for s in subsets) / len(subsets)


@pytest.mark.parametrize("n", range(1, 9))
def test_pass_at_k_equals_the_subset_definition(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            assert pass_at_k(n, c, k) == pytest.approx(_brute_pass_at_k(n, c, k), abs=1e-12)


@given(st.integers(1, 200).flatmap(lambda n: st.tuples(st.just(n), st.integers(0, n), st.integers(1, n))))
def test_pass_at_k_matches_the_binomial_form(nck):
    n, c, k = nck
    assert pass_at_k(n, c, k) == pytest.approx(1 - comb(n - c, k) / comb(n, k), abs=1e-9)


def test_pass_at_k_edges_and_errors():
    assert pass_at_k(10, 0, 5) == 0.0 and pass_at_k(10, 10, 1) == 1.0
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)
    assert pass_at_k(4, 1, 4) == 1.0  # n - c < k: every k-subset holds the correct one
    for bad in ((3, 4, 1), (3, -1, 1), (3, 1, 0), (3, 1, 4)):
        with pytest.raises(ValueError):
            pass_at_k(*bad)


def test_summarize_averages_over_problems():
    rewards = [[1.0, 0.0, 0.0, 1.0], [0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 0.5]]
    out = summarize(rewards, 4)
    assert out["avg@4"] == pytest.approx((0.5 + 0.0 + 0.875) / 3)
    assert out["pass@1"] == pytest.approx((0.5 + 0.0 + 0.75) / 3)  # 0.5 is below the threshold 1.0
    assert out["pass@4"] == pytest.approx((1 + 0 + 1) / 3)
    assert "maj@4" not in out
    assert summarize(rewards, 2)["pass@2"] == pytest.approx(
        (_brute_pass_at_k(4, 2, 2) + 0 + _brute_pass_at_k(4, 3, 2)) / 3
    )
    assert summarize(rewards, 4, threshold=0.5)["pass@1"] == pytest.approx((0.5 + 0 + 1.0) / 3)


def test_majority_vote():
    rewards = [[0.0, 1.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]]
    answers = [
        ["3", "4", "4", None],  # majority right
        ["4", "5", "5", "6"],  # majority wrong though one sample was right
        [None, None, None, None],  # no answers: 0
        ["4", None, None, None],
    ]  # Nones do not vote
    out = summarize(rewards, 4, answers_per_problem=answers)
    assert out["maj@4"] == pytest.approx((1 + 0 + 0 + 1) / 4)


def test_summarize_rejects_too_few_samples():
    with pytest.raises(ValueError, match="fewer than k"):
        summarize([[1.0, 0.0]], 3)
    with pytest.raises(ValueError, match="no problems"):
        summarize([], 1)


def test_majority_vote_uses_the_first_k_of_more_samples():
    # 4 samples, k=2: the first two vote ("7" wrong twice); the later correct "5"s must not outvote them
    out = summarize([[0.0, 0.0, 1.0, 1.0]], 2, answers_per_problem=[["7", "7", "5", "5"]])
    assert out["maj@2"] == 0.0
    assert out["avg@2"] == 0.5  # the mean over all samples estimates the k-sample mean
