"""Activation checkpointing (``train.activation_checkpointing``) changes memory, not numbers.

- the packed forward with the model's checkpointing on gives the log-probs, entropies and every parameter
  gradient of the plain packed forward (and of the padded forward through transformers' own checkpointing);
- it really checkpoints: the tensors kept for the backward shrink to about the layers' inputs, and each
  layer runs twice (forward, and again in the backward); under ``no_grad`` or in eval mode it runs once;
- the config key reaches the model: two tiny runs with it off and on train to the same weights.
"""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_overrides

from aspo.config import load_config
from aspo.models import (
    checkpointing_by_default,
    enable_activation_checkpointing,
    packed_token_logprobs,
    packing_applies,
)
from aspo.models import padded_token_logprobs as padded
from aspo.rollout import HFEngine

PROMPTS = ["12+34=", "7*8=", "100-1=", "5="]


@pytest.fixture()
def policy_and_rollout():
    from aspo.lab import build_model, build_tokenizer

    tok = build_tokenizer()
    model = build_model(
        tok,
        seed=1,
        hidden_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=96,
    ).eval()
    r = HFEngine(model, tok).generate(PROMPTS, n=3, max_new_tokens=16, seed=4)
    return model.train(), r


def forward_backward(model, r, fn):
    """(logprobs, entropy, {name: grad}, saved-tensor bytes, MLP calls) of one forward + backward."""
    weights = torch.randn(r.response_ids.shape, generator=torch.Generator().manual_seed(0))
    model.zero_grad()
    saved: list[int] = []
    mlp_calls: list[int] = []
    layers = model.model.layers
    hooks = [layer.mlp.register_forward_pre_hook(lambda *_: mlp_calls.append(1)) for layer in layers]

    def record(t: torch.Tensor) -> torch.Tensor:
        saved.append(t.numel() * t.element_size())
        return t

    try:
        with torch.autograd.graph.saved_tensors_hooks(record, lambda t: t):
            logp, ent = fn(
                model, r.prompt_ids, r.prompt_mask, r.response_ids, r.response_mask, temperature=0.8
            )
        ((logp * weights).sum() + ent.sum()).backward()
    finally:
        for h in hooks:
            h.remove()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    return logp.detach(), ent.detach(), grads, sum(saved), len(mlp_calls)


def assert_same_numbers(a, b):
    assert torch.allclose(a[0], b[0], atol=1e-5) and torch.allclose(a[1], b[1], atol=1e-5)
    assert a[2].keys() == b[2].keys()
    for name, grad in a[2].items():
        assert torch.allclose(grad, b[2][name], atol=1e-5, rtol=1e-4), name


def test_checkpointed_packed_forward_gives_the_same_values_and_gradients(policy_and_rollout):
    model, r = policy_and_rollout
    layers = len(model.model.layers)
    plain = forward_backward(model, r, packed_token_logprobs)
    assert enable_activation_checkpointing(model)
    assert packing_applies(model, r.prompt_mask)  # checkpointing no longer sends it to the padded path
    checkpointed = forward_backward(model, r, packed_token_logprobs)
    assert_same_numbers(plain, checkpointed)
    # the padded path through transformers' own checkpointed layers: the same numbers too
    assert_same_numbers(plain, forward_backward(model, r, padded))
    # it did checkpoint: each layer ran again in the backward, and far less was kept for it
    assert plain[4] == layers and checkpointed[4] == 2 * layers
    assert checkpointed[3] < 0.5 * plain[3]


def test_no_recompute_without_a_backward(policy_and_rollout):
    """Reference / behaviour log-probs run under no_grad, sampling in eval mode: nothing to checkpoint."""
    model, r = policy_and_rollout
    enable_activation_checkpointing(model)
    calls: list[int] = []
    hooks = [layer.mlp.register_forward_pre_hook(lambda *_: calls.append(1)) for layer in model.model.layers]
    args = (r.prompt_ids, r.prompt_mask, r.response_ids, r.response_mask)
    try:
        with torch.no_grad():
            packed_token_logprobs(model, *args)
        model.eval()
        logp, _ = packed_token_logprobs(model, *args)
        logp.sum().backward()
    finally:
        model.train()
        for h in hooks:
            h.remove()
    assert len(calls) == 2 * len(model.model.layers)  # once per layer per forward, no recompute


@pytest.mark.parametrize("lora", [(), ("lora.rank=4", "lora.dropout=0.1")], ids=["full", "lora"])
def test_the_config_key_checkpoints_and_trains_to_the_same_weights(lora, tiny_run_inputs, tmp_path):
    """Also with LoRA adapters and their dropout (the recompute replays the same dropout masks)."""
    from aspo.trainer import Trainer

    weights = []
    for on in (False, True):
        extra = ("train.steps=2", "train.save_every=0", f"train.activation_checkpointing={str(on).lower()}")
        cfg = load_config(None, tiny_overrides(tiny_run_inputs, tmp_path / str(on), *extra, *lora))
        trainer = Trainer(cfg, progress=False)
        layers = trainer.model.model.layers
        assert all(getattr(layer, "gradient_checkpointing", False) == on for layer in layers)
        start = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
        try:
            trainer.train()
        finally:
            trainer.close()
        weights.append({n: p.detach().clone() for n, p in trainer.model.named_parameters()})
        assert any(not torch.equal(start[n], w) for n, w in weights[-1].items())  # it trained
    for name, w in weights[0].items():
        assert torch.allclose(w, weights[1][name], atol=1e-5), name


def test_checkpointing_is_on_by_default_from_50m_parameters(tiny_run_inputs, tmp_path):
    from aspo.trainer import Trainer

    cfg = load_config(None, tiny_overrides(tiny_run_inputs, tmp_path / "r"))
    assert cfg.train.activation_checkpointing is None
    trainer = Trainer(cfg, progress=False)  # the tiny model: off
    trainer.close()
    assert not any(getattr(layer, "gradient_checkpointing", False) for layer in trainer.model.model.layers)
    assert not checkpointing_by_default(trainer.model)
    # SmolLM2-135M's shape (30 layers of 576, a 49k vocabulary), on the meta device (no memory): on
    from transformers import LlamaConfig, LlamaForCausalLM

    shape = LlamaConfig(
        vocab_size=49152,
        hidden_size=576,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        intermediate_size=1536,
        tie_word_embeddings=True,
    )
    with torch.device("meta"):
        smollm2 = LlamaForCausalLM(shape)
    assert 130e6 < sum(p.numel() for p in smollm2.parameters()) < 140e6
    assert checkpointing_by_default(smollm2)
