"""The engine interface and the batch it returns."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Protocol

import torch
import torch.nn.functional as F


def pad_to_width(
    parts: list[torch.Tensor], value: float | int | bool, *, left: bool = False, width: int | None = None
) -> torch.Tensor:
    """Concatenate (rows_i, W_i) tensors into (sum rows_i, width), filling with ``value`` on the right (or the
    left); width defaults to the widest part."""
    width = max(p.shape[1] for p in parts) if width is None else width
    return torch.cat(
        [F.pad(p, (width - p.shape[1], 0) if left else (0, width - p.shape[1]), value=value) for p in parts]
    )


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
    sampler_logprobs    (B*G, R) float32 or None: the engine's own log-probs, kept beside
                        ``behaviour_logprobs`` when the trainer recomputed those (rollout correction)
    """

    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    response_ids: torch.Tensor
    response_mask: torch.Tensor
    behaviour_logprobs: torch.Tensor
    group_ids: torch.Tensor
    responses: list[str]
    truncated: torch.Tensor
    sampler_logprobs: torch.Tensor | None = None

    @property
    def response_lengths(self) -> torch.Tensor:
        return self.response_mask.sum(-1)

    def select(self, index: torch.Tensor) -> Rollout:
        """Rows ``index`` (a long index tensor) of every field."""
        return select_rows(self, index)

    @staticmethod
    def concat(parts: list[Rollout], pad_token_id: int) -> Rollout:
        """Join rollouts of different lengths (prompt padded left, response padded right)."""
        if len(parts) == 1:
            return parts[0]
        offset, group_ids = 0, []
        for r in parts:
            group_ids.append(r.group_ids + offset)
            offset += int(r.group_ids.max()) + 1 if len(r.group_ids) else 0
        return Rollout(
            prompt_ids=pad_to_width([r.prompt_ids for r in parts], pad_token_id, left=True),
            prompt_mask=pad_to_width([r.prompt_mask for r in parts], False, left=True),
            response_ids=pad_to_width([r.response_ids for r in parts], pad_token_id),
            response_mask=pad_to_width([r.response_mask for r in parts], False),
            behaviour_logprobs=pad_to_width([r.behaviour_logprobs for r in parts], 0.0),
            group_ids=torch.cat(group_ids),
            responses=[s for r in parts for s in r.responses],
            truncated=torch.cat([r.truncated for r in parts]),
            sampler_logprobs=None
            if any(r.sampler_logprobs is None for r in parts)
            else pad_to_width([r.sampler_logprobs for r in parts if r.sampler_logprobs is not None], 0.0),
        )


def select_rows(record: Any, index: torch.Tensor) -> Any:
    """A copy of the row-major dataclass ``record`` holding rows ``index`` of every field (tensors and lists
    indexed along their first dimension; None stays None). ``Rollout`` and the update's batch share it."""
    out: dict[str, Any] = {}
    for f in fields(record):
        value = getattr(record, f.name)
        if value is None:
            out[f.name] = None
        else:
            out[f.name] = [value[i] for i in index.tolist()] if isinstance(value, list) else value[index]
    return type(record)(**out)


class GenerationEngine(Protocol):
    """What the trainer needs from a generator."""

    def generate(
        self,
        prompts: list[str],
        *,
        n: int,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_p: float = 1.0,
        seed: int = 0,
    ) -> Rollout: ...

    def sync_weights(self, model: torch.nn.Module, version: int | None = None) -> None:
        """Make the engine sample from ``model``'s current weights (``version``: skip if already synced)."""
        ...
