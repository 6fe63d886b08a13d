import torch

from aspo.batch import keep_groups
from aspo.config import load_config


def test_group_filter_rules():
    rewards = torch.tensor(
        [
            [0.0, 0.0, 0.0],  # all wrong
            [1.0, 1.0, 1.0],  # all right
            [0.0, 1.0, 0.0],  # mixed
            [-0.5, -0.5, -0.5],  # all equal after the overlong penalty
            [0.5, 0.5, 0.5],
        ]
    )  # all equal partial credit
    assert keep_groups(rewards, "zero_variance").tolist() == [False, False, True, False, False]
    assert keep_groups(rewards, "all_0_or_1").tolist() == [False, False, True, True, True]


def test_recipe_keys_are_checked():
    import pytest

    from aspo.errors import UserError

    for bad, key in (
        ("algorithm.filter_rule=some", "algorithm.filter_rule"),
        ("train.warmup_unit=epochs", "train.warmup_unit"),
        ("train.mini_batch_size=-1", "train.mini_batch_size"),
    ):
        with pytest.raises(UserError, match=key):
            load_config(None, [bad]).validate()
