"""What of the vLLM engine can be checked without vLLM: output packing and weight-sync bookkeeping.

The fake LLM below stands in for vllm.LLM (same ``collective_rpc`` surface). The real engine,
with vLLM's CPU build, is tested in tests/vllm_cpu (`make test-vllm`)."""

from types import SimpleNamespace

import torch

from aspo.rollout.vllm import VLLMEngine, rollout_from_outputs


class FakeTokenizer:
    pad_token_id, eos_token_id = 0, 2

    def __call__(self, text, add_special_tokens=True):
        return {"input_ids": ([1] if add_special_tokens else []) + [10 + (ord(c) % 20) for c in text]}

    def decode(self, ids, skip_special_tokens=False):
        return "".join(chr(65 + i % 26) for i in ids)


def completion(tokens, logps, finish_reason="length"):
    return SimpleNamespace(
        finish_reason=finish_reason,
        token_ids=tokens,
        logprobs=[{t: SimpleNamespace(logprob=lp)} for t, lp in zip(tokens, logps, strict=True)],
    )


def test_outputs_pack_into_a_left_right_padded_rollout():
    tok = FakeTokenizer()
    prompts = [[1, 11, 12], [1, 13]]
    outputs = [
        SimpleNamespace(outputs=[completion([5, 6, 2], [-0.1, -0.2, -0.3], "stop"), completion([7], [-1])]),
        SimpleNamespace(outputs=[completion([8, 2], [-0.5, -0.6], "stop"), completion([9, 9, 9], [-2] * 3)]),
    ]
    r = rollout_from_outputs(prompts, outputs, 2, tok.pad_token_id, tok)
    assert r.prompt_ids.tolist() == [[1, 11, 12]] * 2 + [[0, 1, 13]] * 2
    assert r.prompt_mask.tolist() == [[True] * 3] * 2 + [[False, True, True]] * 2
    assert r.response_ids.tolist() == [[5, 6, 2], [7, 0, 0], [8, 2, 0], [9, 9, 9]]
    assert r.response_mask.sum(-1).tolist() == [3, 1, 2, 3]
    assert torch.allclose(r.behaviour_logprobs[0], torch.tensor([-0.1, -0.2, -0.3]))
    assert r.truncated.tolist() == [False, True, False, True]
    assert r.group_ids.tolist() == [0, 0, 1, 1]
    assert r.responses[0] == tok.decode([5, 6])  # EOS stripped from the text


class FakeLLM:
    def __init__(self):
        self.loaded = []

    def collective_rpc(self, method, kwargs):
        assert method == "reload_weights" and kwargs["is_checkpoint_format"]
        self.loaded.append({k: v.clone() for k, v in kwargs["weights_iterator"]})

    def reset_prefix_cache(self):
        pass


def test_weights_are_pushed_once_per_version():
    llm = FakeLLM()
    engine = VLLMEngine(None, FakeTokenizer(), llm=llm)
    model = torch.nn.Linear(2, 2)
    engine.sync_weights(model, version=0)
    engine.sync_weights(model, version=0)  # nothing changed: no push
    with torch.no_grad():
        model.weight.add_(1.0)
    engine.sync_weights(model, version=1)
    assert engine.pushes == 2 and len(llm.loaded) == 2
    assert torch.equal(llm.loaded[-1]["weight"], model.weight)
    assert torch.allclose(llm.loaded[1]["weight"] - llm.loaded[0]["weight"], torch.ones(2, 2))
