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
        logp, _ = token_logprobs(model, dummy.prompt_ids, dummy.prompt_mask, dummy.response_ids,
                                 dummy.response_mask)
        loss, _ = policy_loss("aspo", logp, dummy.behaviour_logprobs, dummy.advantages, dummy.response_mask)
        loss.backward()
        assert float(loss) == 0.0
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
