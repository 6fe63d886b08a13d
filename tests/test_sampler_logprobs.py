"""The sampler's log-probs are kept beside the trainer's recompute (the inputs of the sampler-trainer
mismatch metrics), through the trainer's own sampling path."""

import torch
from conftest import tiny_overrides

from aspo.config import load_config
from aspo.rollout import Rollout
from aspo.trainer import Trainer


def test_recompute_keeps_the_samplers_logprobs_and_logs_their_gap(tiny_run_inputs, tmp_path):
    overrides = tiny_overrides(tiny_run_inputs, tmp_path / "run", "rollout.recompute_logprobs='true'")
    trainer = Trainer(load_config(None, overrides), progress=False)
    batch = trainer.collect(1)
    rollout, mask = batch.rollout, batch.rollout.response_mask
    assert rollout.sampler_logprobs is not None and rollout.sampler_logprobs.shape == mask.shape
    # the hf engine samples with the trainer's model: its log-probs are the recompute's, to rounding
    gap = (rollout.sampler_logprobs - rollout.behaviour_logprobs)[mask].abs()
    assert float(gap.max()) < 1e-5
    metrics = batch.metrics()
    assert abs(metrics["rollout/logprob_abs_diff"] - float(gap.mean())) < 1e-7
    assert "time/weight_sync" not in metrics  # hf samples from the trainer's own tensors: no push
    trainer.close()


def test_concat_pads_the_samplers_logprobs_like_the_behaviour_ones():
    def part(rows, width, sampler):
        ones = torch.ones(rows, width, dtype=torch.bool)
        return Rollout(
            prompt_ids=torch.ones(rows, 2, dtype=torch.long),
            prompt_mask=torch.ones(rows, 2, dtype=torch.bool),
            response_ids=torch.ones(rows, width, dtype=torch.long),
            response_mask=ones,
            behaviour_logprobs=-torch.ones(rows, width),
            group_ids=torch.zeros(rows, dtype=torch.long),
            responses=["x"] * rows,
            truncated=torch.zeros(rows, dtype=torch.bool),
            sampler_logprobs=-2 * torch.ones(rows, width) if sampler else None,
        )

    both = Rollout.concat([part(1, 2, True), part(1, 3, True)], pad_token_id=0)
    assert both.sampler_logprobs.tolist() == [[-2, -2, 0], [-2, -2, -2]]
    assert Rollout.concat([part(1, 2, True), part(1, 3, False)], pad_token_id=0).sampler_logprobs is None
    assert both.select(torch.tensor([1])).sampler_logprobs.tolist() == [[-2, -2, -2]]
