"""aspo.integrations.verl against the real verl package (run in .venv-verl by `make test-verl`).

verl pins an older transformers than the main environment, so this directory is skipped there.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

core_algos = pytest.importorskip(
    "verl.trainer.ppo.core_algos", reason="verl runs in .venv-verl: make test-verl"
)

from verl.workers.config import ActorConfig, PolicyLossConfig  # noqa: E402

# verl's own entries, captured before the plug-in is imported here (it may already be loaded through the
# verl.plugins entry point; these are the module-level functions either way).
VERL_OWN = {
    name: fn for name, fn in core_algos.POLICY_LOSS_REGISTRY.items() if fn.__module__ == core_algos.__name__
}

import aspo.integrations.verl as plugin  # noqa: E402
from aspo.objectives import POLICY_LOSSES, policy_loss  # noqa: E402

VERL_AGG_MODES = (
    "token-mean",
    "token-sum",
    "seq-mean-token-sum",
    "seq-mean-token-mean",
    "seq-mean-token-sum-norm",
)


def actor_config(loss_mode: str = "aspo", **overrides) -> ActorConfig:
    """verl's real actor config (its dataclass, as the FSDP / Megatron workers receive it)."""
    settings = dict(
        strategy="fsdp",
        rollout_n=4,
        ppo_micro_batch_size_per_gpu=2,
        clip_ratio_low=0.2,
        clip_ratio_high=0.28,
        clip_ratio_c=3.0,
        policy_loss=PolicyLossConfig(loss_mode=loss_mode),
    )
    settings.update(overrides)
    return ActorConfig(**settings)


def make_batch(seed: int = 0, rows: int = 6, length: int = 9):
    """Tensors as verl hands them to a policy loss: (B, T) token-level advantages, a 0/1 response mask.

    log-ratios spread over [-1.6, 1.6] so every region (clips, both dual clips) holds tokens."""
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([9, 4, 7, 1, 6, 8])[:rows]
    mask = (torch.arange(length).unsqueeze(0) < lengths.unsqueeze(1)).float()
    old_log_prob = -torch.rand(rows, length, generator=generator) * 3.0
    log_ratio = (torch.rand(rows, length, generator=generator) * 2 - 1) * 1.6
    log_prob = (old_log_prob + log_ratio).clamp(max=0.0)
    signs = torch.tensor([1.0, -1.0, 1.0, -1.0, -1.0, 1.0])[:rows]
    advantages = (
        (signs * (0.3 + torch.rand(rows, generator=generator))).unsqueeze(1).expand(rows, length).clone()
    )
    return old_log_prob, log_prob, advantages, mask


def verl_loss_and_grad(loss_mode, batch, loss_agg_mode, config, rollout_is_weights=None):
    old_log_prob, log_prob, advantages, mask = batch
    log_prob = log_prob.clone().requires_grad_(True)
    fn = core_algos.get_policy_loss_fn(loss_mode)
    loss, metrics = fn(
        old_log_prob=old_log_prob,
        log_prob=log_prob,
        advantages=advantages,
        response_mask=mask,
        loss_agg_mode=loss_agg_mode,
        config=config,
        rollout_is_weights=rollout_is_weights,
    )
    (grad,) = torch.autograd.grad(loss, log_prob)
    return loss.detach(), grad, metrics


def test_import_registers_our_objectives_and_keeps_verls() -> None:
    assert set(VERL_OWN) >= {"vanilla", "gspo", "sapo", "cispo"}
    for name, fn in VERL_OWN.items():
        assert core_algos.get_policy_loss_fn(name) is fn, f"verl's {name} was replaced"
    expected = set(POLICY_LOSSES) - set(VERL_OWN)
    assert {"aspo", "grpo", "dapo"} <= expected
    assert set(plugin.REGISTERED) == expected
    for name in expected:
        assert core_algos.get_policy_loss_fn(name).__module__ == plugin.__name__
    assert plugin.register_all() == plugin.REGISTERED  # idempotent


@pytest.mark.parametrize("name", sorted(set(POLICY_LOSSES) - set(VERL_OWN)))
def test_gradient_equals_native_objective(name: str) -> None:
    """Through verl's registry and its ActorConfig, token-mean on one rank: the native objective exactly."""
    batch = make_batch()
    old_log_prob, log_prob, advantages, mask = batch
    loss, grad, metrics = verl_loss_and_grad(name, batch, "token-mean", actor_config(name))

    native_log_prob = log_prob.clone().requires_grad_(True)
    expected, native_metrics = policy_loss(
        name,
        native_log_prob,
        old_log_prob,
        advantages,
        mask,
        clip_ratio_low=0.2,
        clip_ratio_high=0.28,
        clip_ratio_c=3.0,
    )
    (expected_grad,) = torch.autograd.grad(expected, native_log_prob)
    torch.testing.assert_close(loss, expected.detach(), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-6, atol=1e-9)
    assert metrics == {f"actor/{key}": value for key, value in native_metrics.items()}
    if name == "aspo":  # the batch really exercises the regions that distinguish aspo
        assert metrics["actor/dualclip/pos"] > 0 and metrics["actor/dualclip/neg"] > 0
        assert metrics["actor/clipfrac/pos"] > 0 and metrics["actor/clipfrac/neg"] > 0


def test_clip_ranges_come_from_actor_config() -> None:
    batch = make_batch()
    narrow, _, _ = verl_loss_and_grad("aspo", batch, "token-mean", actor_config(clip_ratio_high=0.05))
    wide, _, _ = verl_loss_and_grad("aspo", batch, "token-mean", actor_config(clip_ratio_high=0.5))
    native_wide, _ = policy_loss(
        "aspo",
        *(batch[1], batch[0], batch[2], batch[3]),
        clip_ratio_low=0.2,
        clip_ratio_high=0.5,
        clip_ratio_c=3.0,
    )
    assert not torch.allclose(narrow, wide)
    torch.testing.assert_close(wide, native_wide, rtol=1e-6, atol=1e-7)
    _, _, soft_c = verl_loss_and_grad("aspo", batch, "token-mean", actor_config(clip_ratio_c=1.5))
    _, _, default_c = verl_loss_and_grad("aspo", batch, "token-mean", actor_config())
    assert soft_c["actor/dualclip/neg"] > default_c["actor/dualclip/neg"]


GLOBAL_BATCH_INFOS = [
    {},  # one rank, local normalisation
    {"dp_size": 2, "batch_num_tokens": 61, "global_batch_size": 12, "loss_scale_factor": None},
    {"dp_size": 4, "batch_num_tokens": 140, "global_batch_size": 24, "loss_scale_factor": 16},
]


@pytest.mark.parametrize("loss_agg_mode", VERL_AGG_MODES)
@pytest.mark.parametrize("batch_info", GLOBAL_BATCH_INFOS, ids=["local", "dp2", "dp4-scaled"])
@pytest.mark.parametrize("with_rollout_weights", [False, True], ids=["plain", "rollout-is"])
def test_verl_vanilla_equals_our_grpo(loss_agg_mode, batch_info, with_rollout_weights) -> None:
    """Control: verl's own vanilla (PPO-clip + hard dual clip, verl's own agg_loss) and our grpo through the
    plug-in give the same loss and gradient in every aggregation mode, with verl's global batch sizes and
    with rollout-correction weights."""
    batch = make_batch(seed=1)
    weights = None
    if with_rollout_weights:
        weights = torch.rand(batch[0].shape, generator=torch.Generator().manual_seed(2)) * 2.0
        weights[0, :3] = 0.0  # truncated-away tokens
    results = []
    for mode in ("vanilla", "grpo"):
        config = actor_config(mode, loss_agg_mode=loss_agg_mode)
        config.global_batch_info.update(batch_info)
        results.append(verl_loss_and_grad(mode, batch, loss_agg_mode, config, rollout_is_weights=weights))
    (verl_loss, verl_grad, verl_metrics), (our_loss, our_grad, our_metrics) = results
    torch.testing.assert_close(our_loss, verl_loss, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(our_grad, verl_grad, rtol=1e-5, atol=1e-9)
    assert our_metrics["actor/ppo_kl"] == pytest.approx(verl_metrics["actor/ppo_kl"], rel=1e-5, abs=1e-7)


def test_aspo_differs_from_vanilla_where_the_paper_says() -> None:
    """Sanity of the control above: the same batch through aspo gives a different gradient, and only on
    tokens whose ASPO weight differs from PPO's (positive tokens, negative tokens past the dual clip)."""
    batch = make_batch(seed=1)
    old_log_prob, log_prob, advantages, mask = batch
    config = actor_config("vanilla")
    _, vanilla_grad, _ = verl_loss_and_grad("vanilla", batch, "token-mean", config)
    _, aspo_grad, _ = verl_loss_and_grad("aspo", batch, "token-mean", config)
    ratio = torch.exp(log_prob - old_log_prob)
    same_rule = (advantages < 0) & (ratio <= 3.0) & mask.bool()
    torch.testing.assert_close(aspo_grad[same_rule], vanilla_grad[same_rule])
    assert not torch.allclose(
        aspo_grad[(advantages > 0) & mask.bool()], vanilla_grad[(advantages > 0) & mask.bool()]
    )


def test_verl_external_modules_variable_loads_the_plugin() -> None:
    """verl's documented hook: VERL_USE_EXTERNAL_MODULES imports the module in each process importing verl."""
    env = {
        **os.environ,
        "VERL_USE_EXTERNAL_MODULES": "aspo.integrations.verl",
        "VERL_USE_EXTERNAL_PLUGINS": "none",
    }
    code = "import verl.trainer.ppo.core_algos as c; print(c.get_policy_loss_fn('aspo').__module__)"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "aspo.integrations.verl"


def actor_micro_batch(
    batch, prompt_len: int = 3, dp_size: int = 1, batch_num_tokens=None, global_batch_size=None
):
    """What verl's engine hands its actor loss: a TensorDict with padded prompts / responses and the global
    batch sizes as non-tensor data, plus the model output -- log-probs packed over the non-padding tokens."""
    from tensordict import NonTensorData, TensorDict

    old_log_prob, log_prob, advantages, mask = batch
    rows, length = mask.shape
    attention_mask = torch.cat([torch.ones(rows, prompt_len), mask], dim=1).long()
    data = TensorDict(
        {
            "prompts": torch.zeros(rows, prompt_len, dtype=torch.long),
            "responses": torch.zeros(rows, length, dtype=torch.long),
            "attention_mask": attention_mask,
            "response_mask": mask,
            "old_log_probs": old_log_prob,
            "advantages": advantages,
        },
        batch_size=[rows],
    )
    for key, value in (
        ("dp_size", dp_size),
        ("batch_num_tokens", batch_num_tokens),
        ("global_batch_size", global_batch_size),
    ):
        data[key] = NonTensorData(value)
    # packed model output: the log-prob of token i+1 sits at position i of each sequence
    log_prob = log_prob.clone().requires_grad_(True)
    packed = []
    for row in range(rows):
        response_len = int(mask[row].sum())
        sequence = torch.zeros(prompt_len + response_len)
        sequence = sequence.index_put(
            (torch.arange(prompt_len - 1, prompt_len - 1 + response_len),), log_prob[row, :response_len]
        )
        packed.append(sequence)
    return data, {"log_probs": torch.cat(packed)}, log_prob


@pytest.mark.parametrize("dp_size, batch_num_tokens, global_batch_size", [(1, None, None), (2, 70, 12)])
def test_through_verl_actor_loss_function(dp_size, batch_num_tokens, global_batch_size) -> None:
    """verl's own call site (verl.workers.utils.losses.ppo_loss, used by its FSDP / Megatron engines) picks
    our loss by config.policy_loss.loss_mode and fills global_batch_info itself."""
    from verl.workers.utils.losses import ppo_loss

    batch = make_batch(seed=3)
    results = {}
    for mode in ("vanilla", "grpo", "aspo"):
        config = actor_config(mode, loss_agg_mode="token-mean")
        data, model_output, log_prob = actor_micro_batch(
            batch, dp_size=dp_size, batch_num_tokens=batch_num_tokens, global_batch_size=global_batch_size
        )
        loss, metrics = ppo_loss(config, model_output, data)
        (grad,) = torch.autograd.grad(loss, log_prob)
        results[mode] = (loss.detach(), grad, metrics)
    torch.testing.assert_close(results["grpo"][0], results["vanilla"][0], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(results["grpo"][1], results["vanilla"][1], rtol=1e-5, atol=1e-9)
    assert "actor/dualclip/pos" in results["aspo"][2]

    old_log_prob, log_prob, advantages, mask = batch
    native_log_prob = log_prob.clone().requires_grad_(True)
    expected, _ = policy_loss(
        "aspo",
        native_log_prob,
        old_log_prob,
        advantages,
        mask,
        clip_ratio_low=0.2,
        clip_ratio_high=0.28,
        clip_ratio_c=3.0,
    )
    # verl's token-mean over the global batch: local token sum / global tokens * dp_size
    local_tokens = float(mask.sum())
    expected = expected * (local_tokens / (batch_num_tokens or local_tokens) * dp_size)
    (expected_grad,) = torch.autograd.grad(expected, native_log_prob)
    torch.testing.assert_close(results["aspo"][0], expected.detach(), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(results["aspo"][1], expected_grad * mask, rtol=1e-6, atol=1e-9)


def test_entry_point_loads_plugin_on_import_verl() -> None:
    """With aspo's `verl.plugins` entry point installed, a bare `import verl` (driver or Ray worker) registers
    our losses -- no environment variable needed."""
    from importlib.metadata import entry_points

    declared = [ep for ep in entry_points(group="verl.plugins") if ep.value == "aspo.integrations.verl"]
    if not declared:
        pytest.skip("this aspo install declares no verl.plugins entry point (pyproject.toml)")
    env = {**os.environ, "VERL_USE_EXTERNAL_PLUGINS": "auto"}
    env.pop("VERL_USE_EXTERNAL_MODULES", None)
    code = "import verl.trainer.ppo.core_algos as c; print(c.get_policy_loss_fn('aspo').__module__)"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "aspo.integrations.verl"


def _wide_batch(seed: int):
    """(B, T) = (8, 40) with token-level spread in log-probs, so several tokens pass the covariance band."""
    generator = torch.Generator().manual_seed(seed)
    old_log_prob = -torch.rand(8, 40, generator=generator) * 6.0
    log_prob = old_log_prob + (torch.rand(8, 40, generator=generator) * 2 - 1) * 0.5
    mask = (torch.arange(40) < torch.randint(5, 41, (8, 1), generator=generator)).float()
    advantages = (torch.randn(8, generator=generator) * 2).unsqueeze(1).expand(8, 40).clone()
    return old_log_prob, log_prob, advantages, mask


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("loss_agg_mode", ["token-mean", "seq-mean-token-mean"])
@pytest.mark.parametrize(
    ("loss_mode", "verl_settings", "our_params"),
    [
        ("clip_cov", {"clip_cov_ratio": 0.02}, {"clip_cov_ratio": 0.02}),
        ("clip_cov", {"clip_cov_ratio": 0.0002, "clip_cov_lb": 0.5, "clip_cov_ub": 8.0},
         {"clip_cov_ratio": 0.0002, "clip_cov_lb": 0.5, "clip_cov_ub": 8.0}),
        ("kl_cov", {"kl_cov_ratio": 0.05, "ppo_kl_coef": 1.0}, {"kl_cov_ratio": 0.05, "kl_cov_coef": 1.0}),
        ("kl_cov", {"kl_cov_ratio": 2e-4, "ppo_kl_coef": 0.1}, {"kl_cov_ratio": 2e-4, "kl_cov_coef": 0.1}),
    ],
)  # fmt: skip
def test_verl_own_clip_cov_and_kl_cov_equal_ours(
    seed, loss_agg_mode, loss_mode, verl_settings, our_params
) -> None:
    """Control: verl ships clip_cov and kl_cov (so the plug-in leaves them alone); its own functions and
    aspo.objectives' give the same loss and gradient -- clip_cov's random draw included, from verl's global
    generator and ours seeded alike."""
    batch = _wide_batch(seed)
    old_log_prob, log_prob, advantages, mask = batch
    config = actor_config(
        loss_mode, clip_ratio_low=0.2, clip_ratio_high=0.2, loss_agg_mode=loss_agg_mode,
        policy_loss=PolicyLossConfig(loss_mode=loss_mode, **verl_settings),
    )  # fmt: skip
    torch.manual_seed(1000 + seed)
    verl_loss, verl_grad, _ = verl_loss_and_grad(loss_mode, batch, loss_agg_mode, config)
    assert core_algos.get_policy_loss_fn(loss_mode) is VERL_OWN[loss_mode]
    ours = log_prob.clone().requires_grad_(True)
    loss, metrics = policy_loss(
        loss_mode, ours, old_log_prob, advantages, mask, loss_agg_mode=loss_agg_mode,
        generator=torch.Generator().manual_seed(1000 + seed), **our_params,
    )  # fmt: skip
    (grad,) = torch.autograd.grad(loss, ours)
    torch.testing.assert_close(loss.detach(), verl_loss, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(grad, verl_grad, rtol=1e-5, atol=1e-9)
    assert metrics["cov_selected_frac"] > 0
