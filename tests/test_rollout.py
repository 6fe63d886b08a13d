import torch

from aspo.models import token_logprobs
from aspo.rollout import HFEngine, Rollout
from aspo.rollout.hf import sample_token

PROMPTS = ["12+34=", "7*8=", "100-1="]


def test_shapes_groups_and_masks(tiny_policy):
    model, tok = tiny_policy
    r = HFEngine(model, tok).generate(PROMPTS, n=4, max_new_tokens=12, seed=3)
    rows = len(PROMPTS) * 4
    assert r.prompt_ids.shape[0] == r.response_ids.shape[0] == rows
    assert r.response_ids.shape[1] <= 12
    assert r.group_ids.tolist() == [g for g in range(3) for _ in range(4)]
    # prompts are left-padded, responses right-padded: masks are contiguous blocks
    for pm, rm in zip(r.prompt_mask, r.response_mask, strict=True):
        assert pm.tolist() == sorted(pm.tolist())
        assert rm.tolist() == sorted(rm.tolist(), reverse=True)
    # a response without EOS is truncated at exactly max_new_tokens
    lengths = r.response_lengths
    assert (lengths[r.truncated] == r.response_ids.shape[1]).all()
    eos_rows = ~r.truncated
    last = r.response_ids[eos_rows].gather(1, (lengths[eos_rows] - 1)[:, None]).squeeze(1)
    assert (last == tok.eos_token_id).all()
    assert r.behaviour_logprobs[~r.response_mask].eq(0).all()


def test_behaviour_logprobs_equal_a_full_forward(tiny_policy):
    """The sampler's KV-cached log-probs are what the trainer recomputes (ratio 1 on-policy)."""
    model, tok = tiny_policy
    for temperature in (1.0, 0.7):
        r = HFEngine(model, tok).generate(PROMPTS, n=3, max_new_tokens=16, temperature=temperature, seed=1)
        with torch.no_grad():
            logp, ent = token_logprobs(
                model, r.prompt_ids, r.prompt_mask, r.response_ids, r.response_mask, temperature=temperature
            )
        assert torch.allclose(logp, r.behaviour_logprobs, atol=1e-5)
        assert (ent[r.response_mask] > 0).all() and ent[~r.response_mask].eq(0).all()


def test_seeded_sampling_is_reproducible(tiny_policy):
    model, tok = tiny_policy
    engine = HFEngine(model, tok)
    a = engine.generate(PROMPTS, n=2, max_new_tokens=10, seed=7)
    b = engine.generate(PROMPTS, n=2, max_new_tokens=10, seed=7)
    c = engine.generate(PROMPTS, n=2, max_new_tokens=10, seed=8)
    assert torch.equal(a.response_ids, b.response_ids) and a.responses == b.responses
    assert not torch.equal(a.response_ids, c.response_ids)


def test_decoded_text_matches_tokens(tiny_policy):
    model, tok = tiny_policy
    r = HFEngine(model, tok).generate(PROMPTS, n=2, max_new_tokens=10, seed=0)
    for ids, mask, ended, text in zip(
        r.response_ids, r.response_mask, ~r.truncated, r.responses, strict=True
    ):
        valid = ids[mask].tolist()
        if ended:
            valid = valid[:-1]
        assert text == tok.decode(valid)


def test_top_p_keeps_only_the_nucleus():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]])).repeat(2000, 1)
    gen = torch.Generator().manual_seed(0)
    tokens, logprobs = sample_token(logits, 1.0, 0.75, gen)
    assert set(tokens.tolist()) == {0, 1}  # 0.5 + 0.3 reaches 0.75; tokens 2, 3 never drawn
    # the reported log-prob is the untruncated tempered softmax
    assert torch.allclose(logprobs[tokens == 0], torch.log(torch.tensor(0.5)))
    tokens, _ = sample_token(logits, 1.0, 1e-6, gen)
    assert tokens.eq(0).all()  # tiny top_p = greedy


def test_select_and_concat_keep_rows_aligned(tiny_policy):
    model, tok = tiny_policy
    engine = HFEngine(model, tok)
    a = engine.generate(PROMPTS[:1], n=2, max_new_tokens=5, seed=0)
    b = engine.generate(PROMPTS[1:], n=2, max_new_tokens=9, seed=1)
    both = Rollout.concat([a, b], tok.pad_token_id)
    assert both.group_ids.tolist() == [0, 0, 1, 1, 2, 2]
    assert both.responses == a.responses + b.responses
    sub = both.select(torch.tensor([3, 0]))
    assert sub.responses == [both.responses[3], both.responses[0]]
    assert torch.equal(sub.response_mask[1, : a.response_ids.shape[1]], a.response_mask[0])


def test_sampled_tokens_follow_the_tempered_softmax():
    """Frequencies over many rows match softmax(logits / T), a -inf logit is never drawn, and a token of
    probability ~1e-4 is drawn about as often as it should be (the float64 cumulative sum)."""
    probs = torch.tensor([0.4, 0.3, 0.2, 0.0999, 0.0001, 0.0])
    rows = 200_000
    logits = (0.7 * torch.log(probs)).repeat(rows, 1)  # T = 0.7 undoes the 0.7 here
    gen = torch.Generator().manual_seed(0)
    tokens, logprobs = sample_token(logits, 0.7, 1.0, gen)
    counts = torch.bincount(tokens, minlength=6).double()
    expected = probs.double() * rows
    sigma = (expected * (1 - probs.double())).sqrt()
    assert counts[5] == 0  # probability 0
    assert ((counts - expected).abs() <= 5 * sigma + 1e-9).all(), (counts, expected)
    assert torch.allclose(logprobs, torch.log(probs)[tokens], atol=1e-5)
    # the same generator state gives the same tokens
    again, _ = sample_token(logits[:1000], 0.7, 1.0, torch.Generator().manual_seed(0))
    assert torch.equal(again, tokens[:1000])
