"""benchmarks/machine_limits.py counts the FLOPs the kernels really run: its closed forms
(benchmarks/_flops.py) for the packed update (with and without activation checkpointing) and for lean
decoding equal torch's own FlopCounterMode on a tiny Llama-style model, through padding, shared prompts
and rows dropping out of the decode batch.
Attention runs on the math backend here, whose matmuls the counter sees (the fused CPU kernel is opaque to
it); the closed form counts the same dense blocks. The counter is taught the in-place ``addmm_`` (the
chunked head's weight gradient), which it does not count by itself."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from conftest import load_benchmark_module
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from aspo.models import enable_activation_checkpointing, packed_token_logprobs
from aspo.rollout.hf import lean_decode

ROOT = Path(__file__).resolve().parent.parent


def _addmm_flops(bias_shape, a_shape, b_shape, *args, out_shape=None, **kwargs) -> int:
    return 2 * a_shape[0] * a_shape[1] * b_shape[1]


def _counter() -> FlopCounterMode:
    return FlopCounterMode(display=False, custom_mapping={torch.ops.aten.addmm_: _addmm_flops})


@pytest.fixture(scope="module")
def limits():
    yield load_benchmark_module("_flops.py", "bench_flops")
    del sys.modules["bench_flops"]


def _model(checkpointing: bool = False):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=96,
        hidden_size=48,
        intermediate_size=80,
        num_hidden_layers=2,
        num_attention_heads=6,
        num_key_value_heads=2,
        head_dim=8,
        tie_word_embeddings=True,
        max_position_embeddings=64,
    )
    model = LlamaForCausalLM(cfg).float()
    if checkpointing:
        assert enable_activation_checkpointing(model)
    return model


def _batch():
    """3 distinct prompts (left-padded, lengths 5, 3, 2) x 2 samples; responses of 4, 1, 6, 2, 6, 3 tokens."""
    gen = torch.Generator().manual_seed(1)
    prompt_lens = torch.tensor([5, 5, 3, 3, 2, 2])
    width = 5
    prompt_mask = torch.arange(width)[None] >= width - prompt_lens[:, None]
    distinct = torch.randint(3, 96, (3, width), generator=gen).repeat_interleave(2, 0)
    prompt_ids = distinct.masked_fill(~prompt_mask, 0)
    response_lens = torch.tensor([4, 1, 6, 2, 6, 3])
    response_mask = torch.arange(6)[None] < response_lens[:, None]
    response_ids = torch.randint(3, 96, (6, 6), generator=gen).masked_fill(~response_mask, 0)
    return prompt_ids, prompt_mask, response_ids, response_mask


@pytest.mark.parametrize("checkpointing", [False, True])
def test_update_flops_equal_what_torch_counts(limits, checkpointing):
    model = _model(checkpointing).train()
    prompt_ids, prompt_mask, response_ids, response_mask = _batch()
    counter = _counter()
    with sdpa_kernel(SDPBackend.MATH), counter:
        logp, ent = packed_token_logprobs(
            model, prompt_ids, prompt_mask, response_ids, response_mask, temperature=0.7, chunk=5
        )
        (logp.sum() + ent.sum()).backward()
    shape = limits.Shape.of(model.config)
    flops = limits.update_flops(shape, prompt_ids, prompt_mask, response_mask, checkpointing=checkpointing)
    assert flops["tokens"] == 5 + 3 + 2 + response_mask.sum()  # each distinct prompt once
    assert flops["head_tokens"] == response_mask.sum()
    assert flops["hardware"] == counter.get_total_flops()
    # the model count: no recompute, no padding -> less than the hardware's, and its matmul part exact
    assert flops["model"] < flops["hardware"]
    layers, head = shape.layers * shape.layer_params, shape.head_params
    matmul_model = 6 * layers * flops["tokens"] + 6 * head * flops["head_tokens"]
    assert matmul_model < flops["model"] < matmul_model + 3 * shape.attention_flops(6 * 11 * 11)


def test_decode_flops_equal_what_torch_counts(limits):
    model = _model().eval().requires_grad_(False)  # the counter's module hooks want no grad-requiring leaf
    prompt_ids, prompt_mask, _, _ = _batch()
    rows_seen: list[int] = []

    def pick(logits: torch.Tensor):
        rows_seen.append(logits.shape[0])
        token = logits.argmax(-1)
        # two rows end at the second step and two at the fourth: the batch drops them (3/4 rule)
        ended = torch.zeros(len(token), dtype=torch.bool)
        if len(rows_seen) in (2, 4):
            ended[:2] = True
        return token, torch.zeros(len(token)), ended

    counter = _counter()
    with sdpa_kernel(SDPBackend.MATH), counter:
        tokens, mask, _ = lean_decode(model, prompt_ids, prompt_mask, 7, pick, pad_id=0)
    assert rows_seen[0] == 6 and min(rows_seen) < 6  # rows left the batch
    shape = limits.Shape.of(model.config)
    flops = limits.decode_flops(shape, rows_seen, prompt_ids.shape[1], prompts=3)
    assert flops["prefill"] + sum(f for f, _ in flops["steps"]) == counter.get_total_flops()
    # the KV bytes of the last step: its rows x (prompt + steps) columns x layers x (k, v) x kv width x 4
    s = len(rows_seen) - 1
    assert flops["steps"][-1][1] == rows_seen[-1] * (5 + s) * 2 * 2 * 2 * 8 * 4
    assert flops["steps"][0][1] == 0  # the first token's logits come from the prefill


def test_decode_bound_takes_the_slower_of_compute_and_memory(limits):
    flops = {"prefill": 10.0, "steps": [(100.0, 0.0), (100.0, 50.0)]}
    bound = limits.decode_bound(flops, weight_bytes=50.0, peak_update=10.0, peak_decode=100.0, bandwidth=50.0)
    # prefill 1 s; step 0: compute 1 s vs memory 1 s; step 1: compute 1 s vs memory 2 s
    assert bound == {"bound_s": 4.0, "compute_s": 3.0, "memory_s": 4.0}
