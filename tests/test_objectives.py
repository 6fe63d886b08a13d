"""Weight tables, values, aggregation, KL, the entropy split, metrics and input checks of aspo.objectives.

Expected weights are written out by hand per region (docs/algorithm.md and each objective's docstring) --
never taken from the library's own weight tensors.
"""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch

from aspo.objectives import (
    POLICY_LOSSES,
    agg_loss,
    high_entropy_tokens,
    kl_penalty,
    policy_loss,
    register_policy_loss,
)
from aspo.objectives import base as objectives_base
from aspo.objectives.base import POLICY_LOSS_DEFAULTS, TokenTerms

OLD_LOG_PROB = math.log(0.3)


def token_weights(name, rows, entropy=None, **params):
    """rows: (advantage, ratio). Returns (w per token recovered from autograd, loss, metrics).

    One response, token-mean: dloss/dlogp_t = -A_t w_t / K, so w_t = -K grad_t / A_t.
    """
    advantages = torch.tensor([[a for a, _ in rows]])
    old = torch.full((1, len(rows)), OLD_LOG_PROB)
    log_prob = (old + torch.tensor([[math.log(r) for _, r in rows]])).requires_grad_(True)
    mask = torch.ones(1, len(rows), dtype=torch.bool)
    loss, metrics = policy_loss(name, log_prob, old, advantages, mask, entropy=entropy, **params)
    loss.backward()
    weights = -len(rows) * log_prob.grad[0] / advantages[0]
    return weights, loss, metrics


# (advantage, ratio, expected weight) at eps_low = eps_high = 0.2, c = 3 unless stated.
GRPO_TABLE = [
    (1.0, 1.5, 0.0),  # A > 0, r > 1 + eps_high: clipped
    (1.0, 1.1, 1.1),  # A > 0, inside: r
    (0.7, 0.5, 0.5),  # A > 0, below 1 - eps_low: PPO does not clip positive tokens there
    (2.0, 0.05, 0.05),  # A > 0, far below: still r
    (-1.0, 0.5, 0.0),  # A < 0, r < 1 - eps_low: clipped
    (-1.0, 0.9, 0.9),  # A < 0, inside: r
    (-0.5, 2.0, 2.0),  # A < 0, 1 + eps_high < r <= c: PPO does not clip negative tokens there
    (-1.0, 4.0, 0.0),  # A < 0, r > c: hard dual clip
]
ASPO_TABLE = [
    (1.0, 1.5, 0.0),  # A > 0, r > 1 + eps_high: clipped
    (1.0, 1.1, 1 / 1.1),  # A > 0, 1/c <= r <= 1 + eps_high: flipped 1/r
    (0.7, 0.5, 2.0),  # A > 0: 1/r, also below 1 - eps_low
    (1.0, 0.4, 2.5),  # A > 0: 1/r just above 1/c
    (2.0, 0.2, 3.0),  # A > 0, r < 1/c: soft dual clip, weight c
    (1.0, 1e-6, 3.0),  # A > 0, far below: still c
    (-1.0, 0.5, 0.0),  # A < 0, r < 1 - eps_low: clipped
    (-1.0, 0.9, 0.9),  # A < 0, inside: r
    (-0.5, 2.0, 2.0),  # A < 0, up to c: r
    (-1.0, 4.0, 3.0),  # A < 0, r > c: soft dual clip, weight c
    (-1.0, 1e6, 3.0),  # A < 0, far above: still c
]
FLIP_ONLY_TABLE = [
    (1.0, 1.5, 0.0),
    (1.0, 1.1, 1 / 1.1),
    (2.0, 0.2, 5.0),  # no cap at c
    (1.0, 0.01, 100.0),
    (-1.0, 0.5, 0.0),
    (-1.0, 0.9, 0.9),
    (-1.0, 2.5, 2.5),
    (-1.0, 4.0, 0.0),  # grpo's hard dual clip
]
NO_IS_TABLE = [
    (1.0, 1.5, 0.0),  # default clip_ratio_high 0.28
    (1.0, 1.25, 1.0),
    (1.0, 0.1, 1.0),
    (-1.0, 0.7, 0.0),
    (-1.0, 0.9, 1.0),
    (-1.0, 2.9, 1.0),
    (-1.0, 3.5, 0.0),
]
PPO_TABLE = [(1.0, 1.5, 0.0), (1.0, 0.5, 0.5), (-1.0, 0.5, 0.0), (-1.0, 2.0, 2.0), (-1.0, 10.0, 10.0)]
CISPO_TABLE = [  # w = clamp(r, 0, 1.28) for both signs, never 0
    (1.0, 2.0, 1.28),
    (1.0, 1.1, 1.1),
    (1.0, 0.1, 0.1),
    (-1.0, 0.1, 0.1),
    (-1.0, 5.0, 1.28),
]


def _sapo_weight(ratio, tau):
    gate = 1 / (1 + math.exp(-tau * (ratio - 1)))
    return 4 * gate * (1 - gate) * ratio


SAPO_TABLE = [
    (1.0, 1.0, 1.0),
    (1.0, 2.0, _sapo_weight(2.0, 1.0)),
    (1.0, 0.3, _sapo_weight(0.3, 1.0)),
    (-1.0, 2.0, _sapo_weight(2.0, 1.05)),
    (-1.0, 50.0, _sapo_weight(50.0, 1.05)),
]


@pytest.mark.parametrize(
    ("name", "table", "params"),
    [
        ("grpo", GRPO_TABLE, {}),
        ("dapo", GRPO_TABLE, {}),  # no row between 1.2 and 1.28 here; see test_dapo_is_grpo_with_clip_higher
        ("aspo", ASPO_TABLE, {}),
        ("aspo_flip_only", FLIP_ONLY_TABLE, {}),
        ("no_is", NO_IS_TABLE, {}),
        ("ppo", PPO_TABLE, {}),
        ("cispo", CISPO_TABLE, {}),
        ("sapo", SAPO_TABLE, {}),
    ],
)
def test_gradient_weights_match_table(name, table, params):
    weights, _, _ = token_weights(name, [(a, r) for a, r, _ in table], **params)
    expected = torch.tensor([w for _, _, w in table])
    torch.testing.assert_close(weights, expected, rtol=2e-5, atol=1e-7)


def test_dapo_is_grpo_with_clip_higher():
    # r = 1.25: clipped by grpo (eps_high 0.2), kept by dapo (0.28); r = 1.3 clipped by both.
    rows = [(1.0, 1.25), (1.0, 1.3), (-1.0, 4.0)]
    dapo, _, _ = token_weights("dapo", rows)
    grpo, _, _ = token_weights("grpo", rows)
    torch.testing.assert_close(dapo, torch.tensor([1.25, 0.0, 0.0]))
    torch.testing.assert_close(grpo, torch.tensor([0.0, 0.0, 0.0]))
    same, _, _ = token_weights("grpo", rows, clip_ratio_high=0.28)
    torch.testing.assert_close(same, dapo)


def test_custom_clip_parameters():
    # eps_low 0.1, eps_high 0.5, c 2: aspo's regions move accordingly
    rows = [(1.0, 1.4), (1.0, 1.6), (1.0, 0.45), (-1.0, 0.85), (-1.0, 1.9), (-1.0, 2.5)]
    weights, _, _ = token_weights("aspo", rows, clip_ratio_low=0.1, clip_ratio_high=0.5, clip_ratio_c=2.0)
    torch.testing.assert_close(weights, torch.tensor([1 / 1.4, 0.0, 2.0, 0.0, 1.9, 2.0]))


def test_gspo_uses_the_sequence_ratio():
    # two responses, 3 and 2 valid tokens; s_i = exp(mean log r); w_t = s_i unless s_i is clipped
    log_ratio = torch.tensor([[0.1, -0.3, 0.5], [-0.4, -0.2, 9.0]])
    mask = torch.tensor([[True, True, True], [True, True, False]])
    old = torch.full((2, 3), -1.0)
    log_prob = (old + log_ratio).requires_grad_(True)
    advantages = torch.tensor([1.0, -1.0])
    loss, _ = policy_loss("gspo", log_prob, old, advantages, mask, clip_ratio_low=0.2, clip_ratio_high=0.2)
    loss.backward()
    s0 = math.exp(0.1)  # the negative response has s = exp(-0.3) = 0.741 < 0.8: clipped
    # seq-mean-token-mean: grad = -A w / (B * n_i)
    expected = torch.tensor([[-s0 / 6, -s0 / 6, -s0 / 6], [0.0, 0.0, 0.0]])
    torch.testing.assert_close(log_prob.grad, expected)
    assert loss.item() == pytest.approx((-s0 + 0.8) / 2, rel=1e-5)  # values -A*min(s,hi), -A*max(s,lo)


def test_aspo_and_grpo_loss_values_per_region():
    # value per token from docs/algorithm.md; token-mean of the values
    aspo_rows = [(1.0, 1.5), (1.0, 1.1), (2.0, 0.2), (-1.0, 0.5), (-1.0, 0.9), (-1.0, 4.0)]
    current = [OLD_LOG_PROB + math.log(r) for _, r in aspo_rows]
    aspo_values = [-1 / 1.2, -1 / 1.1, -2.0 * 3.0 * current[2], 0.8, 0.9, 3.0 * current[5]]
    _, loss, _ = token_weights("aspo", aspo_rows)
    assert loss.item() == pytest.approx(sum(aspo_values) / 6, rel=1e-5)
    grpo_values = [-1.2, -1.1, -2.0 * 0.2, 0.8, 0.9, 3.0]
    _, loss, _ = token_weights("grpo", aspo_rows)
    assert loss.item() == pytest.approx(sum(grpo_values) / 6, rel=1e-5)


def test_zero_advantage_contributes_nothing():
    # kl_cov's penalty acts on its selected tokens whatever A (tests/test_objectives_baselines.py)
    for name in sorted(set(POLICY_LOSSES) - {"kl_cov"}):
        old = torch.zeros(1, 2)
        log_prob = torch.tensor([[0.7, -0.2]], requires_grad=True)
        loss, _ = policy_loss(name, log_prob, old, torch.tensor([[0.0, 0.0]]), torch.ones(1, 2))
        loss.backward()
        assert loss.item() == 0.0
        assert torch.equal(log_prob.grad, torch.zeros(1, 2)), name


# ---------------------------------------------------------------- entropy split


def test_aspo_entropy_split_widens_the_range_of_high_entropy_tokens():
    # 5 tokens, entropies [0,0,0,0,1]: 0.8-quantile = 0.2, only the last token is above it
    rows = [(1.0, 1.3), (-1.0, 0.7), (1.0, 1.0), (1.0, 1.0), (1.0, 1.3)]
    entropy = torch.tensor([[0.0, 0.0, 0.0, 0.0, 1.0]])
    weights, _, metrics = token_weights("aspo", rows, entropy=entropy)
    torch.testing.assert_close(weights, torch.tensor([0.0, 0.0, 1.0, 1.0, 1 / 1.3]))
    assert metrics["entropy_high_frac"] == pytest.approx(0.2)
    # negative token with r = 0.7 kept when it is the high-entropy one (eps_low 0.4)
    weights, _, _ = token_weights("aspo", [(1.0, 1.0)] * 4 + [(-1.0, 0.7)], entropy=entropy)
    assert weights[4].item() == pytest.approx(0.7)
    # without entropy one range applies to all
    weights, _, metrics = token_weights("aspo", rows)
    assert weights[4].item() == 0.0 and "entropy_high_frac" not in metrics


def test_entropy_split_only_where_ranges_differ():
    rows = [(1.0, 1.3)] * 5
    entropy = torch.tensor([[0.0, 0.0, 0.0, 0.0, 1.0]])
    weights, _, metrics = token_weights("grpo", rows, entropy=entropy)
    assert torch.equal(weights, torch.zeros(5)) and "entropy_high_frac" not in metrics
    weights, _, metrics = token_weights(
        "grpo", rows, entropy=entropy, high_entropy_clip_ratio_low=0.4, high_entropy_clip_ratio_high=0.4
    )
    torch.testing.assert_close(weights, torch.tensor([0.0, 0.0, 0.0, 0.0, 1.3]))
    assert metrics["entropy_high_frac"] == pytest.approx(0.2)


def _archer_high_entropy(entropy, mask, quantile):
    """The authors' definition (Archer2.0 dp_actor): entropy > nanquantile over valid tokens."""
    masked = torch.where(mask, entropy, torch.nan)
    threshold = torch.nanquantile(masked, quantile, dim=-1, keepdim=True)
    return (masked > threshold) & mask


@pytest.mark.parametrize("quantile", [0.0, 0.5, 0.8, 0.95, 1.0])
def test_high_entropy_tokens_match_the_reference_definition(quantile):
    generator = torch.Generator().manual_seed(int(quantile * 100))
    entropy = torch.rand(64, 37, generator=generator)
    entropy[::3] = (entropy[::3] * 4).round() / 4  # many ties
    lengths = torch.randint(1, 38, (64,), generator=generator)
    mask = torch.arange(37) < lengths.unsqueeze(1)
    mask[5] = False  # a response with no valid token: no high token, no NaN trouble
    got = high_entropy_tokens(entropy, mask, quantile)
    assert torch.equal(got[5], torch.zeros(37, dtype=torch.bool))
    keep = torch.ones(64, dtype=torch.bool)
    keep[5] = False
    assert torch.equal(got[keep], _archer_high_entropy(entropy, mask, quantile)[keep])


@pytest.mark.parametrize("quantile", [0.0, 0.3, 0.8, 1.0])
def test_numpy_and_torch_selection_paths_agree(monkeypatch, quantile):
    generator = torch.Generator().manual_seed(7)
    entropy = (torch.rand(32, 50, generator=generator) * 6).round()  # ties
    mask = torch.arange(50) < torch.randint(0, 51, (32, 1), generator=generator)
    numpy_result = high_entropy_tokens(entropy, mask, quantile)
    nan_padded = entropy.masked_fill(~mask, float("nan"))  # takes the select path instead of the add
    assert torch.equal(high_entropy_tokens(nan_padded, mask, quantile), numpy_result)
    monkeypatch.setattr(objectives_base, "_above_quantile_numpy", objectives_base._above_quantile_torch)
    assert torch.equal(high_entropy_tokens(entropy, mask, quantile), numpy_result)
    assert torch.equal(high_entropy_tokens(nan_padded, mask, quantile), numpy_result)
    assert torch.equal(numpy_result, _archer_high_entropy(entropy, mask, quantile))


@pytest.mark.parametrize("padding", [99.0, 3e38, -3e38, float("inf"), float("nan")])
def test_high_entropy_ignores_padding_values(padding):
    entropy = torch.tensor([[0.1, 0.2, 0.3, 0.4, 0.5, padding, padding]])
    mask = torch.tensor([[True] * 5 + [False] * 2])
    assert high_entropy_tokens(entropy, mask, 0.8).tolist() == [
        [False, False, False, False, True, False, False]
    ]


# ---------------------------------------------------------------- aggregation


def test_agg_modes_normalisers():
    per_token = torch.tensor([[1.0, 2.0, 3.0, 100.0], [4.0, 5.0, -7.0, -7.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    assert agg_loss(per_token, mask, "token-mean").item() == pytest.approx(15 / 5)
    assert agg_loss(per_token, mask, "seq-mean-token-mean").item() == pytest.approx((6 / 3 + 9 / 2) / 2)
    assert agg_loss(per_token, mask, "seq-mean-token-sum").item() == pytest.approx((6 + 9) / 2)
    assert agg_loss(per_token, mask, "seq-mean-token-sum-norm").item() == pytest.approx(15 / (2 * 4))
    empty = torch.zeros(2, 4)
    for mode in ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"):
        assert agg_loss(per_token, empty, mode).item() == 0.0
    with pytest.raises(ValueError, match="loss_agg_mode"):
        agg_loss(per_token, mask, "token-sum")


def test_seq_mean_token_mean_gradient():
    log_prob = torch.zeros(2, 3, requires_grad=True)
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    loss, _ = policy_loss("grpo", log_prob, torch.zeros(2, 3), torch.tensor([1.0, -2.0]), mask,
                          loss_agg_mode="seq-mean-token-mean")  # fmt: skip
    loss.backward()  # r = 1: w = 1; grad = -A / (B * n_i)
    torch.testing.assert_close(log_prob.grad, torch.tensor([[-1 / 6] * 3, [2 / 2, 0.0, 0.0]]))


# ---------------------------------------------------------------- KL


def test_kl_estimators():
    log_prob = torch.tensor([math.log(0.5), math.log(0.2)])
    ref = torch.tensor([math.log(0.25), math.log(0.2)])
    d = math.log(0.25) - math.log(0.5)
    torch.testing.assert_close(kl_penalty(log_prob, ref, "k1"), torch.tensor([-d, 0.0]))
    torch.testing.assert_close(kl_penalty(log_prob, ref, "k2"), torch.tensor([0.5 * d * d, 0.0]))
    torch.testing.assert_close(kl_penalty(log_prob, ref, "mse"), kl_penalty(log_prob, ref, "k2"))
    k3 = math.exp(d) - d - 1
    torch.testing.assert_close(kl_penalty(log_prob, ref, "k3"), torch.tensor([k3, 0.0]))
    torch.testing.assert_close(kl_penalty(log_prob, ref, "low_var_kl"), torch.tensor([k3, 0.0]))
    far_log_prob = torch.tensor([-60.0, 0.0, -3.0], requires_grad=True)
    far = kl_penalty(far_log_prob, torch.tensor([0.0, -60.0, -1.0]), "k3")
    assert far.tolist()[:2] == [10.0, 10.0]  # clamped to [-10, 10]
    assert far[2].item() == pytest.approx(math.exp(2) - 2 - 1)
    far.sum().backward()
    assert torch.isfinite(far_log_prob.grad).all()
    with pytest.raises(ValueError, match="k1, k2"):
        kl_penalty(log_prob, ref, "k4")
    with pytest.raises(ValueError, match="ref_log_prob"):
        kl_penalty(log_prob, ref[:1], "k1")


# ---------------------------------------------------------------- metrics


def test_metrics_on_a_hand_made_grpo_batch():
    # behaviour probs 0.1, 0.3, 0.6, 0.8, 0.95 for positive tokens; two negatives
    old = torch.tensor([[0.1, 0.3, 0.6, 0.8, 0.95, 0.5, 0.5, 0.5]]).log()
    ratios = torch.tensor([[0.5, 0.9, 1.1, 1.15, 1.5, 0.5, 1.0, 4.0]])
    advantages = torch.tensor([[1.0, 1.0, 1.0, 1.0, 1.0, -1.0, -1.0, -1.0]])
    mask = torch.tensor([[True] * 8])
    _, metrics = policy_loss("grpo", old + ratios.log(), old, advantages, mask)
    expected = {
        "clipfrac/pos": 1 / 5,  # r = 1.5
        "clipfrac/neg": 1 / 3,  # r = 0.5
        "dualclip/pos": 0.0,
        "dualclip/neg": 1 / 3,  # r = 4
        "ppo_kl": -ratios.log().mean().item(),
        "ratio/min": 0.5,
        "ratio/mean": ratios.mean().item(),
        "ratio/max": 4.0,
        "weight/pos": (0.5 + 0.9 + 1.1 + 1.15 + 0.0) / 5,
        "weight/neg": (0.0 + 1.0 + 0.0) / 3,
        "pos_weight_by_prob/0.00-0.25": 0.5,
        "pos_weight_by_prob/0.25-0.50": 0.9,
        "pos_weight_by_prob/0.50-0.75": 1.1,
        "pos_weight_by_prob/0.75-0.90": 1.15,
        "pos_weight_by_prob/0.90-1.00": 0.0,
        # clipped tokens apart: the p = 0.95 token's weight 0 is the clip's, so no unclipped mean there
        "pos_unclipped_weight_by_prob/0.00-0.25": 0.5,
        "pos_unclipped_weight_by_prob/0.25-0.50": 0.9,
        "pos_unclipped_weight_by_prob/0.50-0.75": 1.1,
        "pos_unclipped_weight_by_prob/0.75-0.90": 1.15,
        "pos_clipfrac_by_prob/0.00-0.25": 0.0,
        "pos_clipfrac_by_prob/0.25-0.50": 0.0,
        "pos_clipfrac_by_prob/0.50-0.75": 0.0,
        "pos_clipfrac_by_prob/0.75-0.90": 0.0,
        "pos_clipfrac_by_prob/0.90-1.00": 1.0,
        "neg_unclipped_weight_by_prob/0.50-0.75": 1.0,  # r = 0.5 clipped, r = 4 dual-clipped
        "neg_clipfrac_by_prob/0.50-0.75": 2 / 3,
    }
    assert metrics.keys() == expected.keys()
    for key, value in expected.items():
        assert metrics[key] == pytest.approx(value, rel=1e-5, abs=1e-7), key
    assert all(type(v) is float for v in metrics.values())

    _, metrics = policy_loss("aspo", old + ratios.log(), old, advantages, mask)
    assert metrics["dualclip/pos"] == 0.0 and metrics["dualclip/neg"] == pytest.approx(1 / 3)
    assert metrics["weight/neg"] == pytest.approx((0.0 + 1.0 + 3.0) / 3)
    assert metrics["pos_weight_by_prob/0.00-0.25"] == pytest.approx(2.0)
    assert metrics["pos_weight_by_prob/0.75-0.90"] == pytest.approx(1 / 1.15)


def test_metrics_show_grpo_favouring_likely_tokens_and_aspo_not():
    # after an update, likely positive tokens went up (r > 1) and unlikely ones down (r < 1)
    probs = torch.tensor([[0.05, 0.1, 0.3, 0.4, 0.6, 0.7, 0.8, 0.85, 0.92, 0.97]])
    ratios = torch.tensor([[0.6, 0.7, 0.85, 0.9, 1.0, 1.02, 1.05, 1.08, 1.1, 1.15]])
    old = probs.log()
    _, grpo = policy_loss("grpo", old + ratios.log(), old, torch.ones(1), torch.ones(1, 10))
    _, aspo = policy_loss("aspo", old + ratios.log(), old, torch.ones(1), torch.ones(1, 10))
    keys = [k for k in grpo if k.startswith("pos_weight_by_prob/")]
    assert len(keys) == 5
    grpo_curve = [grpo[k] for k in keys]
    aspo_curve = [aspo[k] for k in keys]
    assert grpo_curve == sorted(grpo_curve)  # rises with the behaviour probability
    assert aspo_curve == sorted(aspo_curve, reverse=True)  # falls: unlikely correct tokens get more


def test_metrics_with_padding_and_one_sign_only():
    old = torch.full((2, 3), -1.0)
    log_prob = old + torch.tensor([[0.3, 0.2, 5.0], [0.1, 7.0, 7.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    _, metrics = policy_loss("grpo", log_prob, old, torch.tensor([1.0, 2.0]), mask)
    assert "weight/neg" not in metrics and metrics["clipfrac/neg"] == 0.0
    assert metrics["ratio/max"] == pytest.approx(math.exp(0.3))  # padding's 5.0 and 7.0 ignored
    assert metrics["ratio/min"] == pytest.approx(math.exp(0.1))  # > 1: padding's neutral 1 ignored
    assert metrics["ratio/mean"] == pytest.approx((math.exp(0.3) + math.exp(0.2) + math.exp(0.1)) / 3)
    _, metrics = policy_loss("grpo", log_prob, old, torch.tensor([1.0, 2.0]), torch.zeros(2, 3))
    assert "ratio/min" not in metrics and "weight/pos" not in metrics


# ---------------------------------------------------------------- registry and bad input


def test_registry_and_custom_objective():
    expected = {
        "aspo",
        "aspo_flip_only",
        "grpo",
        "dapo",
        "ppo",
        "no_is",
        "gspo",
        "cispo",
        "sapo",
        "clip_cov",
        "kl_cov",
    }
    assert expected <= set(POLICY_LOSSES)
    assert POLICY_LOSS_DEFAULTS["aspo"]["clip_ratio_c"] == 3.0
    assert POLICY_LOSS_DEFAULTS["dapo"]["clip_ratio_high"] == 0.28

    @register_policy_loss("test_reinforce", scale=1.0)
    def reinforce(tokens, *, scale):
        return TokenTerms(-tokens.advantages * scale * tokens.log_prob, torch.full_like(tokens.ratio, scale))

    try:
        weights, _, _ = token_weights("test_reinforce", [(1.0, 2.0), (-1.0, 0.1)], scale=0.5)
        torch.testing.assert_close(weights, torch.tensor([0.5, 0.5]))
    finally:
        del POLICY_LOSSES["test_reinforce"], POLICY_LOSS_DEFAULTS["test_reinforce"]


def _inputs(batch=2, length=3):
    return {
        "log_prob": torch.full((batch, length), -1.0),
        "old_log_prob": torch.full((batch, length), -1.0),
        "advantages": torch.ones(batch),
        "response_mask": torch.ones(batch, length, dtype=torch.bool),
    }


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"old_log_prob": torch.zeros(2, 4)}, "old_log_prob has shape"),
        ({"response_mask": torch.ones(3, 3)}, "response_mask has shape"),
        ({"response_mask": torch.ones(2, 1)}, "response_mask has shape"),
        ({"response_mask": torch.full((2, 3), 2)}, "response_mask must be bool"),
        ({"advantages": torch.ones(3)}, "advantages has shape"),
        ({"advantages": torch.ones(2, 1)}, "advantages has shape"),
        ({"log_prob": torch.zeros(6)}, "log_prob must be"),
        ({"log_prob": torch.zeros(2, 3, dtype=torch.long)}, "log_prob must be a floating"),
        ({"log_prob": torch.tensor([[-1.0, float("nan"), -1.0], [-1.0] * 3])}, "log_prob holds NaN"),
        ({"old_log_prob": torch.tensor([[-1.0, -1.0, float("-inf")], [-1.0] * 3])}, "old_log_prob holds NaN"),
        ({"advantages": torch.tensor([float("inf"), 1.0])}, "advantages holds NaN"),
        ({"entropy": torch.zeros(2, 2)}, "entropy has shape"),
        ({"entropy": torch.tensor([[0.0, float("nan"), 0.0], [0.0] * 3])}, "entropy holds NaN"),
    ],
)
def test_bad_input_raises_value_error_naming_the_argument(change, message):
    kwargs = _inputs()
    kwargs.update(change)
    with pytest.raises(ValueError, match=message):
        policy_loss("aspo", **kwargs)


def test_non_finite_values_outside_the_mask_are_allowed():
    kwargs = _inputs()
    kwargs["response_mask"] = torch.tensor([[1, 1, 0], [1, 0, 0]])
    kwargs["log_prob"] = torch.tensor([[-1.0, -1.0, float("nan")], [-1.0, float("-inf"), float("inf")]])
    kwargs["log_prob"].requires_grad_(True)
    kwargs["old_log_prob"] = torch.tensor([[-1.0, -1.0, float("inf")], [-1.0, float("nan"), 0.0]])
    kwargs["advantages"] = torch.tensor([[1.0, -1.0, float("nan")], [1.0, float("inf"), 1.0]])
    entropy = torch.tensor([[0.5, 0.1, float("nan")], [0.2, float("inf"), 3e38]])
    for name in POLICY_LOSSES:
        kwargs["log_prob"].grad = None
        loss, metrics = policy_loss(name, **kwargs, entropy=entropy)
        loss.backward()
        assert torch.isfinite(loss) and all(math.isfinite(v) for v in metrics.values()), name
        assert torch.isfinite(kwargs["log_prob"].grad).all(), name
        assert kwargs["log_prob"].grad[0, 2] == 0 and kwargs["log_prob"].grad[1, 1:].eq(0).all()


def test_unknown_name_and_parameter():
    with pytest.raises(ValueError, match="valid names: aspo, aspo_flip_only, cispo"):
        policy_loss("ppo2", **_inputs())
    with pytest.raises(ValueError, match="clip_ratio_hgh"):
        policy_loss("aspo", **_inputs(), clip_ratio_hgh=0.3)
    with pytest.raises(ValueError, match="clip_ratio_c must be > 1"):
        policy_loss("aspo", **_inputs(), clip_ratio_c=0.5)
    with pytest.raises(ValueError, match="loss_agg_mode"):
        policy_loss("aspo", **_inputs(), loss_agg_mode="sum")
    loss, _ = policy_loss("aspo", **_inputs(), clip_ratio_high=None)  # None = default
    assert torch.isfinite(loss)


def test_float_mask_and_broadcast_advantages_equal_explicit_ones():
    generator = torch.Generator().manual_seed(3)
    old = -torch.rand(3, 5, generator=generator) * 3
    log_prob = old + torch.randn(3, 5, generator=generator) * 0.4
    advantages = torch.randn(3, generator=generator)
    bool_mask = torch.rand(3, 5, generator=generator) > 0.3
    loss_a, metrics_a = policy_loss("aspo", log_prob, old, advantages, bool_mask)
    loss_b, metrics_b = policy_loss(
        "aspo", log_prob, old, advantages[:, None].expand(3, 5), bool_mask.float()
    )
    assert loss_a.item() == loss_b.item() and metrics_a == metrics_b


def test_importing_objectives_does_not_import_transformers():
    code = "import sys, aspo.objectives, aspo.advantages; print('transformers' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_the_kl_term_split_by_entropy_weighs_each_part_over_its_own_tokens():
    """Archer2.0's use_token_entropy_separate: coef x KL token-mean over the tokens at or below the
    quantile + high_entropy_coef x KL token-mean over those above; without the split, coef x KL over all."""
    from aspo.objectives.base import high_entropy_tokens, kl_loss

    kl = torch.tensor([[0.1, 0.2, 0.3, 0.4, 5.0], [1.0, 2.0, 0.0, 0.0, 0.0]])
    entropy = torch.tensor([[0.1, 0.2, 0.3, 0.4, 2.0], [0.5, 0.1, 9.0, 9.0, 9.0]])
    mask = torch.tensor([[True] * 5, [True, True, False, False, False]])
    high = high_entropy_tokens(entropy, mask, 0.8)
    # row 0: q80 of [.1,.2,.3,.4,2.] = 0.4 + 0.2 * 1.6 = 0.72 -> only the last token; row 1: q80 = 0.42
    assert high.tolist() == [[False] * 4 + [True], [True] + [False] * 4]
    loss, metrics = kl_loss(kl, mask, "token-mean", 0.001, high_entropy=high, high_entropy_coef=0.0)
    low_mean = (0.1 + 0.2 + 0.3 + 0.4 + 2.0) / 5  # the five valid tokens not above the quantile
    high_mean = (5.0 + 1.0) / 2
    assert float(loss) == pytest.approx(0.001 * low_mean)
    assert metrics["kl_loss"] == pytest.approx(low_mean + high_mean)
    assert metrics["kl_loss/high_entropy"] == pytest.approx(high_mean)
    # seq-mean-token-mean: each response's mean over its own low-entropy tokens, then over responses
    loss, _ = kl_loss(kl, mask, "seq-mean-token-mean", 1.0, high_entropy=high, high_entropy_coef=0.5)
    low_rows = [(0.1 + 0.2 + 0.3 + 0.4) / 4, 2.0]
    high_rows = [5.0, 1.0]
    assert float(loss) == pytest.approx(sum(low_rows) / 2 + 0.5 * sum(high_rows) / 2)
    plain, metrics = kl_loss(kl, mask, "token-mean", 0.01)
    assert float(plain) == pytest.approx(0.01 * (0.1 + 0.2 + 0.3 + 0.4 + 5.0 + 1.0 + 2.0) / 7)
    assert set(metrics) == {"kl_loss"}
