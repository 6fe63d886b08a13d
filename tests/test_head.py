"""The chunked LM-head log-probs equal the plain full-vocabulary path: values and gradients.

``aspo.models.head.head_logprobs`` against ``log_softmax(F.linear(h, W, b).float() / T)``, over chunk
sizes that do and do not divide the token count, temperatures, with and without entropy; and through
``token_logprobs`` (packed and padded layouts, a row with no valid token) against ``chunk=0``.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from aspo.models import head as head_module
from aspo.models import packed_token_logprobs, padded_token_logprobs
from aspo.models.head import default_chunk, head_logits, head_logprobs
from aspo.rollout import HFEngine


def plain(hidden, weight, bias, targets, temperature, with_entropy):
    logp_all = torch.log_softmax(F.linear(hidden, weight, bias).float() / temperature, dim=-1)
    logp = logp_all.gather(-1, targets[:, None]).squeeze(-1)
    return logp, (-(logp_all.exp() * logp_all).sum(-1) if with_entropy else None)


def leaves(n=10, hidden=8, vocab=37, bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n, hidden, generator=g, requires_grad=True)
    w = (torch.randn(vocab, hidden, generator=g) * 0.5).requires_grad_()
    b = (torch.randn(vocab, generator=g) * 0.1).requires_grad_() if bias else None
    return h, w, b, torch.randint(vocab, (n,), generator=g)


def values_and_grads(fn, h, w, b, targets, upstream):
    params = [p for p in (h, w, b) if p is not None]
    logp, ent = fn(h, w, b, targets)
    loss = (logp * upstream[0]).sum() + (0 if ent is None else (ent * upstream[1]).sum())
    grads = torch.autograd.grad(loss, params)
    return logp.detach(), None if ent is None else ent.detach(), grads


@pytest.mark.parametrize("chunk", [1, 3, 4, 10, 64])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("with_entropy", [True, False])
def test_chunked_head_equals_the_plain_path(chunk, temperature, with_entropy):
    h, w, b, targets = leaves()
    upstream = torch.randn(2, len(targets), generator=torch.Generator().manual_seed(1))
    ref = values_and_grads(lambda *a: plain(*a, temperature, with_entropy), h, w, b, targets, upstream)
    got = values_and_grads(
        lambda *a: head_logprobs(*a, temperature=temperature, with_entropy=with_entropy, chunk=chunk),
        h,
        w,
        b,
        targets,
        upstream,
    )
    assert torch.allclose(got[0], ref[0], atol=1e-5)
    assert (got[1] is None) == (not with_entropy)
    if with_entropy:
        assert torch.allclose(got[1], ref[1], atol=1e-5)
    for g_got, g_ref in zip(got[2], ref[2], strict=True):  # hidden, weight, bias
        assert torch.allclose(g_got, g_ref, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("bias", [True, False])
def test_blocked_head_logits_equal_the_plain_path(monkeypatch, bias):
    """The vocabulary in blocks (a large vocabulary's path; here 37 = 4 blocks of 8 + 5): the same logits,
    and through the chunked head the same log-probs, entropies and gradients."""
    monkeypatch.setattr(head_module, "VOCAB_BLOCK", 8)
    h, w, b, targets = leaves(bias=bias)
    assert torch.allclose(head_logits(h, w, b), F.linear(h, w, b), atol=1e-6)
    assert torch.allclose(head_logits(h.view(2, 5, 8), w, b), F.linear(h.view(2, 5, 8), w, b), atol=1e-6)
    upstream = torch.randn(2, len(targets), generator=torch.Generator().manual_seed(1))
    ref = values_and_grads(lambda *a: plain(*a, 0.7, True), h, w, b, targets, upstream)
    got = values_and_grads(lambda *a: head_logprobs(*a, temperature=0.7, chunk=3), h, w, b, targets, upstream)
    assert torch.allclose(got[0], ref[0], atol=1e-5) and torch.allclose(got[1], ref[1], atol=1e-5)
    for g_got, g_ref in zip(got[2], ref[2], strict=True):
        assert torch.allclose(g_got, g_ref, atol=1e-5, rtol=1e-4)


def test_lean_decode_with_a_blocked_head_reports_the_models_logprobs(monkeypatch):
    from transformers import LlamaConfig, LlamaForCausalLM

    from aspo.rollout.hf import lean_decode, sample_token

    monkeypatch.setattr(head_module, "VOCAB_BLOCK", 16)  # 96 = 6 blocks
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=96,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    model = LlamaForCausalLM(cfg).eval()
    prompt_ids = torch.randint(3, 96, (4, 6))
    prompt_mask = torch.ones(4, 6, dtype=torch.bool)
    prompt_mask[2:, :2] = False
    gen = torch.Generator().manual_seed(0)

    def pick(logits):
        token, logp = sample_token(logits, 0.7, 1.0, gen)
        return token, logp, torch.zeros_like(token, dtype=torch.bool)

    tokens, mask, logps = lean_decode(model, prompt_ids, prompt_mask, 5, pick, pad_id=0)
    with torch.no_grad():
        ref, _ = padded_token_logprobs(model, prompt_ids, prompt_mask, tokens, mask, temperature=0.7)
    assert torch.allclose(logps, ref, atol=1e-5)


def test_gradients_from_entropy_alone_and_without_a_bias():
    h, w, _, targets = leaves(n=7, bias=False, seed=2)
    for grad_of in ("entropy", "logprobs"):
        ref = plain(h, w, None, targets, 1.3, True)
        got = head_logprobs(h, w, None, targets, temperature=1.3, chunk=2)
        pick = 1 if grad_of == "entropy" else 0
        g_ref = torch.autograd.grad(ref[pick].sum(), (h, w))
        g_got = torch.autograd.grad(got[pick].sum(), (h, w))
        for a, b in zip(g_got, g_ref, strict=True):
            assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)


def test_no_tokens_gives_empty_outputs_and_zero_gradients():
    h, w, b, targets = leaves(n=0)
    logp, ent = head_logprobs(h, w, b, targets, chunk=4)
    assert logp.shape == ent.shape == (0,)
    g_h, g_w, g_b = torch.autograd.grad(logp.sum() + ent.sum(), (h, w, b))
    assert g_h.shape == (0, 8) and not g_w.any() and not g_b.any()


def test_nothing_vocabulary_sized_is_kept_for_the_backward():
    """The point of chunking: the plain path saves (N, V) tensors for its backward, the chunked one at
    most the inputs and a few numbers per token."""
    h, w, b, targets = leaves(n=64, hidden=8, vocab=500)
    for fn, expect_big in (
        (lambda: plain(h, w, b, targets, 0.7, True), True),
        (lambda: head_logprobs(h, w, b, targets, temperature=0.7, chunk=16), False),
    ):
        sizes: list[int] = []

        def record(t: torch.Tensor, sizes: list[int] = sizes) -> torch.Tensor:
            sizes.append(t.numel())
            return t

        with torch.autograd.graph.saved_tensors_hooks(record, lambda t: t):
            fn()
        assert (max(sizes) >= 64 * 500) == expect_big
    assert default_chunk(49152) * 49152 <= 1 << 24 < (default_chunk(49152) + 1) * 49152


@pytest.fixture(scope="module")
def grouped_rollout():
    from aspo.lab import build_model, build_tokenizer

    tok = build_tokenizer()
    model = build_model(
        tok,
        seed=3,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=48,
    )
    r = HFEngine(model.eval(), tok).generate(["12+34=", "7*8=", "5="], n=3, max_new_tokens=10, seed=6)
    r.response_mask[4] = False  # a row with no valid token
    return model.train(), r


@pytest.mark.parametrize("forward", [packed_token_logprobs, padded_token_logprobs])
def test_token_logprobs_chunked_equals_unchunked(grouped_rollout, forward):
    model, r = grouped_rollout
    upstream = torch.randn(2, *r.response_ids.shape, generator=torch.Generator().manual_seed(2))
    results = []
    for chunk in (0, 5):  # 0: the whole batch's logits at once
        model.zero_grad()
        logp, ent = forward(
            model, r.prompt_ids, r.prompt_mask, r.response_ids, r.response_mask, temperature=0.8, chunk=chunk
        )
        ((logp * upstream[0]).sum() + (ent * upstream[1]).sum()).backward()
        results.append(
            (logp.detach(), ent.detach(), {n: p.grad.clone() for n, p in model.named_parameters()})
        )
    (lp_a, ent_a, grads_a), (lp_b, ent_b, grads_b) = results
    assert int(r.response_mask.sum()) > 5  # more than one chunk
    assert torch.allclose(lp_a, lp_b, atol=1e-5) and torch.allclose(ent_a, ent_b, atol=1e-5)
    assert lp_b[4].eq(0).all() and ent_b[4].eq(0).all() and lp_b[~r.response_mask].eq(0).all()
    head = next(n for n, p in model.named_parameters() if p is model.lm_head.weight)  # tied to the embeddings
    assert grads_b[head].any()
    for name, g in grads_a.items():
        assert torch.allclose(g, grads_b[name], atol=1e-5, rtol=1e-4), name
