"""Advantage estimators on hand-computed groups."""

from __future__ import annotations

import math

import pytest
import torch

from aspo.advantages import ADVANTAGES, compute_advantages, register_advantage

# groups: id 7 -> rewards [1, 0, 0, 1]; id 2 -> [1, 1]; id 5 -> [0.5] (alone); id 9 -> [0, 1, 0]
REWARDS = torch.tensor([1.0, 1.0, 0.0, 0.5, 0.0, 1.0, 1.0, 0.0, 1.0, 0.0])
GROUPS = torch.tensor([7, 2, 7, 5, 7, 7, 2, 9, 9, 9])


def close(got, expected):
    torch.testing.assert_close(got, torch.tensor(expected, dtype=torch.float32), rtol=1e-5, atol=1e-6)


def test_grpo_group_mean_over_unbiased_std():
    std4 = math.sqrt(4 * 0.25 / 3)  # [1,0,0,1]: mean 0.5, unbiased std
    std3 = math.sqrt((2 * (1 / 3) ** 2 + (2 / 3) ** 2) / 2)  # [0,1,0]
    eps = 1e-6
    expected = [
        0.5 / (std4 + eps), 0.0, -0.5 / (std4 + eps), 0.0, -0.5 / (std4 + eps),
        0.5 / (std4 + eps), 0.0, -(1 / 3) / (std3 + eps), (2 / 3) / (std3 + eps), -(1 / 3) / (std3 + eps),
    ]  # fmt: skip
    close(compute_advantages("grpo", REWARDS, GROUPS), expected)  # all-equal group [1, 1]: 0, not NaN


def test_grpo_without_std_equals_dr_grpo():
    expected = [0.5, 0.0, -0.5, 0.0, -0.5, 0.5, 0.0, -1 / 3, 2 / 3, -1 / 3]
    close(compute_advantages("grpo", REWARDS, GROUPS, norm_by_std=False), expected)
    close(compute_advantages("dr_grpo", REWARDS, GROUPS), expected)


def test_grpo_eps_parameter():
    rewards, groups = torch.tensor([0.0, 1.0]), torch.tensor([0, 0])
    std = math.sqrt(0.5)
    close(compute_advantages("grpo", rewards, groups, eps=0.5), [-0.5 / (std + 0.5), 0.5 / (std + 0.5)])


def test_rloo_leave_one_out_mean():
    expected = [
        1 - 1 / 3, 0.0, 0 - 2 / 3, 0.0, 0 - 2 / 3, 1 - 1 / 3, 0.0, 0 - 0.5, 1 - 0.0, 0 - 0.5,
    ]  # fmt: skip
    close(compute_advantages("rloo", REWARDS, GROUPS), expected)


def test_reinforce_plus_plus_baseline_whitens_over_the_batch():
    centred = torch.tensor([0.5, 0.0, -0.5, 0.0, -0.5, 0.5, 0.0, -1 / 3, 2 / 3, -1 / 3])
    expected = (centred - centred.mean()) / torch.sqrt(centred.var() + 1e-8)
    expected[3] = 0.0  # the lone response stays 0
    got = compute_advantages("reinforce_plus_plus_baseline", REWARDS, GROUPS)
    torch.testing.assert_close(got, expected)
    assert got.mean().item() == pytest.approx(0.0, abs=1e-6)
    assert got.std().item() == pytest.approx(1.0, rel=1e-5)


def test_single_response_groups_get_zero():
    rewards = torch.tensor([1.0, 0.0, 0.3])
    groups = torch.tensor([0, 1, 2])
    for name in ADVANTAGES:
        assert compute_advantages(name, rewards, groups).tolist() == [0.0, 0.0, 0.0], name


def test_group_ids_need_not_be_sorted_or_contiguous():
    got = compute_advantages("grpo", torch.tensor([1.0, 0.0, 0.0, 1.0]), torch.tensor([100, -3, 100, -3]))
    k = 0.5 / (math.sqrt(0.5) + 1e-6)  # groups {100: [1, 0], -3: [0, 1]}
    close(got, [k, -k, -k, k])


def test_bad_input():
    with pytest.raises(ValueError, match="valid names: dr_grpo, grpo"):
        compute_advantages("gae", REWARDS, GROUPS)
    with pytest.raises(ValueError, match="group_ids has shape"):
        compute_advantages("grpo", REWARDS, GROUPS[:3])
    with pytest.raises(ValueError, match="rewards must be 1-D"):
        compute_advantages("grpo", REWARDS.reshape(2, 5), GROUPS.reshape(2, 5))
    with pytest.raises(ValueError, match="group_ids must hold integers"):
        compute_advantages("grpo", REWARDS, GROUPS.float())
    with pytest.raises(ValueError, match="rewards holds NaN"):
        compute_advantages("grpo", torch.tensor([float("nan"), 1.0]), torch.tensor([0, 0]))
    with pytest.raises(ValueError, match="norm_by_sd"):
        compute_advantages("grpo", REWARDS, GROUPS, norm_by_sd=False)


def test_register_advantage():
    @register_advantage("test_raw")
    def raw(rewards, group_ids):
        return rewards.clone()

    try:
        close(compute_advantages("test_raw", [1.0, 2.0], [0, 0]), [1.0, 2.0])
    finally:
        del ADVANTAGES["test_raw"]
