"""The engine interface and the batch it returns."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Protocol

import torch


class NonFiniteError(FloatingPointError):
    """The policy's numbers went NaN/inf (diverged weights); the trainer counts the step as non-finite."""


@dataclass
class Rollout:
    """G responses for each of B prompts, flattened group by group (row i belongs to prompt i // G).

    prompt_ids          (B*G, P) long, left-padded with the tokenizer's pad id
    prompt_mask         (B*G, P) bool
    response_ids        (B*G, R) long, right-padded; the EOS token, when produced, is the last valid token
    response_mask       (B*G, R) bool
    behaviour_logprobs  (B*G, R) float32, log pi_old(token) at the sampling temperature (0 on padding)
    group_ids           (B*G,) long, index of the prompt in this call
    responses           decoded response texts without EOS / padding, length B*G
    truncated           (B*G,) bool, True where the response hit max_new_tokens without EOS
    """

    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    response_ids: torch.Tensor
    response_mask: torch.Tensor
    behaviour_logprobs: torch.Tensor
    group_ids: torch.Tensor
    responses: list[str]
    truncated: torch.Tensor

    @property
    def response_lengths(self) -> torch.Tensor:
        return self.response_mask.sum(-1)

    def select(self, index: torch.Tensor) -> Rollout:
        """Rows ``index`` (a long index tensor) of every field."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.name] = [value[i] for i in index.tolist()] if isinstance(value, list) else value[index]
        return Rollout(**out)

    @staticmethod
    def concat(parts: list[Rollout], pad_token_id: int) -> Rollout:
        """Join rollouts of different lengths (prompt padded left, response padded right)."""
        if len(parts) == 1:
            return parts[0]
        p_len = max(r.prompt_ids.shape[1] for r in parts)
        r_len = max(r.response_ids.shape[1] for r in parts)
        offset, group_ids = 0, []
        for r in parts:
            group_ids.append(r.group_ids + offset)
            offset += int(r.group_ids.max()) + 1 if len(r.group_ids) else 0

        def pad(ts: list[torch.Tensor], width: int, left: bool, value: float | int | bool) -> torch.Tensor:
            padded = []
            for t in ts:
                extra = width - t.shape[1]
                filler = torch.full((t.shape[0], extra), value, dtype=t.dtype)
                padded.append(torch.cat([filler, t] if left else [t, filler], dim=1))
            return torch.cat(padded)

        return Rollout(
            prompt_ids=pad([r.prompt_ids for r in parts], p_len, True, pad_token_id),
            prompt_mask=pad([r.prompt_mask for r in parts], p_len, True, False),
            response_ids=pad([r.response_ids for r in parts], r_len, False, pad_token_id),
            response_mask=pad([r.response_mask for r in parts], r_len, False, False),
            behaviour_logprobs=pad([r.behaviour_logprobs for r in parts], r_len, False, 0.0),
            group_ids=torch.cat(group_ids),
            responses=[s for r in parts for s in r.responses],
            truncated=torch.cat([r.truncated for r in parts]),
        )


class GenerationEngine(Protocol):
    """What the trainer needs from a generator."""

    def generate(self, prompts: list[str], *, n: int, max_new_tokens: int, temperature: float = 1.0,
                 top_p: float = 1.0, seed: int = 0) -> Rollout: ...

    def sync_weights(self, model: torch.nn.Module, version: int | None = None) -> None:
        """Make the engine sample from ``model``'s current weights (``version``: skip if already synced)."""
        ...


def make_engine(name: str, model: torch.nn.Module, tokenizer: Any, **kwargs: Any) -> GenerationEngine:
    from aspo.errors import UserError

    if name == "hf":
        from aspo.rollout.hf import HFEngine

        return HFEngine(model, tokenizer, **kwargs)
    if name == "vllm":
        from aspo.rollout.vllm import VLLMEngine

        return VLLMEngine(model, tokenizer, **kwargs)
    raise UserError(f"unknown rollout.engine {name!r}; valid engines: hf, vllm")
