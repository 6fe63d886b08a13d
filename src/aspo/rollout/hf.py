"""Generation with a plain transformers model: batched, KV-cached, temperature / top-p, stops at EOS.

A hand-written sampling loop instead of ``model.generate``: it returns the behaviour log-probs of the
sampled tokens from the same logits it samples from (no second forward), and it skips generate()'s
per-call setup, which dominates for small models.

Llama-style decoders (Qwen2, Llama, Mistral without sliding windows) take a leaner path (``lean_decode``):
the model's own weights applied layer by layer (``aspo.models.llama.decoder_layer``, the trainer's layer
too) with a preallocated (static) KV cache, and rows that have ended dropped from the batch. Per decoded
token it issues a few tensor ops per layer instead of transformers' module / mask / cache bookkeeping, which
is most of the time for a small model on a CPU
(benchmarks/vs_trl.py: about 4x fewer seconds per rollout on the tiny lab model). Other models use the
generic loop with transformers' own cache.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
import torch.nn.functional as F

from aspo.errors import NonFiniteError
from aspo.models.head import autocast_dtype, head_logits, matmul_weights
from aspo.models.llama import (
    Attend,
    decoder_layer,
    distinct_prompts,
    head_counts,
    lean_supported,
    rotary_tables,
    self_attention_mask,
)
from aspo.precision import FP32, Precision
from aspo.rollout.base import Rollout, pad_to_width


def sample_token(
    logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample one token per row.

    logits (B, V) -> (tokens (B,) long, logprobs (B,) float32 of those tokens under softmax(logits / T)).
    Top-p truncation changes what can be sampled, not the reported log-prob: like verl and TRL, the
    behaviour policy is the tempered softmax, which is what the trainer recomputes.
    """
    logprobs = torch.log_softmax(logits.float() / temperature, dim=-1)
    # a NaN or +inf logit makes its row's log-softmax NaN, and max propagates NaN: one (B,) check
    if not bool(torch.isfinite(logprobs.amax(-1)).all()):
        raise NonFiniteError("the policy produced non-finite logits while sampling")
    probs = logprobs.exp()
    if top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        # keep the smallest prefix whose mass reaches top_p (always at least the top token)
        drop = sorted_probs.cumsum(-1) - sorted_probs >= top_p
        sorted_probs = sorted_probs.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter_(-1, order, sorted_probs)
    tokens = inverse_cdf_sample(probs, generator)
    return tokens, logprobs.gather(-1, tokens[:, None]).squeeze(-1)


def inverse_cdf_sample(weights: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One index per row, drawn with probability weights / row sum: weights (B, V) >= 0, each row with
    positive mass -> (B,) long.

    One uniform per row against the row's cumulative sum in float64 (exact to ~1e-16 of the mass, so a
    token's frequency is its probability even at 1e-9). ``torch.multinomial`` draws an exponential per
    vocabulary entry instead (Gumbel-max): at 64 rows x 49k it took 60 ms of a ~250 ms SmolLM2 decode
    step on one core, this ~5 ms. A zero weight is never drawn.
    """
    cdf = weights.double().cumsum_(-1)
    total = cdf[:, -1:]
    u = torch.rand(total.shape, generator=generator, dtype=torch.float64).to(cdf.device) * total
    # u < total even where r * total rounds up to it: the index stays on a token with positive weight
    u = torch.minimum(u, torch.nextafter(total, torch.zeros_like(total)))
    return torch.searchsorted(cdf, u, right=True).squeeze(-1)


class HFEngine:
    """Samples from a `transformers` causal LM that the trainer also updates (weights are shared)."""

    def __init__(
        self, model: torch.nn.Module, tokenizer: Any, max_batch_size: int = 0, add_special_tokens: bool = True
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.max_batch_size = max_batch_size  # 0: all rows at once
        # the tokenizer's own convention (e.g. a BOS token); off for chat-templated prompts, which carry it
        self.add_special_tokens = add_special_tokens
        if tokenizer.pad_token_id is None:
            raise ValueError("the tokenizer has no pad token; set tokenizer.pad_token first")
        self.eos_ids = _eos_ids(model, tokenizer)
        self.lean = True  # use lean_decode where the architecture allows it (False: always the generic loop)
        self.precision: Precision = FP32  # the trainer's (train.precision): sampling runs in its autocast

    def sync_weights(self, model: torch.nn.Module, version: int | None = None) -> None:
        self.model = model  # same process, same tensors: nothing to copy

    @torch.no_grad()
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
        if not prompts:
            raise ValueError("no prompts to generate from")
        tok = self.tokenizer
        side = tok.padding_side
        tok.padding_side = "left"
        try:
            enc = tok(
                list(prompts), return_tensors="pt", padding=True, add_special_tokens=self.add_special_tokens
            )
        finally:
            tok.padding_side = side
        prompt_ids = enc["input_ids"].repeat_interleave(n, dim=0)
        prompt_mask = enc["attention_mask"].bool().repeat_interleave(n, dim=0)
        generator = torch.Generator().manual_seed(int(seed))
        rows = prompt_ids.shape[0]
        chunk = self.max_batch_size or rows
        sample = self._sample
        if self.lean and lean_supported(self.model):
            sample = self._sample_lean
        with self.precision.autocast():
            parts = [
                sample(
                    prompt_ids[i : i + chunk],
                    prompt_mask[i : i + chunk],
                    max_new_tokens,
                    temperature,
                    top_p,
                    generator,
                )
                for i in range(0, rows, chunk)
            ]
        response_ids = pad_to_width([p[0] for p in parts], tok.pad_token_id)
        response_mask = pad_to_width([p[1] for p in parts], False)
        logprobs = pad_to_width([p[2] for p in parts], 0.0)
        lengths = response_mask.sum(-1)
        last = response_ids.gather(1, (lengths - 1).clamp(min=0)[:, None]).squeeze(1)
        ended = (lengths > 0) & torch.isin(last, torch.tensor(self.eos_ids))
        texts = [
            tok.decode(ids[: int(length) - int(e)], skip_special_tokens=False)
            for ids, length, e in zip(response_ids, lengths, ended, strict=True)
        ]
        return Rollout(
            prompt_ids=prompt_ids,
            prompt_mask=prompt_mask,
            response_ids=response_ids,
            response_mask=response_mask,
            behaviour_logprobs=logprobs,
            group_ids=torch.arange(len(prompts)).repeat_interleave(n),
            responses=texts,
            truncated=~ended,
        )

    def _sample(
        self,
        prompt_ids: torch.Tensor,
        prompt_mask: torch.Tensor,
        max_new_tokens: int,
        temperature: float,
        top_p: float,
        generator: torch.Generator,
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
        out = model(
            input_ids=prompt_ids.to(device),
            attention_mask=attention,
            position_ids=positions,
            use_cache=True,
            logits_to_keep=1,
        )
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
            out = model(
                input_ids=tokens[-1][:, None],
                attention_mask=attention,
                position_ids=next_pos,
                use_cache=True,
                **{cache_arg: cache},
            )
            cache = out[cache_arg]
            next_pos = next_pos + 1
        return (
            torch.stack(tokens, 1).cpu(),
            torch.stack(masks, 1).cpu(),
            torch.stack(logps, 1).float().cpu(),
        )

    def _sample_lean(
        self,
        prompt_ids: torch.Tensor,
        prompt_mask: torch.Tensor,
        max_new_tokens: int,
        temperature: float,
        top_p: float,
        generator: torch.Generator,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """As ``_sample``, through ``lean_decode``."""
        eos = torch.tensor(self.eos_ids)

        def pick(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            token, logp = sample_token(logits, temperature, top_p, generator)
            return token, logp, torch.isin(token, eos.to(token.device))

        tokens, mask, logps = lean_decode(
            self.model, prompt_ids, prompt_mask, max_new_tokens, pick, self.tokenizer.pad_token_id
        )
        return tokens.cpu(), mask.cpu(), logps.float().cpu()


def _eos_ids(model: torch.nn.Module, tokenizer: Any) -> list[int]:
    ids = {tokenizer.eos_token_id}
    gen_cfg = getattr(model, "generation_config", None)
    extra = getattr(gen_cfg, "eos_token_id", None)
    ids.update(extra if isinstance(extra, (list, tuple)) else [extra])
    ids.discard(None)
    if not ids:
        raise ValueError("neither the tokenizer nor the model's generation config names an EOS token")
    return sorted(ids)


# -- the lean path (the layer itself: aspo.models.llama) ----------------------------------------------


def _cache_attention(
    k_cache: torch.Tensor, v_cache: torch.Tensor, start: int, mask: torch.Tensor, scaling: float
) -> Attend:
    """Attention of T new tokens against a static KV cache: writes their keys and values at cache columns
    start..start+T-1 (caches (rows, kv_heads, total, head_dim)); mask (rows, 1, T, start+T) bool, True = may
    attend."""

    def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        rows, width, heads, head_dim = q.shape
        kv_heads, end = k.shape[2], start + width
        k_cache[:, :, start:end] = k.transpose(1, 2)
        v_cache[:, :, start:end] = v.transpose(1, 2)
        if width == 1:  # one query per row: plain batched matmuls beat the fused kernel at this size
            q = q.view(rows, kv_heads, heads // kv_heads, head_dim)
            # scores (rows, kv_heads, group, end)
            scores = torch.matmul(q, k_cache[:, :, :end].transpose(-1, -2)) * scaling
            probs = torch.softmax(scores.masked_fill(~mask.view(rows, 1, 1, end), float("-inf")), dim=-1)
            return torch.matmul(probs, v_cache[:, :, :end]).reshape(rows, 1, heads * head_dim)
        out = F.scaled_dot_product_attention(
            q.transpose(1, 2),
            k_cache[:, :, :end],
            v_cache[:, :, :end],
            attn_mask=mask,
            scale=scaling,
            enable_gqa=kv_heads != heads,
        )
        return out.transpose(1, 2).reshape(rows, width, heads * head_dim)

    return attend


@torch.no_grad()
def lean_decode(
    model: torch.nn.Module,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    max_new_tokens: int,
    pick: Any,
    pad_id: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sample up to ``max_new_tokens`` per row from a ``lean_supported`` model with a static KV cache.

    prompt_ids/prompt_mask (rows, P) left-padded. ``pick(logits (r, V)) -> (tokens (r,), logprobs (r,),
    ended (r,) bool)`` samples the next token of the r rows still alive. Rows that have ended leave the
    batch (their cache rows are dropped) once they are a quarter of it. Returns tokens (pad after the end),
    mask and logprobs (0 after the end), each (rows, steps taken).
    """
    base: Any = model.model
    lm_head: Any = model.lm_head
    device = base.embed_tokens.weight.device
    # under autocast (precision bf16) the KV cache holds what the projections produce, and the head's
    # weight is cast once here rather than block by block at every step
    dtype = autocast_dtype(device.type) or base.embed_tokens.weight.dtype
    plain_head = type(lm_head) is torch.nn.Linear  # else (e.g. adapter-wrapped) through its own forward
    if plain_head:
        head_weight, head_bias = matmul_weights(lm_head.weight, lm_head.bias, dtype)
    rows, prompt_len = prompt_ids.shape
    total = prompt_len + max_new_tokens
    valid = torch.zeros(rows, total, dtype=torch.bool, device=device)  # key columns that hold real tokens
    valid[:, :prompt_len] = prompt_mask.to(device)
    first = (valid[:, :prompt_len].long().cumsum(-1) - 1).clamp(min=0)
    positions = torch.cat([first, first[:, -1:] + torch.arange(1, max_new_tokens + 1, device=device)], 1)
    cos, sin = rotary_tables(base, positions)  # (rows, total, 1, head_dim)
    out_tokens = torch.full((rows, max_new_tokens), pad_id, dtype=torch.long, device=device)
    out_mask = torch.zeros(rows, max_new_tokens, dtype=torch.bool, device=device)
    out_logps = torch.zeros(rows, max_new_tokens, dtype=torch.float32, device=device)
    live = torch.arange(rows, device=device)  # original row of each batch row
    done = torch.zeros(rows, dtype=torch.bool, device=device)  # per batch row: has sampled an EOS

    # prefill each distinct prompt once (the n samples of a group share it), then give every row its copy
    prompt_ids = prompt_ids.to(device)
    first_row, group = distinct_prompts(prompt_ids, valid[:, :prompt_len])
    mask = self_attention_mask(valid[first_row, :prompt_len])
    x = base.embed_tokens(prompt_ids[first_row])
    _, kv_heads, head_dim = head_counts(base.layers[0].self_attn)
    shared = [
        (
            torch.empty(len(first_row), kv_heads, total, head_dim, device=device, dtype=dtype),
            torch.empty(len(first_row), kv_heads, total, head_dim, device=device, dtype=dtype),
        )
        for _ in base.layers
    ]
    for layer, (k_cache, v_cache) in zip(base.layers, shared, strict=True):
        x = decoder_layer(
            layer,
            x,
            cos[first_row, :prompt_len],
            sin[first_row, :prompt_len],
            _cache_attention(k_cache, v_cache, 0, mask, layer.self_attn.scaling),
        )
    x = x[group]
    caches = [(k[group], v[group]) for k, v in shared]
    del shared
    steps = 0
    for step in range(max_new_tokens):
        last = base.norm(x[:, -1])
        logits = head_logits(last.to(dtype), head_weight, head_bias) if plain_head else lm_head(last)
        token, logp, ended = pick(logits)
        write = live[~done]
        out_tokens[write, step], out_logps[write, step] = token[~done], logp[~done].float()
        out_mask[write, step] = True
        steps = step + 1
        done = done | ended
        n_alive = len(live) - int(done.sum())
        if n_alive == 0 or step == max_new_tokens - 1:
            break
        if n_alive <= 3 * len(live) // 4:  # drop ended rows: later steps compute only live ones
            keep = (~done).nonzero().squeeze(-1)
            live, token, valid, cos, sin, done = (
                live[keep],
                token[keep],
                valid[keep],
                cos[keep],
                sin[keep],
                done[keep],
            )
            for i, (k, v) in enumerate(caches):  # layer by layer: one old layer beside the new caches
                caches[i] = (k[keep], v[keep])
        col = prompt_len + step
        valid[:, col] = True
        x = base.embed_tokens(token[:, None])
        mask = valid[:, None, None, : col + 1]
        for layer, (k_cache, v_cache) in zip(base.layers, caches, strict=True):
            x = decoder_layer(
                layer,
                x,
                cos[:, col : col + 1],
                sin[:, col : col + 1],
                _cache_attention(k_cache, v_cache, col, mask, layer.self_attn.scaling),
            )
    return out_tokens[:, :steps], out_mask[:, :steps], out_logps[:, :steps]
