"""The Llama-style decoder layer, written once for the sampler and the trainer.

Both hot paths bypass transformers' module / mask / cache bookkeeping and apply the model's own weights
layer by layer: ``aspo.rollout.hf.lean_decode`` (static KV cache, one token per step) and
``aspo.models.logprobs.packed_token_logprobs`` (padding-free training forward). They share everything
here: which models qualify, rotary, the attention masks, the prompt de-duplication and the layer itself;
only how attention is laid out (``attend``) differs. A transformers change that touches the layer is fixed
here once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

_LEAN_MODEL_TYPES = ("qwen2", "llama", "mistral")


def lean_supported(model: torch.nn.Module) -> bool:
    """True for a decoder whose every layer is exactly: RMSNorm, rotary GQA attention, RMSNorm, SwiGLU MLP."""
    cfg = getattr(model, "config", None)
    base: Any = getattr(model, "model", None)
    if cfg is None or base is None or getattr(cfg, "model_type", None) not in _LEAN_MODEL_TYPES:
        return False
    if getattr(cfg, "hidden_act", None) != "silu" or getattr(cfg, "pretraining_tp", 1) != 1:
        return False
    if getattr(cfg, "use_sliding_window", False) or (cfg.model_type == "mistral" and cfg.sliding_window):
        return False
    if any(t != "full_attention" for t in getattr(cfg, "layer_types", None) or ()):
        return False
    if not all(hasattr(base, name) for name in ("embed_tokens", "layers", "norm", "rotary_emb")):
        return False
    return all(not hasattr(layer.self_attn, "q_norm") for layer in base.layers)


def head_counts(attn: Any) -> tuple[int, int, int]:
    """(query heads, key/value heads, head dim) of a Llama-style attention module."""
    return attn.q_proj.out_features // attn.head_dim, attn.k_proj.out_features // attn.head_dim, attn.head_dim


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding as transformers' Llama/Qwen2 ``apply_rotary_pos_emb`` (rotate-half convention)."""
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin


def distinct_prompts(
    prompt_ids: torch.Tensor, prompt_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The G samples of a group share their prompt: compute each distinct prompt once.

    prompt_ids/prompt_mask (rows, P) left-padded -> (first_row (U,) long: the first row holding each distinct
    prompt, group (rows,) long: which distinct prompt each row holds). Padding is part of the key (rows of
    one group are padded alike).
    """
    rows = prompt_ids.shape[0]
    _, group = torch.unique(prompt_ids.masked_fill(~prompt_mask, -1), dim=0, return_inverse=True)
    arange = torch.arange(rows, device=prompt_ids.device)
    first_row = torch.full((int(group.max()) + 1,), rows, device=prompt_ids.device).scatter_reduce(
        0, group, arange, reduce="amin"
    )
    return first_row, group


def self_attention_mask(valid: torch.Tensor) -> torch.Tensor:
    """valid (n, L) bool -> (n, 1, L, L) bool, True = may attend: causal over the valid keys.

    A padding query sees itself so that no softmax row is empty (its output is never read).
    """
    length = valid.shape[1]
    causal = torch.ones(length, length, dtype=torch.bool, device=valid.device).tril()
    return (causal & valid[:, None, None, :]) | torch.eye(length, dtype=torch.bool, device=valid.device)


def rotary_tables(base: Any, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """positions (..., T) long -> cos, sin (..., T, 1, head_dim) in the model's dtype, to broadcast over the
    heads of (..., T, heads, head_dim) queries and keys."""
    weight = base.embed_tokens.weight
    flat = positions.reshape(1, -1) if positions.dim() == 1 else positions
    cos, sin = base.rotary_emb(weight[:1], flat)
    shape = (*positions.shape, 1, cos.shape[-1])
    return cos.reshape(shape).to(weight.dtype), sin.reshape(shape).to(weight.dtype)


# attend(q (..., T, heads, d), k (..., T, kv_heads, d), v (..., T, kv_heads, d)) -> (..., T, heads * d)
Attend = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def decoder_layer(
    layer: Any, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, attend: Attend
) -> torch.Tensor:
    """One decoder layer with its own modules: x (..., T, H) -> (..., T, H).

    Norms, projections, rotary and the MLP are token-wise; ``attend`` receives the rotated queries and keys
    and the values, each (..., T, heads, head_dim), and lays attention out as its caller needs (per row
    over packed tokens, or against a KV cache). cos/sin as from ``rotary_tables``.
    """
    attn = layer.self_attn
    heads, kv_heads, head_dim = head_counts(attn)
    lead = x.shape[:-1]
    h = layer.input_layernorm(x)
    q = apply_rotary(attn.q_proj(h).view(*lead, heads, head_dim), cos, sin)
    k = apply_rotary(attn.k_proj(h).view(*lead, kv_heads, head_dim), cos, sin)
    v = attn.v_proj(h).view(*lead, kv_heads, head_dim)
    x = x + attn.o_proj(attend(q, k, v))
    return x + layer.mlp(layer.post_attention_layernorm(x))
