"""The entropy-preserving baselines and the composable terms of aspo.objectives.

Clip-Cov / KL-Cov: gradient weights region by region against hand-computed covariances, and loss and
gradient against independent transcriptions of verl 0.9.1's ``compute_policy_loss_clip_cov`` /
``compute_policy_loss_kl_cov`` (autograd through their surrogate, never our weight table). Top-entropy
selection and the off-policy mask: against transcriptions of TRL 1.16's ``get_high_entropy_mask`` /
``get_off_policy_mask``. The entropy bonus and Skywork-OR1's adaptive coefficient: by hand.
"""

from __future__ import annotations

import math

import pytest
import torch

from aspo.objectives import (
    adapted_entropy_coef,
    applied_entropy_coef,
    entropy_bonus,
    off_policy_keep,
    policy_loss,
    top_entropy_tokens,
)


def grad_of(name, log_prob, old, advantages, mask, **kwargs):
    log_prob = log_prob.clone().requires_grad_(True)
    loss, metrics = policy_loss(name, log_prob, old, advantages, mask, **kwargs)
    loss.backward()
    return loss.detach(), log_prob.grad, metrics


# ---------------------------------------------------------------- Clip-Cov


def _hand_covariance(advantages, log_probs):
    """cov_t = (A_t - mean A)(logp_t - mean logp) with plain Python floats (one response, all valid)."""
    mean_a = sum(advantages) / len(advantages)
    mean_l = sum(log_probs) / len(log_probs)
    return [(a - mean_a) * (lp - mean_l) for a, lp in zip(advantages, log_probs, strict=True)]


def test_clip_cov_weights_region_by_region():
    # (advantage, current log-prob, ratio); eps 0.2. Covariances are computed by hand below.
    rows = [
        (2.0, -0.2, 1.1),  # A > 0 inside, cov in (1, 5): selected -> w 0
        (2.0, -0.3, 1.5),  # A > 0, r > hi: PPO clips it -> w 0, never a candidate
        (2.0, -0.25, 0.5),  # A > 0, r < lo: PPO keeps w = r; cov in band -> selected -> 0
        (-2.0, -4.0, 0.9),  # A < 0 inside, cov in band -> selected -> 0
        (-2.0, -4.5, 0.5),  # A < 0, r < lo: PPO clips -> 0
        (-2.0, -4.2, 2.5),  # A < 0, r > hi: PPO (no dual clip) keeps w = r; cov in band -> selected
        (0.5, -2.0, 1.1),  # cov below lb: w = r
        (-0.5, -2.2, 0.95),  # cov below lb: w = r
    ]
    adv = [a for a, _, _ in rows]
    lps = [lp for _, lp, _ in rows]
    cov = _hand_covariance(adv, lps)
    ppo_clipped = [(a > 0 and r > 1.2) or (a < 0 and r < 0.8) for a, _, r in rows]
    candidates = [1.0 < c < 5.0 and not clipped for c, clipped in zip(cov, ppo_clipped, strict=True)]
    assert candidates == [True, False, True, True, False, True, False, False]  # the regions are as meant
    log_prob = torch.tensor([lps])
    old = log_prob - torch.tensor([[math.log(r) for _, _, r in rows]])
    mask = torch.ones(1, len(rows), dtype=torch.bool)
    # clip_cov_ratio 1: every candidate is selected, whatever the draw
    _, grad, metrics = grad_of("clip_cov", log_prob, old, torch.tensor([adv]), mask, clip_cov_ratio=1.0)
    weights = -len(rows) * grad[0] / torch.tensor(adv)
    expected = [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.1, 0.95]
    torch.testing.assert_close(weights, torch.tensor(expected), rtol=2e-5, atol=1e-7)
    assert metrics["cov_selected_frac"] == pytest.approx(4 / 8)
    assert metrics["clipfrac/pos"] == pytest.approx(1 / 4) and metrics["clipfrac/neg"] == pytest.approx(1 / 4)
    # a band that excludes them: plain PPO-clip weights
    _, grad, _ = grad_of(
        "clip_cov", log_prob, old, torch.tensor([adv]), mask, clip_cov_lb=50.0, clip_cov_ub=60.0
    )
    weights = -len(rows) * grad[0] / torch.tensor(adv)
    torch.testing.assert_close(
        weights, torch.tensor([1.1, 0.0, 0.5, 0.9, 0.0, 2.5, 1.1, 0.95]), rtol=2e-5, atol=1e-7
    )


def test_clip_cov_selects_max_of_one_and_the_ratio_share_at_random():
    generator = torch.Generator().manual_seed(5)
    log_prob = -torch.rand(8, 40, generator=generator) * 6
    advantages = torch.tensor([4.0, -4.0, 3.0, -3.0, 4.0, -4.0, 3.0, -3.0]).unsqueeze(1).expand(8, 40)
    mask = torch.ones(8, 40, dtype=torch.bool)
    picks = []
    for seed in (0, 0, 1):
        _, grad, metrics = grad_of("clip_cov", log_prob, log_prob, advantages, mask, clip_cov_ratio=0.02,
                                   generator=torch.Generator().manual_seed(seed))  # fmt: skip
        picks.append(grad == 0)
        assert metrics["cov_selected_frac"] == pytest.approx(6 / 320)  # int(0.02 * 320) = 6
    assert torch.equal(picks[0], picks[1]) and not torch.equal(picks[0], picks[2])
    _, _, metrics = grad_of("clip_cov", log_prob, log_prob, advantages, mask)  # 2e-4 * 320 < 1: one token
    assert metrics["cov_selected_frac"] == pytest.approx(1 / 320)


def _verl_masked_mean(values, mask):
    return (values * mask).sum() / (mask.sum() + 1e-8)


def verl_clip_cov(old_log_prob, log_prob, advantages, response_mask, clip_ratio, lb, ub, eps=0.2):
    """verl 0.9.1 compute_policy_loss_clip_cov, token-mean, transcribed (global RNG for the draw)."""
    ratio = torch.exp(log_prob - old_log_prob)
    pg_losses1 = -advantages * ratio
    corr = torch.ones_like(advantages)
    pg_losses2 = -advantages * torch.clamp(ratio, 1 - eps, 1 + eps)
    clip_by_origin = (pg_losses2 > pg_losses1) & (response_mask > 0)
    cov_all = (advantages - _verl_masked_mean(advantages, response_mask)) * (
        log_prob - _verl_masked_mean(log_prob.detach(), response_mask)
    )
    cov_all[response_mask == 0] = -torch.inf
    cov_all[clip_by_origin] = -torch.inf
    clip_num = max(int(clip_ratio * response_mask.sum().item()), 1)
    top_k_idx = torch.nonzero((cov_all < ub) & (cov_all > lb) & (response_mask > 0))
    if len(top_k_idx) > 0:
        perm = torch.randperm(len(top_k_idx))
        top_k_idx = top_k_idx[perm[: min(clip_num, len(top_k_idx))]]
    else:
        top_k_idx = torch.empty((0, 2), dtype=torch.long)
    corr[top_k_idx[:, 0], top_k_idx[:, 1]] = 0
    pg_losses = torch.maximum(pg_losses1, pg_losses2) * corr
    return (pg_losses * response_mask).sum() / response_mask.sum()


def _random_batch(seed, rows=6, length=30, spread=4.0):
    generator = torch.Generator().manual_seed(seed)
    old = -torch.rand(rows, length, generator=generator) * spread
    log_prob = old + (torch.rand(rows, length, generator=generator) * 2 - 1) * 0.5
    lengths = torch.randint(1, length + 1, (rows,), generator=generator)
    mask = torch.arange(length) < lengths.unsqueeze(1)
    advantages = (torch.randn(rows, generator=generator) * 2).unsqueeze(1).expand(rows, length).contiguous()
    return log_prob, old, advantages, mask


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("ratio", [2e-4, 0.05, 1.0])
def test_clip_cov_equals_the_verl_transcription(seed, ratio):
    log_prob, old, advantages, mask = _random_batch(seed)
    reference_lp = log_prob.clone().requires_grad_(True)
    torch.manual_seed(100 + seed)  # verl draws from the global generator; ours from one seeded the same
    reference = verl_clip_cov(old, reference_lp, advantages, mask.float(), ratio, 1.0, 5.0)
    reference.backward()
    loss, grad, _ = grad_of("clip_cov", log_prob, old, advantages, mask, clip_cov_ratio=ratio,
                            generator=torch.Generator().manual_seed(100 + seed))  # fmt: skip
    torch.testing.assert_close(loss, reference.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad, reference_lp.grad, rtol=1e-5, atol=1e-7)


# ---------------------------------------------------------------- KL-Cov


def verl_kl_cov(old_log_prob, log_prob, advantages, response_mask, kl_cov_ratio, coef):
    """verl 0.9.1 compute_policy_loss_kl_cov, token-mean, transcribed."""
    negative_approx_kl = log_prob - old_log_prob
    abs_kl = negative_approx_kl.abs()
    ratio = torch.exp(negative_approx_kl)
    pg_losses1 = -advantages * ratio
    pg_losses_kl = -advantages * ratio + coef * abs_kl
    pg_losses = pg_losses1
    all_valid = response_mask > 0
    all_valid_idx = torch.nonzero(all_valid.reshape(-1), as_tuple=True)[0]
    all_valid_adv = advantages[all_valid].detach().reshape(-1)
    all_valid_logp = log_prob[all_valid].detach().reshape(-1)
    if len(all_valid_adv):
        cov = (all_valid_adv - all_valid_adv.mean()) * (all_valid_logp - all_valid_logp.mean())
        k = max(1, int(len(cov) * kl_cov_ratio))
        idx = all_valid_idx[torch.topk(cov, k, largest=True).indices]
        rows, cols = idx // advantages.shape[1], idx % advantages.shape[1]
        pg_losses[rows, cols] = pg_losses_kl[rows, cols]
    return (pg_losses * response_mask).sum() / response_mask.sum()


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize(("ratio", "coef"), [(2e-4, 1.0), (0.1, 1.0), (0.5, 0.3)])
def test_kl_cov_equals_the_verl_transcription(seed, ratio, coef):
    log_prob, old, advantages, mask = _random_batch(seed)
    reference_lp = log_prob.clone().requires_grad_(True)
    reference = verl_kl_cov(old, reference_lp, advantages, mask.float(), ratio, coef)
    reference.backward()
    loss, grad, metrics = grad_of(
        "kl_cov", log_prob, old, advantages, mask, kl_cov_ratio=ratio, kl_cov_coef=coef
    )
    torch.testing.assert_close(loss, reference.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad, reference_lp.grad, rtol=1e-5, atol=1e-7)
    n_valid = int(mask.sum())
    assert metrics["cov_selected_frac"] == pytest.approx(max(1, int(n_valid * ratio)) / n_valid)


def test_kl_cov_gradient_region_by_region():
    # one response, 4 tokens; k = int(4 * 0.5) = 2 tokens with the largest cov get coef * sign(log r)
    adv = [2.0, 2.0, -1.0, 0.0]
    lps = [-0.5, -3.0, -0.4, -0.45]
    cov = _hand_covariance(adv, lps)
    top2 = sorted(range(4), key=lambda i: cov[i], reverse=True)[:2]
    assert sorted(top2) == [0, 3]  # token 3 has A = 0 and is penalised all the same
    log_ratios = [0.3, 0.2, -0.4, 0.1]
    log_prob = torch.tensor([lps])
    old = log_prob - torch.tensor([log_ratios])
    _, grad, _ = grad_of("kl_cov", log_prob, old, torch.tensor([adv]), torch.ones(1, 4), kl_cov_ratio=0.5,
                         kl_cov_coef=0.7)  # fmt: skip
    r = [math.exp(x) for x in log_ratios]
    expected = [
        (-adv[i] * r[i] + (0.7 * math.copysign(1.0, log_ratios[i]) if i in top2 else 0.0)) / 4
        for i in range(4)
    ]
    torch.testing.assert_close(grad[0], torch.tensor(expected), rtol=2e-5, atol=1e-7)
    # a lone A = 0 token among equal log-probs: cov 0 everywhere, k = 1 still penalises one token
    loss, grad, _ = grad_of(
        "kl_cov", torch.tensor([[-1.0]]), torch.tensor([[-1.5]]), torch.tensor([0.0]), torch.ones(1, 1)
    )
    assert loss.item() == pytest.approx(0.5) and grad.item() == pytest.approx(1.0)


# ---------------------------------------------------------------- top-entropy selection


def trl_high_entropy_mask(entropies, mask, threshold):
    """TRL 1.16 GRPOTrainer.get_high_entropy_mask on one process, transcribed."""
    gathered = entropies[mask.bool()].float()
    if gathered.numel() == 0:
        return torch.zeros_like(entropies, dtype=torch.bool)
    entropy_threshold = torch.quantile(gathered, threshold)
    return (entropies * mask.float() >= entropy_threshold) & mask.bool()


@pytest.mark.parametrize("rho", [0.0, 0.2, 0.5, 0.9, 1.0])
def test_top_entropy_tokens_match_trl(rho):
    generator = torch.Generator().manual_seed(int(rho * 10))
    entropy = torch.rand(16, 23, generator=generator) * 3
    entropy[::2] = (entropy[::2] * 2).round() / 2  # ties
    mask = torch.arange(23) < torch.randint(0, 24, (16, 1), generator=generator)
    got = top_entropy_tokens(entropy, mask, rho)
    assert torch.equal(got, trl_high_entropy_mask(entropy, mask, 1 - rho))
    if rho == 1.0:
        assert torch.equal(got, mask)
    if rho == 0.0:
        assert torch.equal(got, (entropy == entropy[mask].max()) & mask)
    assert not top_entropy_tokens(entropy, torch.zeros_like(mask), rho).any()


def test_top_entropy_selection_zeroes_the_others_and_keeps_the_normaliser():
    # 5 tokens, grpo inside the trust region: w = r on the 2 highest-entropy tokens (rho 0.4), 0 elsewhere;
    # the token-mean still divides by all 5
    ratios = [1.1, 0.9, 1.05, 0.95, 1.0]
    entropy = torch.tensor([[0.1, 2.0, 0.3, 1.5, 0.2]])
    log_prob = torch.full((1, 5), -1.0)
    old = log_prob - torch.tensor([[math.log(r) for r in ratios]])
    advantages = torch.tensor([1.0])
    _, grad, metrics = grad_of("grpo", log_prob, old, advantages, torch.ones(1, 5), entropy=entropy,
                               top_entropy_quantile=0.4)  # fmt: skip
    torch.testing.assert_close(-grad[0] * 5, torch.tensor([0.0, 0.9, 0.0, 0.95, 0.0]))
    assert metrics["top_entropy_frac"] == pytest.approx(0.4)
    with pytest.raises(ValueError, match="pass entropy"):
        policy_loss("grpo", log_prob, old, advantages, torch.ones(1, 5), top_entropy_quantile=0.4)
    with pytest.raises(ValueError, match="top_entropy_quantile must be in"):
        policy_loss(
            "grpo", log_prob, old, advantages, torch.ones(1, 5), entropy=entropy, top_entropy_quantile=1.5
        )


# ---------------------------------------------------------------- off-policy sequence mask


def trl_off_policy_mask(advantages, per_token_logps, sampling_per_token_logps, mask, threshold):
    """TRL 1.16 GRPOTrainer.get_off_policy_mask, transcribed."""
    kl_div = torch.nan_to_num(sampling_per_token_logps - per_token_logps.detach(), nan=0.0)
    avg_seq_kl = (kl_div * mask).sum(dim=1, keepdim=True) / mask.sum(dim=1, keepdim=True).clamp(min=1.0)
    return ((advantages >= 0) | (avg_seq_kl <= threshold)).to(mask.dtype)


def test_off_policy_mask_drops_only_negative_drifted_responses():
    # mean log(pi_old / pi) per response over its valid tokens: 0.6, 0.6, 0.2, 0.6 (padding holds junk)
    drift = torch.tensor([[0.6, 0.6, 9.0], [0.6, 0.6, 0.6], [0.2, 0.2, 0.2], [0.9, 0.3, -5.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1], [1, 1, 1], [1, 1, 0]], dtype=torch.bool)
    old = torch.full((4, 3), -1.0)
    log_prob = old - drift
    advantages = torch.tensor([-1.0, 1.0, -1.0, -2.0])
    _, grad, metrics = grad_of("ppo", log_prob, old, advantages, mask, off_policy_mask_threshold=0.5)
    dropped = torch.tensor([True, False, False, True])
    assert torch.equal((grad == 0).all(dim=1), dropped)
    assert metrics["offpolicy_masked_frac"] == pytest.approx(0.5)
    # ppo keeps w = r for A > 0 with r < 1: the kept positive response's gradient is -A r / N
    torch.testing.assert_close(grad[1], torch.full((3,), -math.exp(-0.6) / 10))
    current = torch.where(mask, log_prob, 0.0)
    behaviour = torch.where(mask, old, 0.0)
    wide = advantages.unsqueeze(1).expand(4, 3)
    keep = off_policy_keep(wide, current, behaviour, mask, 0.5)
    trl = trl_off_policy_mask(advantages.unsqueeze(1), log_prob, old, mask.float(), 0.5)
    assert torch.equal(keep.all(dim=1), trl.squeeze(1).bool())


def test_aspo_composes_with_the_off_policy_mask_and_top_entropy():
    # aspo table (A > 0: 1/r inside, A < 0: r inside), then both terms drop tokens
    log_prob = torch.full((2, 3), -1.0)
    log_ratio = torch.tensor([[0.1, -0.1, 0.05], [-0.6, -0.6, -0.6]])  # row 1 drifted by 0.6 > 0.5
    old = log_prob - log_ratio
    advantages = torch.tensor([1.0, -1.0])
    entropy = torch.tensor([[0.5, 0.1, 0.9], [2.0, 2.0, 2.0]])
    mask = torch.ones(2, 3, dtype=torch.bool)
    kw = {"entropy": entropy, "clip_ratio_low": 0.5}  # lo = 0.5: row 1's r = e^-0.6 is inside the region
    _, grad, _ = grad_of("aspo", log_prob, old, advantages, mask, off_policy_mask_threshold=0.5,
                         top_entropy_quantile=0.5, **kw)  # fmt: skip
    # top half by entropy over all 6 tokens: threshold = median = 1.45 -> the three 2.0s are selected, but
    # row 1 is dropped by the mask; so no token keeps a gradient except none in row 0 (0.5, 0.1, 0.9 < 1.45)
    assert torch.equal(grad, torch.zeros(2, 3))
    _, grad, _ = grad_of("aspo", log_prob, old, advantages, mask, top_entropy_quantile=0.5, **kw)
    torch.testing.assert_close(grad[1] * 6, torch.full((3,), math.exp(-0.6)))  # -A w, A = -1, w = r
    torch.testing.assert_close(grad[0], torch.zeros(3))
    _, grad, _ = grad_of("aspo", log_prob, old, advantages, mask, off_policy_mask_threshold=0.5, **kw)
    torch.testing.assert_close(
        -grad[0] * 6, torch.exp(-log_ratio[0])
    )  # A = 1, w = 1/r, entropy split as usual
    torch.testing.assert_close(grad[1], torch.zeros(3))


# ---------------------------------------------------------------- entropy bonus


@pytest.mark.parametrize(("mode", "expected"), [
    ("token-mean", [[-0.1 / 5] * 3, [-0.1 / 5] * 2 + [0.0]]),
    ("seq-mean-token-mean", [[-0.1 / 6] * 3, [-0.1 / 4] * 2 + [0.0]]),
])  # fmt: skip
def test_entropy_bonus_gradient(mode, expected):
    entropy = torch.tensor([[0.5, 0.2, 0.1], [0.3, 0.4, float("nan")]], requires_grad=True)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]], dtype=torch.bool)
    bonus = entropy_bonus(entropy, mask, 0.1, mode)
    bonus.backward()
    torch.testing.assert_close(entropy.grad, torch.tensor(expected))
    value = -0.1 * (1.5 / 5 if mode == "token-mean" else (0.8 / 3 + 0.7 / 2) / 2)
    assert bonus.item() == pytest.approx(value)


def test_adaptive_entropy_coefficient_follows_skywork_or1():
    # target 0.2, step 0.005, bounds [0, 0.012]; entropies measured after each optimizer step
    coef, last, applied = 0.0, math.inf, []
    for entropy in (0.5, 0.19, 0.15, 0.1, 0.18, 0.3, 0.25, 0.21):
        applied.append(applied_entropy_coef(coef, last, 0.2))
        coef = adapted_entropy_coef(coef, entropy, target=0.2, delta=0.005, coef_min=0.0, coef_max=0.012)
        last = entropy
    # coefficients after each step: 0, .005, .01, .012, .012, .007, .002, 0; applied only when the
    # previous entropy was <= 0.2
    assert applied == pytest.approx([0.0, 0.0, 0.005, 0.01, 0.012, 0.012, 0.0, 0.0])
    assert coef == 0.0
