"""The vLLM engine for real, with vLLM's CPU build (run in .venv-vllm by `make test-vllm`).

A tiny random Llama (the lab's character tokenizer, head_dim 64: vLLM's CPU attention has no kernel for
head_dim 16) is built here with transformers, and the engine is made the way the trainer makes it
(``make_engine("vllm", ...)``): colocated, fp32, so vLLM's log-probs are compared with the trainer's
forward at a stated fp32 tolerance. The main environment has no vLLM, so this directory is skipped there.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("vllm", reason="vLLM's CPU build runs in .venv-vllm: make test-vllm")

from vllm import SamplingParams  # noqa: E402

from aspo.models import token_logprobs  # noqa: E402
from aspo.rollout import make_engine  # noqa: E402

# fp32 on both sides; vLLM's CPU kernels (attention, fused RMSNorm/SiLU) sum in another order than torch's
FP32_ATOL = 2e-4
PROMPTS = ["12+34=", "7*8=", "100-1="]


@pytest.fixture(scope="module")
def policy_and_engine():
    from transformers import LlamaConfig, LlamaForCausalLM

    from aspo.lab import build_tokenizer

    tokenizer = build_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=256,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    # a 64 MiB KV cache is plenty here (VLLM_CPU_KVCACHE_SPACE counts whole GiB)
    engine = make_engine("vllm", model, tokenizer, max_model_len=256, seed=0, kv_cache_memory_bytes=64 << 20)
    engine.sync_weights(model, version=0)
    yield model, tokenizer, engine
    engine.close()  # colocated: this stops vLLM's engine core and frees its KV cache
    assert engine.llm is None


def trainer_logprobs(model, rollout, temperature):
    with torch.no_grad():
        logprobs, _ = token_logprobs(
            model,
            rollout.prompt_ids,
            rollout.prompt_mask,
            rollout.response_ids,
            rollout.response_mask,
            temperature=temperature,
            with_entropy=False,
        )
    return logprobs


def vllm_logprobs_of(engine, token_ids: list[int]) -> torch.Tensor:
    """log p(token_i | tokens_<i) for i >= 1 under vLLM's current weights (prompt log-probs, T=1)."""
    params = SamplingParams(max_tokens=1, prompt_logprobs=0, temperature=1.0)
    (out,) = engine.llm.generate([{"prompt_token_ids": token_ids}], params, use_tqdm=False)
    return torch.tensor([d[t].logprob for t, d in zip(token_ids[1:], out.prompt_logprobs[1:], strict=True)])


def test_samples_n_per_prompt_with_the_samplers_logprobs_eos_and_length(policy_and_engine):
    model, tokenizer, engine = policy_and_engine
    n, max_new = 8, 12
    r = engine.generate(PROMPTS, n=n, max_new_tokens=max_new, temperature=0.7, seed=3)
    assert r.group_ids.tolist() == [g for g in range(len(PROMPTS)) for _ in range(n)]
    lengths = r.response_lengths
    # every row either ended with EOS (its last token, not truncated) or ran to max_new_tokens
    eos = tokenizer.eos_token_id
    last = r.response_ids.gather(1, (lengths - 1).clamp(min=0)[:, None])[:, 0]
    ended = last == eos
    assert torch.equal(r.truncated, ~ended)
    assert bool((lengths[r.truncated] == max_new).all())
    assert bool(ended.any()) and bool(r.truncated.any())  # this seed exercises both ways a row ends
    assert ((r.response_ids == eos) & r.response_mask).sum() == ended.sum()  # nothing after an EOS
    for text, ids, m in zip(r.responses, r.response_ids, r.response_mask, strict=True):
        assert text == tokenizer.decode(ids[m][ids[m] != eos].tolist())
    # the sampler's own log-probs (after temperature) are the trainer's forward at that temperature
    recomputed = trainer_logprobs(model, r, 0.7)
    assert float((recomputed - r.behaviour_logprobs)[r.response_mask].abs().max()) < FP32_ATOL
    assert bool((r.behaviour_logprobs[~r.response_mask] == 0).all())
    # n samples of one prompt differ (not one sample repeated)
    rows = zip(r.response_ids[:n], r.response_mask[:n], strict=True)
    assert len({tuple(ids[m].tolist()) for ids, m in rows}) > 1


def test_the_same_seed_gives_the_same_rollout(policy_and_engine):
    _, _, engine = policy_and_engine
    a = engine.generate(PROMPTS, n=4, max_new_tokens=8, temperature=1.0, seed=11)
    b = engine.generate(PROMPTS, n=4, max_new_tokens=8, temperature=1.0, seed=11)
    c = engine.generate(PROMPTS, n=4, max_new_tokens=8, temperature=1.0, seed=12)
    assert torch.equal(a.response_ids, b.response_ids) and a.responses == b.responses
    assert torch.equal(a.behaviour_logprobs, b.behaviour_logprobs)
    assert not torch.equal(a.response_ids, c.response_ids)


def test_after_an_optimizer_step_vllm_samples_from_the_trainers_weights(policy_and_engine):
    model, tokenizer, engine = policy_and_engine
    tokens = tokenizer("12+34=46", add_special_tokens=True)["input_ids"]
    ids = torch.tensor([tokens])

    def trainer_side():
        with torch.no_grad():
            logits = model(ids).logits.float().log_softmax(-1)[0, :-1]
        return logits.gather(1, ids[0, 1:, None])[:, 0]

    before_vllm, before_trainer = vllm_logprobs_of(engine, tokens), trainer_side()
    assert float((before_vllm - before_trainer).abs().max()) < FP32_ATOL

    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    loss = -model(ids).logits.log_softmax(-1)[0, :-1].gather(1, ids[0, 1:, None]).mean()
    loss.backward()
    optimizer.step()
    model.eval()

    assert torch.equal(vllm_logprobs_of(engine, tokens), before_vllm)  # not pushed yet: old weights
    pushes = engine.pushes
    engine.sync_weights(model, version=1)
    assert engine.pushes == pushes + 1 and engine.last_sync_seconds > 0
    after_vllm, after_trainer = vllm_logprobs_of(engine, tokens), trainer_side()
    assert float((after_vllm - after_trainer).abs().max()) < FP32_ATOL
    assert float((after_vllm - before_vllm).abs().mean()) > 100 * FP32_ATOL  # the step moved them
    engine.sync_weights(model, version=1)  # same version: no second push
    assert engine.pushes == pushes + 1 and engine.last_sync_seconds == 0.0


def test_the_trainers_thread_policy_survives_vllm(policy_and_engine):
    # vLLM's CPU worker swaps torch.set_num_threads for a no-op in its process (colocated: ours)
    torch.set_num_threads(2)
    assert torch.get_num_threads() == 2
    torch.set_num_threads(1)
    assert torch.get_num_threads() == 1
