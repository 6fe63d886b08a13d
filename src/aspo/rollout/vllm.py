"""vLLM rollout engine (GPU, optional extra ``aspo[vllm]``), colocated with the trainer in one process.

The trainer owns the weights; after every update it calls ``sync_weights(model)``, which pushes the
state dict into vLLM's model in place (no reload, no disk). vLLM's sampled-token log-probs are reported,
but its kernels differ from the trainer's forward, so the trainer recomputes the behaviour log-probs with
its own model (``rollout.recompute_logprobs``) and logs the gap as ``rollout/logprob_abs_diff``.

Status: written against vLLM's public ``LLM`` API (``SamplingParams(logprobs=0)``,
``logprobs_mode="processed_logprobs"``, ``LLM.apply_model``); it cannot run on CPU-only machines, and it
is reported as working only where a GPU check has been run (see the README's "Scaling out").
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

import torch

from aspo.rollout.base import Rollout, pad_to_width


class VLLMEngine:
    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        *,
        gpu_memory_utilization: float = 0.3,
        add_special_tokens: bool = True,
        llm: Any = None,
        **llm_kwargs: Any,
    ) -> None:
        """``llm`` may be given directly (tests pass a fake with the same ``generate`` / ``apply_model``)."""
        self.tokenizer = tokenizer
        self.add_special_tokens = add_special_tokens
        self.pushes = 0  # weight-sync bookkeeping: how many times weights were pushed
        self.synced_version: int | None = None
        if llm is None:
            llm = self._start(model, tokenizer, gpu_memory_utilization, **llm_kwargs)
        self.llm = llm

    @staticmethod
    def _start(model: Any, tokenizer: Any, gpu_memory_utilization: float, **kwargs: Any) -> Any:
        try:
            from vllm import LLM
        except ImportError as err:
            from aspo.errors import UserError

            raise UserError(
                "rollout.engine=vllm needs the optional extra: pip install 'aspo[vllm]' (and a CUDA GPU)"
            ) from err
        # vLLM loads from a directory: save the trainer's current weights once, then sync in place.
        path = tempfile.mkdtemp(prefix="aspo-vllm-")
        model.save_pretrained(path)
        tokenizer.save_pretrained(path)
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # colocated: same process as trainer
        return LLM(
            model=path,
            gpu_memory_utilization=gpu_memory_utilization,
            enable_prefix_caching=True,
            logprobs_mode="processed_logprobs",
            dtype=str(next(model.parameters()).dtype).split(".")[-1],
            **kwargs,
        )

    def sync_weights(self, model: torch.nn.Module, version: int | None = None) -> None:
        """Push ``model``'s weights into vLLM unless ``version`` says they are already there."""
        if version is not None and version == self.synced_version:
            return
        state = {k: v.detach() for k, v in model.state_dict().items()}
        self.llm.apply_model(lambda m: m.load_weights(state.items()))
        if hasattr(self.llm, "reset_prefix_cache"):
            self.llm.reset_prefix_cache()  # cached KV blocks were computed with the old weights
        self.pushes += 1
        self.synced_version = version

    def generate(
        self,
        prompts: list[str],
        *,
        n: int,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_p: float = 1.0,
        seed: int = 0,
    ) -> Rollout:
        from vllm import SamplingParams

        tok = self.tokenizer
        prompt_token_ids = [tok(p, add_special_tokens=self.add_special_tokens)["input_ids"] for p in prompts]
        params = SamplingParams(
            n=n, temperature=temperature, top_p=top_p, max_tokens=max_new_tokens, logprobs=0, seed=seed
        )
        outputs = self.llm.generate(
            [{"prompt_token_ids": ids} for ids in prompt_token_ids], params, use_tqdm=False
        )
        return rollout_from_outputs(prompt_token_ids, outputs, n, tok.pad_token_id, tok.eos_token_id, tok)


def rollout_from_outputs(
    prompt_token_ids: list[list[int]], outputs: list[Any], n: int, pad_id: int, eos_id: int, tokenizer: Any
) -> Rollout:
    """Pack vLLM ``RequestOutput``s (one per prompt, ``n`` completions each) into a padded Rollout."""
    rows_prompt, rows_resp, rows_logp, texts, truncated = [], [], [], [], []
    for ids, out in zip(prompt_token_ids, outputs, strict=True):
        if len(out.outputs) != n:
            raise RuntimeError(f"vLLM returned {len(out.outputs)} completions, expected {n}")
        for completion in out.outputs:
            tokens = list(completion.token_ids)
            logps = [
                next(iter(d.values())).logprob if isinstance(d, dict) else float(d)
                for d in (completion.logprobs or [])
            ]
            if len(logps) != len(tokens):
                logps = [0.0] * len(tokens)  # engine gave none: the trainer recomputes them
            rows_prompt.append(ids)
            rows_resp.append(tokens)
            rows_logp.append(logps)
            ended = bool(tokens) and tokens[-1] == eos_id
            truncated.append(not ended)
            texts.append(tokenizer.decode(tokens[:-1] if ended else tokens, skip_special_tokens=False))
    r_len = max(1, max(len(t) for t in rows_resp))

    def padded(
        rows: list[list[int]] | list[list[float]],
        value: float | int,
        left: bool = False,
        width: int | None = None,
        dtype: torch.dtype = torch.long,
    ) -> torch.Tensor:
        return pad_to_width([torch.tensor(r, dtype=dtype)[None] for r in rows], value, left=left, width=width)

    ones = [[1] * len(r) for r in rows_prompt], [[1] * len(r) for r in rows_resp]
    return Rollout(
        prompt_ids=padded(rows_prompt, pad_id, left=True),
        prompt_mask=padded(ones[0], 0, left=True, dtype=torch.bool),
        response_ids=padded(rows_resp, pad_id, width=r_len),
        response_mask=padded(ones[1], 0, width=r_len, dtype=torch.bool),
        behaviour_logprobs=padded(rows_logp, 0.0, width=r_len, dtype=torch.float32),
        group_ids=torch.arange(len(prompt_token_ids)).repeat_interleave(n),
        responses=texts,
        truncated=torch.tensor(truncated),
    )
