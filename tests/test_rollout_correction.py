"""Rollout correction: the importance weights and mismatch metrics against hand-computed values, the
weights entering the policy loss, and the config rules."""

import math

import pytest
import torch

from aspo.config import load_config
from aspo.errors import UserError
from aspo.objectives import policy_loss
from aspo.objectives.rollout_correction import correction_weights, mismatch_metrics

# two responses; row 0 has 3 tokens, row 1 has 2 (and one padding position holding garbage)
# per-token ratios pi_old / mu: row 0: 1.5, 0.5, 1.0; row 1: 3.0, 0.8
RHO = [[1.5, 0.5, 1.0], [3.0, 0.8, 1.0]]
MASK = torch.tensor([[True, True, True], [True, True, False]])
SAMPLER = torch.tensor([[-1.0, -2.0, -0.5], [-0.3, -1.2, 7.0]])
TRAINER = SAMPLER + torch.log(torch.tensor(RHO))
TRAINER[1, 2] = -99.0  # padding: never read


@pytest.mark.parametrize(
    "mode, low, high, want",
    [
        ("none", 0.0, 2.0, [[1, 1, 1], [1, 1, 0]]),
        ("token_truncate", 0.0, 2.0, [[1.5, 0.5, 1.0], [2.0, 0.8, 0]]),
        ("token_truncate", 0.6, 2.0, [[1.5, 0.6, 1.0], [2.0, 0.8, 0]]),
        ("token_mask", 0.0, 2.0, [[1.5, 0.5, 1.0], [0.0, 0.8, 0]]),
        ("token_mask", 0.6, 2.0, [[1.5, 0.0, 1.0], [0.0, 0.8, 0]]),
        # sequence level: the product of the response's ratios, 0.75 and 2.4
        ("sequence_truncate", 0.0, 2.0, [[0.75] * 3, [2.0, 2.0, 0]]),
        ("sequence_truncate", 0.8, 3.0, [[0.8] * 3, [2.4, 2.4, 0]]),
        ("sequence_mask", 0.0, 2.0, [[0.75] * 3, [0.0, 0.0, 0]]),
        ("sequence_mask", 0.8, 3.0, [[0.0] * 3, [2.4, 2.4, 0]]),
    ],
)
def test_weights_match_hand_computed_values(mode, low, high, want):
    got = correction_weights(SAMPLER, TRAINER, MASK, mode, low, high)
    assert got.dtype == torch.float32 and not got.requires_grad
    assert torch.allclose(got, torch.tensor(want, dtype=torch.float32), atol=1e-6)


def test_metrics_match_hand_computed_values():
    rho = [1.5, 0.5, 1.0, 3.0, 0.8]
    deltas = [math.log(r) for r in rho]
    got = mismatch_metrics(SAMPLER, TRAINER, MASK)
    want = {
        "logprob_diff": sum(deltas) / 5,
        "logprob_abs_diff": sum(abs(d) for d in deltas) / 5,
        "logprob_abs_diff_max": math.log(3.0),
        "kl": -sum(deltas) / 5,
        "k3_kl": sum(r - math.log(r) - 1 for r in rho) / 5,
        "chi2_token": sum(r * r for r in rho) / 5 - 1,  # 1.628
        "seq_log_ratio_abs": (abs(math.log(0.75)) + abs(math.log(2.4))) / 2,
    }
    assert got.keys() == want.keys()
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key


@pytest.mark.parametrize(
    "mode, key, frac, mean",
    [
        ("token_truncate", "truncated_frac", 1 / 5, (1.5 + 0.5 + 1.0 + 2.0 + 0.8) / 5),
        ("token_mask", "masked_frac", 1 / 5, (1.5 + 0.5 + 1.0 + 0.8) / 5),
        ("sequence_mask", "masked_frac", 2 / 5, 0.75 * 3 / 5),
        ("sequence_truncate", "truncated_frac", 2 / 5, (0.75 * 3 + 2.0 * 2) / 5),
    ],
)
def test_fraction_truncated_or_masked(mode, key, frac, mean):
    got = mismatch_metrics(SAMPLER, TRAINER, MASK, mode, 0.0, 2.0)
    assert got[key] == pytest.approx(frac) and got["weight_mean"] == pytest.approx(mean, rel=1e-6)


def test_equal_log_probs_give_zero_gap_and_unit_weights():
    got = mismatch_metrics(SAMPLER, SAMPLER, MASK, "sequence_mask", 0.5, 2.0)
    assert got["logprob_abs_diff"] == got["kl"] == got["k3_kl"] == got["masked_frac"] == 0.0
    assert got["chi2_token"] == pytest.approx(0.0, abs=1e-7) and got["weight_mean"] == 1.0
    assert mismatch_metrics(SAMPLER, TRAINER, torch.zeros_like(MASK)) == {}


def test_an_extreme_ratio_stays_finite():
    sampler = torch.tensor([[-200.0, -1.0]])
    trainer = torch.tensor([[-0.1, -1.0]])  # log ratio ~200: exp overflows float32 unbounded
    mask = torch.ones(1, 2, dtype=torch.bool)
    for mode in ("token_truncate", "sequence_truncate"):
        assert torch.equal(
            correction_weights(sampler, trainer, mask, mode, 0.0, 2.0),
            torch.tensor([[2.0, 1.0 if mode[0] == "t" else 2.0]]),
        )
    metrics = mismatch_metrics(sampler, trainer, mask, "token_mask")
    assert all(math.isfinite(v) for v in metrics.values()) and metrics["masked_frac"] == 0.5


def test_weights_scale_each_tokens_loss_and_gradient():
    """policy_loss(token_weights=w): value and gradient per token are w times the unweighted ones, and
    the normaliser (token count) is unchanged."""
    g = torch.Generator().manual_seed(0)
    old = -torch.rand(2, 3, generator=g)
    current = old + 0.1 * torch.randn(2, 3, generator=g)
    adv = torch.tensor([1.0, -0.5])
    weights = correction_weights(SAMPLER, TRAINER, MASK, "token_truncate", 0.0, 2.0)
    for loss_name in ("aspo", "grpo"):
        lp = current.clone().requires_grad_()
        plain, _ = policy_loss(loss_name, lp, old, adv, MASK, loss_agg_mode="token-mean")
        (g_plain,) = torch.autograd.grad(plain, lp)
        lp = current.clone().requires_grad_()
        weighted, _ = policy_loss(
            loss_name, lp, old, adv, MASK, token_weights=weights, loss_agg_mode="token-mean"
        )
        (g_weighted,) = torch.autograd.grad(weighted, lp)
        assert torch.allclose(g_weighted, g_plain * weights, atol=1e-7)
        assert not torch.allclose(g_weighted, g_plain)
    with pytest.raises(UserError, match="token_weights"):
        policy_loss("grpo", current, old, adv, MASK, token_weights=weights[:, :2])


@pytest.mark.parametrize(
    "overrides, needle",
    [
        (["rollout.correction=tis"], "rollout.correction='tis' must be one of none, token_truncate"),
        (
            ["rollout.correction=token_mask", "rollout.recompute_logprobs=false"],
            "needs rollout.recompute_logprobs=auto or true",
        ),
        (["rollout.correction=token_mask", "rollout.correction_high=0.5"], "0 <= low <= 1 <= high"),
        (["rollout.correction=token_mask", "rollout.correction_low=-1"], "0 <= low <= 1 <= high"),
    ],
)
def test_bad_correction_settings_are_one_clear_message(overrides, needle):
    with pytest.raises(UserError, match=needle.replace("(", r"\(")):
        load_config(None, overrides).validate()


def test_a_correction_turns_the_recompute_on():
    assert not load_config(None, []).recomputes_logprobs()  # hf in fp32: the sampler's are the trainer's
    assert load_config(None, []).recomputes_logprobs("bf16")  # its decode rounds otherwise in bf16
    assert load_config(None, ["rollout.correction=sequence_mask"]).recomputes_logprobs()
    assert load_config(None, ["rollout.engine=vllm"]).recomputes_logprobs()
    # `false` on the command line is YAML's boolean: read as the word
    off = load_config(None, ["rollout.engine=vllm", "rollout.recompute_logprobs=false"])
    assert off.rollout.recompute_logprobs == "false" and not off.recomputes_logprobs("bf16")
