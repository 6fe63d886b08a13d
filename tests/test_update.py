import pytest
import torch

from aspo.models import token_logprobs
from aspo.objectives import policy_loss
from aspo.rollout import HFEngine
from aspo.update import UpdateBatch, micro_batches, normaliser_scale


def test_a_batch_without_tokens_gives_zero_loss_and_gradient(tiny_policy):
    model, tok = tiny_policy
    rollout = HFEngine(model, tok).generate(["1+2="], n=2, max_new_tokens=6, seed=0)
    batch = UpdateBatch.from_rollout(rollout, torch.tensor([1.0, -1.0]))
    for source in (batch, batch.rows(torch.arange(0))):  # with rows to copy, and with none at all
        dummy = source.without_tokens(tok.pad_token_id)
        assert len(dummy) == 1 and not dummy.response_mask.any()
        model.zero_grad(set_to_none=True)
        logp, _ = token_logprobs(
            model, dummy.prompt_ids, dummy.prompt_mask, dummy.response_ids, dummy.response_mask
        )
        loss, _ = policy_loss("aspo", logp, dummy.behaviour_logprobs, dummy.advantages, dummy.response_mask)
        loss.backward()
        assert float(loss.detach()) == 0.0
        assert all(p.grad is None or not p.grad.any() for p in model.parameters())


def test_micro_batch_scales_sum_to_the_whole_batch(tiny_policy):
    model, tok = tiny_policy
    rollout = HFEngine(model, tok).generate(["1+2=", "33+4="], n=3, max_new_tokens=8, seed=1)
    batch = UpdateBatch.from_rollout(rollout, torch.zeros(6))
    tokens, seqs = float(batch.response_mask.sum()), float(batch.response_mask.any(-1).sum())
    for mode in ("token-mean", "seq-mean-token-mean"):
        parts = micro_batches(batch, 4)
        assert sum(len(p) for p in parts) == 6
        scales = [normaliser_scale(p.response_mask, mode, tokens, seqs, 1) for p in parts]
        assert abs(sum(scales) - 1.0) < 1e-9  # each part weighs its share of the tokens / sequences


def _update_stage(model, tok, *overrides, micro_batch_size=0, nominal_rows=0):
    from accelerate import Accelerator

    from aspo.config import load_config
    from aspo.update import PolicyUpdate

    cfg = load_config(None, list(overrides))
    return PolicyUpdate(
        Accelerator(cpu=True),
        model,
        cfg.algorithm,
        temperature=1.0,
        micro_batch_size=micro_batch_size,
        pad_token_id=tok.pad_token_id,
        nominal_rows=nominal_rows,
    )


def _batch_with_an_empty_row(model, tok):
    """Six responses of different lengths, row 1 without any valid token, off-policy behaviour log-probs."""
    rollout = HFEngine(model, tok).generate(["1+2=", "33+4="], n=3, max_new_tokens=8, seed=3)
    gen = torch.Generator().manual_seed(0)
    batch = UpdateBatch.from_rollout(rollout, torch.randn(6, generator=gen))
    batch.behaviour_logprobs = batch.behaviour_logprobs + 0.1 * torch.randn(
        batch.behaviour_logprobs.shape, generator=gen
    )
    batch.response_mask[1] = False
    return batch


def test_gspo_runs_with_its_registered_aggregation_unless_one_is_set(tiny_policy):
    """algorithm.loss=gspo used to run with the config's token-mean instead of GSPO's seq-mean-token-mean."""
    model, tok = tiny_policy
    batch = _batch_with_an_empty_row(model, tok)
    batch.response_mask[1] = batch.response_mask[0]  # rows of different lengths: the two means differ
    logp, _ = token_logprobs(
        model, batch.prompt_ids, batch.prompt_mask, batch.response_ids, batch.response_mask
    )
    for overrides, mode in (
        (["algorithm.loss=gspo"], "seq-mean-token-mean"),
        (["algorithm.loss=gspo", "algorithm.loss_agg_mode=token-mean"], "token-mean"),
    ):
        stage = _update_stage(model, tok, *overrides, "algorithm.entropy_split=false")
        assert stage.loss_agg_mode == mode
        loss, _, _ = stage.loss(batch)
        expected, _ = policy_loss(
            "gspo", logp, batch.behaviour_logprobs, batch.advantages, batch.response_mask, loss_agg_mode=mode
        )
        assert torch.allclose(loss, expected, rtol=1e-6, atol=1e-7), (overrides, float(loss), float(expected))
    assert _update_stage(model, tok).loss_agg_mode == "token-mean"  # the default objective (aspo)'s own


def test_micro_batched_gradient_equals_the_one_batch_gradient_with_an_empty_row(tiny_policy):
    """seq-mean aggregation divides by every row (an empty one too); the micro-batch weights must agree."""
    model, tok = tiny_policy
    batch = _batch_with_an_empty_row(model, tok)
    for mode in ("seq-mean-token-mean", "seq-mean-token-sum", "token-mean"):
        grads = []
        for size in (0, 3, 1):
            stage = _update_stage(
                model,
                tok,
                "algorithm.loss=grpo",
                "algorithm.entropy_split=false",
                f"algorithm.loss_agg_mode={mode}",
                micro_batch_size=size,
            )
            model.zero_grad(set_to_none=True)
            result = stage.backward(batch)
            assert result.global_tokens == float(batch.response_mask.sum())
            grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
        scale = float(grads[0].abs().max())
        assert scale > 0
        for other in grads[1:]:
            assert float((other - grads[0]).abs().max()) <= 1e-5 * scale, mode
    model.zero_grad(set_to_none=True)


def test_a_partial_mini_batch_scaled_by_the_nominal_size_weighs_its_share(tiny_policy):
    """train.partial_mini_batch=scaled: the loss of k responses is divided by mini_batch_size, not k (the
    authors' gradient accumulation), KL term included; full (nominal_rows 0) keeps the mean over k."""
    model, tok = tiny_policy
    batch = _batch_with_an_empty_row(model, tok)
    batch.ref_logprobs = batch.behaviour_logprobs - 0.2  # a KL term that is not zero
    overrides = ("algorithm.loss_agg_mode=seq-mean-token-mean", "algorithm.kl_coef=0.5")
    grads = []
    for nominal in (0, 8, 6):
        stage = _update_stage(model, tok, *overrides, micro_batch_size=1, nominal_rows=nominal)
        model.zero_grad(set_to_none=True)
        stage.backward(batch)
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    model.zero_grad(set_to_none=True)
    full, by_8, by_6 = grads
    scale = float(full.abs().max())
    assert scale > 0
    assert float((by_8 - full * 6 / 8).abs().max()) <= 1e-6 * scale  # 6 of a nominal 8 responses
    assert float((by_6 - full).abs().max()) <= 1e-6 * scale  # a full mini-batch: the same either way


def test_mini_batches_by_count_or_size_shuffled_or_in_order():
    from aspo.update import mini_batch_indices

    gen = torch.Generator().manual_seed(0)
    by_count = mini_batch_indices(10, 4, gen)
    assert [len(i) for i in by_count] == [3, 3, 2, 2]
    assert sorted(torch.cat(by_count).tolist()) == list(range(10))
    assert torch.cat(by_count).tolist() != list(range(10))  # shuffled
    in_order = mini_batch_indices(10, 4, None, size=4)  # the authors' recipe: fixed size, fixed order
    assert [i.tolist() for i in in_order] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert [len(i) for i in mini_batch_indices(6, 4, None, size=4)] == [4, 2]  # fewer rows: fewer steps
    # another rank holds 4 of the 10 rows: every rank cuts its share into ceil(10 / 4) = 3 parts
    assert [len(i) for i in mini_batch_indices(6, 4, None, size=4, global_rows=10)] == [2, 2, 2]


def test_the_entropy_bonus_adds_its_own_gradient_through_the_model(tiny_policy):
    """stage.backward(entropy_coef=c) = the policy loss's gradient + d(-c * agg(H))/dtheta, micro-batched
    or not; the reference here is autograd through the model's entropies, aggregated by hand."""
    model, tok = tiny_policy
    batch = _batch_with_an_empty_row(model, tok)
    mask = batch.response_mask
    for mode in ("token-mean", "seq-mean-token-mean"):
        model.zero_grad(set_to_none=True)
        logp, entropy = token_logprobs(model, batch.prompt_ids, batch.prompt_mask, batch.response_ids, mask)
        policy, _ = policy_loss(
            "grpo", logp, batch.behaviour_logprobs, batch.advantages, mask, loss_agg_mode=mode
        )
        masked = torch.where(mask, entropy, 0.0)
        if mode == "token-mean":
            mean_entropy = masked.sum() / mask.sum()
        else:
            mean_entropy = (masked.sum(-1) / mask.sum(-1).clamp(min=1)).sum() / mask.shape[0]
        (policy - 0.3 * mean_entropy).backward()
        expected = torch.cat([p.grad.flatten() for p in model.parameters()])
        total_entropy = float(masked.sum().detach())
        for size in (0, 2):
            stage = _update_stage(
                model, tok, "algorithm.loss=grpo", "algorithm.entropy_split=false",
                f"algorithm.loss_agg_mode={mode}", micro_batch_size=size,
            )  # fmt: skip
            model.zero_grad(set_to_none=True)
            result = stage.backward(batch, entropy_coef=0.3, with_entropy_sum=True)
            got = torch.cat([p.grad.flatten() for p in model.parameters()])
            scale = float(expected.abs().max())
            assert float((got - expected).abs().max()) <= 1e-5 * scale, (mode, size)
            assert result.entropy_sum == pytest.approx(total_entropy, rel=1e-5)
            assert all(m["entropy_coef"] == 0.3 for m in result.metrics)
    model.zero_grad(set_to_none=True)


def test_top_entropy_selection_without_the_entropy_split_keeps_one_clip_range(tiny_policy):
    """aspo with entropy_split=false and top_entropy_quantile < 1: the entropies reach the objective for the
    selection only, every token keeps the 0.2 range (not aspo's 0.4 for high-entropy tokens)."""
    model, tok = tiny_policy
    batch = _batch_with_an_empty_row(model, tok)
    mask = batch.response_mask
    logp, entropy = token_logprobs(model, batch.prompt_ids, batch.prompt_mask, batch.response_ids, mask)
    old = logp.detach() + torch.linspace(-0.5, 0.5, logp.numel()).view_as(logp)  # some tokens past 0.2
    batch.behaviour_logprobs = old
    common = dict(entropy=entropy, top_entropy_quantile=0.5)
    one_range, _ = policy_loss("aspo", logp, old, batch.advantages, mask, **common,
                               high_entropy_clip_ratio_low=0.2, high_entropy_clip_ratio_high=0.2)  # fmt: skip
    split, _ = policy_loss("aspo", logp, old, batch.advantages, mask, **common)
    assert not torch.allclose(one_range, split)  # the two readings differ on this batch
    for flag, expected in (("false", one_range), ("true", split)):
        stage = _update_stage(
            model, tok, f"algorithm.entropy_split={flag}", "algorithm.top_entropy_quantile=0.5"
        )
        loss, metrics, _ = stage.loss(batch)
        assert torch.allclose(loss, expected, rtol=1e-6, atol=1e-7), flag
        assert metrics["top_entropy_frac"] > 0


def test_the_entropy_of_the_high_entropy_tokens_is_reported_beside_the_mean(tiny_policy):
    """actor/entropy_high: the mean entropy over each response's tokens above its entropy quantile, the
    tokens claim 1 of the paper is about; computed from the same forward as the mean entropy."""
    from aspo.objectives.base import high_entropy_tokens

    model, tok = tiny_policy
    batch = _batch_with_an_empty_row(model, tok)
    stage = _update_stage(model, tok)
    out = stage.backward(batch)
    with torch.no_grad():
        _, entropy = token_logprobs(
            model, batch.prompt_ids, batch.prompt_mask, batch.response_ids, batch.response_mask
        )
    high = high_entropy_tokens(entropy, batch.response_mask, 0.8)
    assert high.any() and out.entropy_high == [pytest.approx(float(entropy[high].mean()), rel=1e-5)]
    assert out.entropy_high[0] > out.entropy[0]
