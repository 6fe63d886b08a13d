"""Hypothesis properties of policy_loss: padding invariance, aggregation scaling, finite gradients."""

from __future__ import annotations

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from aspo.objectives import POLICY_LOSSES, policy_loss

NAMES = sorted(POLICY_LOSSES)
AGG_MODES = ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"]


@st.composite
def batches(draw, max_gap: float = 3.0):
    """A random (B, T) batch: valid tokens with log-prob gaps in [-max_gap, max_gap], padding at the end."""
    batch = draw(st.integers(1, 4))
    length = draw(st.integers(1, 6))
    seed = draw(st.integers(0, 2**31 - 1))
    generator = torch.Generator().manual_seed(seed)
    old = -torch.rand(batch, length, generator=generator) * 5
    gap = (torch.rand(batch, length, generator=generator) * 2 - 1) * max_gap
    log_prob = old + gap
    lengths = torch.tensor(draw(st.lists(st.integers(0, length), min_size=batch, max_size=batch)))
    mask = torch.arange(length) < lengths.unsqueeze(1)
    advantages = torch.randn(batch, length, generator=generator).round(decimals=1)  # some exact zeros
    if draw(st.booleans()):
        advantages = advantages[:, 0]
    entropy = torch.rand(batch, length, generator=generator) * 2
    return {
        "log_prob": log_prob,
        "old_log_prob": old,
        "advantages": advantages,
        "response_mask": mask,
    }, entropy


def run(name, inputs, entropy=None, **params):
    log_prob = inputs["log_prob"].clone().requires_grad_(True)
    draws = torch.Generator().manual_seed(0)  # clip_cov's draw: the same in every call
    loss, metrics = policy_loss(name, log_prob, **{k: v for k, v in inputs.items() if k != "log_prob"},
                                entropy=entropy, generator=draws, **params)  # fmt: skip
    loss.backward()
    return loss.detach(), log_prob.grad, metrics


finite_junk = st.floats(-1e30, 1e30, allow_nan=False, allow_infinity=False)


# the composable terms (top-entropy selection, off-policy mask): off, each, both
TERMS = [{}, {"top_entropy_quantile": 0.3}, {"off_policy_mask_threshold": 0.2},
         {"top_entropy_quantile": 0.5, "off_policy_mask_threshold": 0.0}]  # fmt: skip


@settings(max_examples=80, deadline=None)
@given(
    batches(),
    st.sampled_from(NAMES),
    st.sampled_from(AGG_MODES),
    finite_junk,
    finite_junk,
    finite_junk,
    st.sampled_from(TERMS),
)
def test_padding_values_never_change_loss_or_gradients(drawn, name, mode, junk_lp, junk_old, junk_adv, terms):
    inputs, entropy = drawn
    padding = ~inputs["response_mask"]
    dirty = dict(inputs)
    dirty["log_prob"] = inputs["log_prob"].masked_fill(padding, junk_lp)
    dirty["old_log_prob"] = inputs["old_log_prob"].masked_fill(padding, junk_old)
    if inputs["advantages"].dim() == 2:
        dirty["advantages"] = inputs["advantages"].masked_fill(padding, junk_adv)
    dirty_entropy = entropy.masked_fill(padding, abs(junk_adv))
    clean_loss, clean_grad, clean_metrics = run(name, inputs, entropy, loss_agg_mode=mode, **terms)
    dirty_loss, dirty_grad, dirty_metrics = run(name, dirty, dirty_entropy, loss_agg_mode=mode, **terms)
    assert torch.equal(clean_loss, dirty_loss)
    assert torch.equal(clean_grad, dirty_grad)
    assert torch.equal(dirty_grad[padding], torch.zeros_like(dirty_grad[padding]))
    assert clean_metrics.keys() == dirty_metrics.keys()
    for key, value in clean_metrics.items():
        assert math.isclose(value, dirty_metrics[key], rel_tol=1e-6, abs_tol=1e-6), key


@settings(max_examples=60, deadline=None)
@given(batches(), st.sampled_from(NAMES))
def test_aggregation_modes_scale_as_documented(drawn, name):
    inputs, _ = drawn
    mask = inputs["response_mask"]
    batch, length = mask.shape
    n_valid = int(mask.sum())
    token_mean, token_mean_grad, _ = run(name, inputs, loss_agg_mode="token-mean")
    seq_sum, seq_sum_grad, _ = run(name, inputs, loss_agg_mode="seq-mean-token-sum")
    seq_norm, seq_norm_grad, _ = run(name, inputs, loss_agg_mode="seq-mean-token-sum-norm")
    seq_mean, seq_mean_grad, _ = run(name, inputs, loss_agg_mode="seq-mean-token-mean")
    # every mode is (sum of per-token terms) / normaliser; token-mean's normaliser is the valid count
    total = token_mean * max(n_valid, 1)
    torch.testing.assert_close(seq_sum * batch, total, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(seq_norm * batch * length, total, rtol=1e-5, atol=1e-5)
    per_token_total_grad = token_mean_grad * max(n_valid, 1)
    torch.testing.assert_close(seq_sum_grad * batch, per_token_total_grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(seq_norm_grad * batch * length, per_token_total_grad, rtol=1e-5, atol=1e-6)
    row_counts = mask.sum(dim=-1, keepdim=True).clamp(min=1)
    torch.testing.assert_close(seq_mean_grad * batch * row_counts, per_token_total_grad, rtol=1e-5, atol=1e-6)


@settings(max_examples=60, deadline=None)
@given(batches(max_gap=60.0), st.sampled_from(NAMES), st.sampled_from(AGG_MODES), st.booleans())
def test_large_log_prob_gaps_give_finite_loss_and_gradients(drawn, name, mode, with_entropy):
    inputs, entropy = drawn
    loss, grad, metrics = run(name, inputs, entropy if with_entropy else None, loss_agg_mode=mode)
    assert torch.isfinite(loss)
    assert torch.isfinite(grad).all()
    assert all(math.isfinite(v) for v in metrics.values())


def test_extreme_gaps_in_every_region():
    gaps = torch.tensor([[60.0, -60.0, 25.0, -25.0, 60.0, -60.0]])
    old = torch.full((1, 6), -30.0)
    advantages = torch.tensor([[1.0, 1.0, -1.0, -1.0, -1.0, 1.0]])
    for name in NAMES:
        loss, grad, _ = run(name, {"log_prob": old + gaps, "old_log_prob": old, "advantages": advantages,
                                   "response_mask": torch.ones(1, 6)})  # fmt: skip
        assert torch.isfinite(loss) and torch.isfinite(grad).all(), name
    # aspo's soft dual clips keep weight c even beyond the +-20 clamp of the log-ratio
    _, grad, _ = run("aspo", {"log_prob": old + gaps, "old_log_prob": old, "advantages": advantages,
                              "response_mask": torch.ones(1, 6)})  # fmt: skip
    torch.testing.assert_close(-grad[0] * 6 / advantages[0], torch.tensor([0.0, 3.0, 3.0, 0.0, 3.0, 3.0]))
