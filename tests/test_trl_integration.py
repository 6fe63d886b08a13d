"""ASPOTrainer on TRL's GRPOTrainer: it trains off-policy; its loss and gradient are the native objective's.

The tiny lab model is saved to a temp dir and loaded by TRL from there (HF_HUB_OFFLINE: no hub).
"""

from __future__ import annotations

import math

import pytest
import torch

pytest.importorskip("trl")

from aspo.errors import UserError  # noqa: E402
from aspo.objectives import agg_loss, kl_penalty, policy_loss  # noqa: E402

PROMPTS = ["12+3=", "7*8=", "40-9=", "5+55=", "9*9=", "100-1="]


def digit_share(completions: list[str], **_: object) -> list[float]:
    """Toy verifiable reward: the share of digits in the completion (varies within a group)."""
    return [sum(ch.isdigit() for ch in text) / max(len(text), 1) for text in completions]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> str:
    from aspo.lab import build_model, build_tokenizer

    tokenizer = build_tokenizer()
    model = build_model(
        tokenizer, seed=0, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128
    )
    path = tmp_path_factory.mktemp("tiny_policy")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("WANDB_DISABLED", "true")


def make_trainer(checkpoint: str, tmp_path, peft_config=None, **overrides):
    from datasets import Dataset

    from aspo.integrations.trl import ASPOConfig, ASPOTrainer

    settings = dict(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=4,
        num_generations=4,
        gradient_accumulation_steps=1,
        max_completion_length=10,
        temperature=1.0,
        report_to="none",
        use_cpu=True,
        bf16=False,
        save_strategy="no",
        logging_steps=1,
        seed=0,
        dataloader_num_workers=0,
    )
    settings.update(overrides)
    args = ASPOConfig(**settings)
    dataset = Dataset.from_list([{"prompt": p} for p in PROMPTS])
    trainer = ASPOTrainer(
        model=checkpoint, reward_funcs=digit_share, args=args, train_dataset=dataset, peft_config=peft_config
    )
    # what Trainer's loop sets before each window; compute_loss is also called directly below
    trainer.current_gradient_accumulation_steps = args.gradient_accumulation_steps
    return trainer


def test_off_policy_training_runs_and_logs_aspo_metrics(checkpoint: str, tmp_path) -> None:
    # num_iterations=2 with 2 accumulation steps: step 2 re-uses step 1's generations after an update,
    # so TRL keeps behaviour log-probs and the ratios leave 1.
    trainer = make_trainer(
        checkpoint,
        tmp_path,
        num_iterations=2,
        gradient_accumulation_steps=2,
        max_steps=2,
        learning_rate=3e-2,
        max_completion_length=8,
    )
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    history = [row for row in trainer.state.log_history if "clipfrac/pos" in row]
    assert len(history) == 2
    for row in history:
        assert math.isfinite(row["loss"])
        for key in ("clipfrac/pos", "clipfrac/neg", "dualclip/pos", "dualclip/neg", "ratio/mean", "entropy"):
            assert key in row and math.isfinite(row[key]), key
    first, second = history
    assert first["ratio/max"] == pytest.approx(1.0, abs=1e-4)  # fresh samples: on-policy
    assert first["ratio/min"] == pytest.approx(1.0, abs=1e-4)
    assert max(second["ratio/max"] - 1.0, 1.0 - second["ratio/min"]) > 1e-3  # reused samples: off-policy
    changed = any(not torch.equal(before[n], p.detach()) for n, p in trainer.model.named_parameters())
    assert changed


def test_peft_config_trains_lora_adapters_against_the_base_as_reference(checkpoint: str, tmp_path) -> None:
    peft = pytest.importorskip("peft")
    from aspo.pretrained import load_checkpoint

    lora = peft.LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM")
    trainer = make_trainer(
        checkpoint,
        tmp_path,
        peft_config=lora,
        num_iterations=2,
        gradient_accumulation_steps=2,
        max_steps=2,
        learning_rate=3e-2,
        max_completion_length=8,
        beta=0.05,
    )
    assert isinstance(trainer.model, peft.PeftModel) and trainer.ref_model is None  # reference: adapters off
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    history = [row for row in trainer.state.log_history if "clipfrac/pos" in row]
    assert len(history) == 2 and all(math.isfinite(row["loss"]) for row in history)
    assert history[0]["kl"] == pytest.approx(0.0, abs=1e-6)  # a fresh adapter is the identity: policy = base
    assert history[1]["kl"] > 0  # after an update the adapted policy has left the base
    params = dict(trainer.model.named_parameters())
    assert all(torch.equal(before[n], p) for n, p in params.items() if "lora_" not in n)  # base frozen
    assert any(not torch.equal(before[n], p) for n, p in params.items() if "lora_B" in n)
    trainer.save_model(str(tmp_path / "adapter"))  # peft's format, which `aspo eval --model` loads merged
    merged, _ = load_checkpoint(str(tmp_path / "adapter"))
    ids = torch.tensor([[3, 9, 12, 7, 5]])
    with torch.no_grad():
        torch.testing.assert_close(
            merged(input_ids=ids).logits, trainer.model(input_ids=ids).logits, atol=1e-5, rtol=0
        )


def _batch(trainer, completion_lengths, log_ratio_of, seed: int = 0):
    """A hand-made TRL micro-batch: left-padded prompts, right-padded completions, behaviour log-probs
    = the current ones shifted by ``log_ratio_of(row, advantage, col)`` (so the ratios are chosen)."""
    generator = torch.Generator().manual_seed(seed)
    vocab = trainer.model.config.vocab_size
    rows, prompt_len, completion_len = len(completion_lengths), 5, max(completion_lengths)
    prompt_ids = torch.randint(4, vocab, (rows, prompt_len), generator=generator)
    prompt_mask = torch.ones(rows, prompt_len, dtype=torch.long)
    prompt_mask[0, :2] = 0  # left padding
    prompt_ids[0, :2] = trainer.processing_class.pad_token_id
    completion_ids = torch.randint(4, vocab, (rows, completion_len), generator=generator)
    completion_mask = torch.zeros(rows, completion_len, dtype=torch.long)
    for row, length in enumerate(completion_lengths):
        completion_mask[row, :length] = 1
    advantages = torch.tensor([1.0, -0.5, 0.8, -1.2])[:rows]
    return {
        "prompt_ids": prompt_ids,
        "prompt_mask": prompt_mask,
        "completion_ids": completion_ids,
        "completion_mask": completion_mask,
        "advantages": advantages,
        "num_items_in_batch": completion_mask.sum(),
    }


def _native_logprobs(model, batch, pad_to: int | None = None):
    """log pi(y_t) and entropy from a plain forward of an independent copy of the model."""
    input_ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], dim=1)
    attention_mask = torch.cat([batch["prompt_mask"], batch["completion_mask"]], dim=1)
    prompt_len = batch["prompt_ids"].shape[1]
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, prompt_len - 1 : -1].float()
    log_probs = logits.log_softmax(-1)
    token_logp = log_probs.gather(-1, batch["completion_ids"].unsqueeze(-1)).squeeze(-1)
    entropy = -(log_probs.exp() * log_probs).sum(-1)
    mask = batch["completion_mask"].bool()
    if pad_to is not None and pad_to > mask.shape[1]:
        extra = pad_to - mask.shape[1]
        token_logp = torch.nn.functional.pad(token_logp, (0, extra))
        entropy = torch.nn.functional.pad(entropy, (0, extra))
        mask = torch.nn.functional.pad(mask, (0, extra))
    return token_logp, entropy, mask


def _grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


# Ratios covering every region of the weight tables: clipped, inside, both dual clips, high-entropy band.
RATIO_CYCLE = (1.3, 0.7, 4.0, 0.25, 1.1, 0.9, 1.5, 0.5)


def _cycle_log_ratio(row: int, col: int) -> float:
    return math.log(RATIO_CYCLE[(3 * row + col) % len(RATIO_CYCLE)])


@pytest.mark.parametrize(
    ("loss_type", "loss_agg_mode", "beta"),
    [
        ("aspo", "token-mean", 0.0),
        ("aspo", "seq-mean-token-sum-norm", 0.0),
        ("grpo", "seq-mean-token-mean", 0.0),
        ("aspo", "token-mean", 0.05),
        ("kl_cov", "token-mean", 0.0),
        ("clip_cov", "seq-mean-token-mean", 0.0),
    ],
)
def test_loss_and_gradient_equal_native_objective(
    checkpoint, tmp_path, loss_type, loss_agg_mode, beta
) -> None:
    from transformers import AutoModelForCausalLM

    # clip_cov / kl_cov at shares that select several tokens (clip_cov: every candidate, so no draw matters)
    own = {"clip_cov": {"clip_cov_ratio": 1.0, "clip_cov_lb": 0.0}, "kl_cov": {"kl_cov_ratio": 0.2}}
    own_params = own.get(loss_type, {})
    trainer = make_trainer(
        checkpoint, tmp_path, loss_type=loss_type, loss_agg_mode=loss_agg_mode, beta=beta, **own_params
    )
    native = AutoModelForCausalLM.from_pretrained(checkpoint)
    batch = _batch(trainer, [7, 5, 3, 6], _cycle_log_ratio)
    max_len = trainer.args.max_completion_length

    # behaviour / reference log-probs chosen relative to the (identical) current ones
    with torch.no_grad():
        current, _, mask = _native_logprobs(native, batch)
    shift = torch.tensor(
        [[_cycle_log_ratio(r, c) for c in range(mask.shape[1])] for r in range(mask.shape[0])]
    )
    batch["old_per_token_logps"] = (current - shift).masked_fill(~mask, 0.0)
    if beta:
        batch["ref_per_token_logps"] = (current + 0.3 * shift.flip(-1)).masked_fill(~mask, 0.0)

    trainer.model.train()
    trl_loss = trainer.compute_loss(trainer.model, batch)
    trl_loss.backward()

    native.train()
    # Dr. GRPO's normaliser is B * max_completion_length: pad the native tensors to that length.
    pad_to = max_len if loss_agg_mode == "seq-mean-token-sum-norm" else None
    log_prob, entropy, native_mask = _native_logprobs(native, batch, pad_to=pad_to)
    pad = native_mask.shape[1] - mask.shape[1]
    old = torch.nn.functional.pad(batch["old_per_token_logps"], (0, pad))
    expected, metrics = policy_loss(
        loss_type,
        log_prob,
        old,
        batch["advantages"],
        native_mask,
        entropy=entropy,
        loss_agg_mode=loss_agg_mode,
        **own_params,
    )
    if beta:
        ref = torch.nn.functional.pad(batch["ref_per_token_logps"], (0, pad))
        # TRL's default use_bias_correction_kl: k3 times the (differentiable) IS ratio
        per_token_kl = kl_penalty(log_prob, ref, "k3") * torch.exp(log_prob - old)
        expected = expected + beta * agg_loss(per_token_kl, native_mask, loss_agg_mode)
    expected.backward()

    assert trl_loss.item() == pytest.approx(expected.item(), rel=1e-5, abs=1e-6)
    trl_grads, native_grads = _grads(trainer.model), _grads(native)
    assert trl_grads.keys() == native_grads.keys() and trl_grads
    for name, grad in native_grads.items():
        torch.testing.assert_close(trl_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)
    logged = trainer._metrics["train"]
    assert logged["dualclip/pos"][-1] == pytest.approx(metrics["dualclip/pos"])
    assert logged["clipfrac/neg"][-1] == pytest.approx(metrics["clipfrac/neg"])
    if loss_type == "aspo":
        assert 0.0 < logged["entropy_high_frac"][-1] < 1.0  # the entropy split was applied
    if loss_type in own:
        assert logged["cov_selected_frac"][-1] == pytest.approx(metrics["cov_selected_frac"])
        assert metrics["cov_selected_frac"] > 0


def test_trl_entropies_set_aspo_clip_ranges(checkpoint, tmp_path) -> None:
    """Every ratio sits in the band only the high-entropy range (0.4) keeps: without TRL's entropies
    reaching policy_loss the loss would differ."""
    from transformers import AutoModelForCausalLM

    trainer = make_trainer(checkpoint, tmp_path)
    native = AutoModelForCausalLM.from_pretrained(checkpoint)
    batch = _batch(trainer, [7, 6, 7, 5], None)
    with torch.no_grad():
        current, _, mask = _native_logprobs(native, batch)
    # r = 1.3 for A > 0 (0.2 clips it, 0.4 keeps it), r = 0.7 for A < 0 (likewise)
    shift = torch.where(batch["advantages"] > 0, math.log(1.3), math.log(0.7)).unsqueeze(1).expand_as(current)
    batch["old_per_token_logps"] = (current - shift).masked_fill(~mask, 0.0)

    trainer.model.train()
    trl_loss = trainer.compute_loss(trainer.model, batch)
    log_prob, entropy, _ = _native_logprobs(native, batch)
    with_entropy, _ = policy_loss(
        "aspo", log_prob, batch["old_per_token_logps"], batch["advantages"], mask, entropy=entropy
    )
    without_entropy, _ = policy_loss(
        "aspo", log_prob, batch["old_per_token_logps"], batch["advantages"], mask
    )
    assert trl_loss.item() == pytest.approx(with_entropy.item(), rel=1e-5)
    assert abs(with_entropy.item() - without_entropy.item()) > 1e-3


def test_gradient_accumulation_splits_token_mean_over_the_window(checkpoint, tmp_path) -> None:
    """token-mean normalises by the whole accumulation window's tokens (TRL's dapo), not per micro-batch."""
    trainer = make_trainer(
        checkpoint, tmp_path, gradient_accumulation_steps=2, per_device_train_batch_size=2, num_generations=2
    )
    batch = _batch(trainer, [7, 3], None)
    batch["old_per_token_logps"] = None
    window_tokens = 30  # num_items_in_batch spans the generation batch: 2 micro-batches here
    batch["num_items_in_batch"] = torch.tensor(window_tokens)
    trainer.model.train()
    loss = trainer.compute_loss(trainer.model, batch)
    # on-policy (r = 1): token loss value = -A, so the loss is -sum(A * tokens) / window tokens
    expected = -(1.0 * 7 + (-0.5) * 3) / window_tokens
    assert loss.item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        ({"loss_type": "bnpo"}, "loss_type"),
        ({"loss_agg_mode": "token-sum"}, "loss_agg_mode"),
        ({"importance_sampling_level": "sequence"}, "importance_sampling_level"),
        ({"delta": 3.0}, "delta"),
        ({"loss_type": "grpo", "clip_cov_ratio": 0.1}, "clip_cov_ratio applies to loss_type='clip_cov'"),
        ({"loss_type": "kl_cov", "kl_cov_ratio": 2.0}, "kl_cov_ratio must be in"),
        ({"top_entropy_quantile": 1.5}, "top_entropy_quantile must be in"),
    ],
)
def test_config_rejects_what_it_cannot_honour(tmp_path, overrides, needle) -> None:
    from aspo.integrations.trl import ASPOConfig

    with pytest.raises(UserError, match=needle):
        ASPOConfig(output_dir=str(tmp_path), report_to="none", use_cpu=True, **overrides)


def test_config_maps_to_policy_loss_params(tmp_path) -> None:
    from aspo.integrations.trl import ASPOConfig

    default = ASPOConfig(output_dir=str(tmp_path), report_to="none", use_cpu=True)
    assert default.loss_type == "aspo"
    assert default.policy_loss_params()["clip_ratio_low"] is None  # -> the objective's own 0.2
    tuned = ASPOConfig(
        output_dir=str(tmp_path),
        report_to="none",
        use_cpu=True,
        loss_type="sapo",
        epsilon=0.1,
        sapo_temperature_pos=2.0,
    )
    params = tuned.policy_loss_params()
    assert (params["clip_ratio_low"], params["clip_ratio_high"], params["tau_pos"]) == (0.1, 0.1, 2.0)


@pytest.mark.parametrize(
    ("trl_loss_type", "loss_agg_mode"),
    [("dapo", "token-mean"), ("grpo", "seq-mean-token-mean"), ("dr_grpo", "seq-mean-token-sum-norm")],
)
@pytest.mark.parametrize(
    "terms",
    [
        {},
        {"top_entropy_quantile": 0.4, "entropy_coef": 0.05},
        {"off_policy_mask_threshold": 0.3},
        {
            "use_adaptive_entropy": True,
            "entropy_coef": 0.02,
            "entropy_target": 50.0,
            "top_entropy_quantile": 0.5,
        },
    ],
)
def test_trl_own_loss_equals_our_ppo_under_the_documented_mapping(
    checkpoint, tmp_path, trl_loss_type, loss_agg_mode, terms
) -> None:
    """Control: TRL's own GRPOTrainer loss (PPO-clip, no dual clip) == ASPOTrainer with our ``ppo`` and the
    aggregation the module docstring maps TRL's loss_type to -- with gradient accumulation, the KL term and
    vLLM-style importance-sampling weights, so every piece of the plumbing is compared with TRL's."""
    from trl import GRPOConfig, GRPOTrainer

    common = dict(
        per_device_train_batch_size=4,
        num_generations=4,
        gradient_accumulation_steps=2,
        max_completion_length=10,
        temperature=1.0,
        report_to="none",
        use_cpu=True,
        bf16=False,
        save_strategy="no",
        seed=0,
        beta=0.05,
        epsilon=0.2,
        **terms,
    )
    ours = make_trainer(checkpoint, tmp_path, loss_type="ppo", loss_agg_mode=loss_agg_mode, **common)
    theirs = GRPOTrainer(
        model=checkpoint,
        reward_funcs=digit_share,
        args=GRPOConfig(output_dir=str(tmp_path / "trl"), loss_type=trl_loss_type, **common),
        train_dataset=ours.train_dataset,
    )
    batch = _batch(ours, [7, 5, 3, 6], None)
    with torch.no_grad():
        ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], dim=1)
        attention = torch.cat([batch["prompt_mask"], batch["completion_mask"]], dim=1)
        current, _, _ = ours._get_per_token_logps_and_entropies(ours.model, ids, attention, 7)
    mask = batch["completion_mask"].bool()
    shift = torch.tensor([[_cycle_log_ratio(r, c) for c in range(7)] for r in range(4)])
    batch["old_per_token_logps"] = (current - shift).masked_fill(~mask, 0.0)
    batch["ref_per_token_logps"] = (current + 0.3 * shift.flip(-1)).masked_fill(~mask, 0.0)
    batch["importance_sampling_ratio"] = torch.linspace(0.0, 2.0, 28).reshape(4, 7)
    batch["num_items_in_batch"] = torch.tensor(40)  # the generation batch spans 2 micro-batches
    # vLLM's own log-probs: rows 1 and 3 (A < 0) drifted by a mean 0.5 and 0.1 nats, row 2 (A > 0) by 0.6
    drift = torch.tensor([0.0, 0.5, 0.6, 0.1]).unsqueeze(1)
    batch["sampling_per_token_logps"] = (current + drift).masked_fill(~mask, 0.0)
    batch["sampling_per_token_logps"][0, 2] = float("nan")  # a token vLLM could not score

    results = []
    for trainer in (theirs, ours):
        trainer.current_gradient_accumulation_steps = 2
        trainer.use_vllm = trainer.vllm_importance_sampling_correction = True  # apply the IS weights
        trainer.model.train()
        losses = []
        for window_end in (False, True, True):  # the controller adapts where an optimizer step ends
            trainer.accelerator.gradient_state._set_sync_gradients(window_end)
            loss = trainer.compute_loss(trainer.model, dict(batch))
            loss.backward()
            losses.append(loss.detach())
        results.append((torch.stack(losses), _grads(trainer.model), trainer.entropy_coef))
    (their_loss, their_grads, their_coef), (our_loss, our_grads, our_coef) = results
    torch.testing.assert_close(our_loss, their_loss, rtol=1e-5, atol=1e-7)
    for name, grad in their_grads.items():
        torch.testing.assert_close(our_grads[name], grad, rtol=1e-4, atol=1e-7, msg=name)
    assert our_coef == their_coef
    if terms.get("use_adaptive_entropy"):
        assert our_coef == pytest.approx(0.03)  # two optimizer steps below the target: 0.02 + 2 * 0.005
        assert not torch.allclose(our_loss[1], our_loss[2])  # the bonus applies from the second step on
