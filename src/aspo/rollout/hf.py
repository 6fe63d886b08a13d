"""Generation with a plain transformers model: batched, KV-cached, temperature / top-p, stops at EOS.

A hand-written sampling loop instead of ``model.generate``: it returns the behaviour log-probs of the
sampled tokens from the same logits it samples from (no second forward), and it skips generate()'s
per-call setup, which dominates for small models.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch

from aspo.rollout.base import NonFiniteError, Rollout


def sample_token(logits: torch.Tensor, temperature: float, top_p: float,
                 generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample one token per row.

    logits (B, V) -> (tokens (B,) long, logprobs (B,) float32 of those tokens under softmax(logits / T)).
    Top-p truncation changes what can be sampled, not the reported log-prob: like verl and TRL, the
    behaviour policy is the tempered softmax, which is what the trainer recomputes.
    """
    logprobs = torch.log_softmax(logits.float() / temperature, dim=-1)
    probs = logprobs.exp()
    if not bool(torch.isfinite(probs).all()):
        raise NonFiniteError("the policy produced non-finite logits while sampling")
    if top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        # keep the smallest prefix whose mass reaches top_p (always at least the top token)
        drop = sorted_probs.cumsum(-1) - sorted_probs >= top_p
        sorted_probs = sorted_probs.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter_(-1, order, sorted_probs)
    tokens = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
    return tokens, logprobs.gather(-1, tokens[:, None]).squeeze(-1)


class HFEngine:
    """Samples from a `transformers` causal LM that the trainer also updates (weights are shared)."""

    def __init__(self, model: torch.nn.Module, tokenizer: Any, max_batch_size: int = 0,
                 add_special_tokens: bool = True) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.max_batch_size = max_batch_size  # 0: all rows at once
        # the tokenizer's own convention (e.g. a BOS token); off for chat-templated prompts, which carry it
        self.add_special_tokens = add_special_tokens
        if tokenizer.pad_token_id is None:
            raise ValueError("the tokenizer has no pad token; set tokenizer.pad_token first")
        self.eos_ids = _eos_ids(model, tokenizer)

    def sync_weights(self, model: torch.nn.Module, version: int | None = None) -> None:
        self.model = model  # same process, same tensors: nothing to copy

    @torch.no_grad()
    def generate(self, prompts: list[str], *, n: int, max_new_tokens: int, temperature: float = 1.0,
                 top_p: float = 1.0, seed: int = 0) -> Rollout:
        if not prompts:
            raise ValueError("no prompts to generate from")
        tok = self.tokenizer
        side = tok.padding_side
        tok.padding_side = "left"
        try:
            enc = tok(list(prompts), return_tensors="pt", padding=True,
                      add_special_tokens=self.add_special_tokens)
        finally:
            tok.padding_side = side
        prompt_ids = enc["input_ids"].repeat_interleave(n, dim=0)
        prompt_mask = enc["attention_mask"].bool().repeat_interleave(n, dim=0)
        generator = torch.Generator().manual_seed(int(seed))
        rows = prompt_ids.shape[0]
        chunk = self.max_batch_size or rows
        parts = [self._sample(prompt_ids[i:i + chunk], prompt_mask[i:i + chunk], max_new_tokens,
                              temperature, top_p, generator) for i in range(0, rows, chunk)]
        response_ids = _pad_right([p[0] for p in parts], tok.pad_token_id)
        response_mask = _pad_right([p[1] for p in parts], False)
        logprobs = _pad_right([p[2] for p in parts], 0.0)
        lengths = response_mask.sum(-1)
        last = response_ids.gather(1, (lengths - 1).clamp(min=0)[:, None]).squeeze(1)
        ended = (lengths > 0) & torch.isin(last, torch.tensor(self.eos_ids))
        texts = [tok.decode(ids[: int(length) - int(e)], skip_special_tokens=False)
                 for ids, length, e in zip(response_ids, lengths, ended, strict=True)]
        return Rollout(
            prompt_ids=prompt_ids, prompt_mask=prompt_mask, response_ids=response_ids,
            response_mask=response_mask, behaviour_logprobs=logprobs,
            group_ids=torch.arange(len(prompts)).repeat_interleave(n), responses=texts,
            truncated=~ended,
        )

    def _sample(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, max_new_tokens: int,
                temperature: float, top_p: float, generator: torch.Generator
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One batch: returns response ids, mask and log-probs, each (rows, steps taken)."""
        model = self.model
        device = next(model.parameters()).device
        rows = prompt_ids.shape[0]
        attention = prompt_mask.long().to(device)
        positions = (attention.cumsum(-1) - 1).clamp(min=0)
        eos = torch.tensor(self.eos_ids, device=device)
        # transformers >= 5.2x names the KV cache `cache`; older releases `past_key_values`
        cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
        out = model(input_ids=prompt_ids.to(device), attention_mask=attention, position_ids=positions,
                    use_cache=True, logits_to_keep=1)
        cache = out[cache_arg]
        next_pos = positions[:, -1:] + 1
        done = torch.zeros(rows, dtype=torch.bool, device=device)
        tokens, masks, logps = [], [], []
        for step in range(max_new_tokens):
            token, logp = sample_token(out.logits[:, -1], temperature, top_p, generator)
            token = token.to(device)
            alive = ~done
            tokens.append(torch.where(alive, token, self.tokenizer.pad_token_id))
            masks.append(alive)
            logps.append(torch.where(alive, logp.to(device), 0.0))
            done = done | torch.isin(token, eos)
            if bool(done.all()) or step == max_new_tokens - 1:
                break
            attention = torch.cat([attention, torch.ones(rows, 1, dtype=attention.dtype, device=device)], 1)
            out = model(input_ids=tokens[-1][:, None], attention_mask=attention, position_ids=next_pos,
                        use_cache=True, **{cache_arg: cache})
            cache = out[cache_arg]
            next_pos = next_pos + 1
        return (torch.stack(tokens, 1).cpu(), torch.stack(masks, 1).cpu(), torch.stack(logps, 1).float().cpu())


def _eos_ids(model: torch.nn.Module, tokenizer: Any) -> list[int]:
    ids = {tokenizer.eos_token_id}
    gen_cfg = getattr(model, "generation_config", None)
    extra = getattr(gen_cfg, "eos_token_id", None)
    ids.update(extra if isinstance(extra, (list, tuple)) else [extra])
    ids.discard(None)
    if not ids:
        raise ValueError("neither the tokenizer nor the model's generation config names an EOS token")
    return sorted(ids)


def _pad_right(parts: list[torch.Tensor], value: float | int | bool) -> torch.Tensor:
    width = max(p.shape[1] for p in parts)
    return torch.cat([torch.nn.functional.pad(p, (0, width - p.shape[1]), value=value) for p in parts])
