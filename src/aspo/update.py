"""The update stage: current log-probs and entropy in one forward, objective, backward.

Pure functions of (model, batch); the optimizer step and all state stay in the trainer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from aspo.rollout.base import Rollout


@dataclass
class UpdateBatch:
    """The tensors of one (mini-/micro-)batch of responses, all (rows, R) unless noted."""

    prompt_ids: torch.Tensor          # (rows, P)
    prompt_mask: torch.Tensor         # (rows, P) bool
    response_ids: torch.Tensor
    response_mask: torch.Tensor       # bool
    behaviour_logprobs: torch.Tensor
    advantages: torch.Tensor          # (rows,)
    ref_logprobs: torch.Tensor | None = None

    @staticmethod
    def from_rollout(rollout: Rollout, advantages: torch.Tensor,
                     ref_logprobs: torch.Tensor | None = None) -> UpdateBatch:
        return UpdateBatch(rollout.prompt_ids, rollout.prompt_mask, rollout.response_ids,
                           rollout.response_mask, rollout.behaviour_logprobs, advantages, ref_logprobs)

    def rows(self, index: torch.Tensor) -> UpdateBatch:
        """Select rows and trim columns that are padding in every selected row."""
        prompt_mask = self.prompt_mask[index]
        response_mask = self.response_mask[index]
        p_keep = int(prompt_mask.any(0).nonzero().min()) if prompt_mask.any() else prompt_mask.shape[1] - 1
        r_keep = int(response_mask.any(0).nonzero().max()) + 1 if response_mask.any() else 1
        return UpdateBatch(
            prompt_ids=self.prompt_ids[index, p_keep:], prompt_mask=prompt_mask[:, p_keep:],
            response_ids=self.response_ids[index, :r_keep], response_mask=response_mask[:, :r_keep],
            behaviour_logprobs=self.behaviour_logprobs[index, :r_keep], advantages=self.advantages[index],
            ref_logprobs=None if self.ref_logprobs is None else self.ref_logprobs[index, :r_keep],
        )

    def __len__(self) -> int:
        return self.prompt_ids.shape[0]


def token_logprobs(model: torch.nn.Module, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
                   response_ids: torch.Tensor, response_mask: torch.Tensor, *, temperature: float = 1.0,
                   with_entropy: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs of the response tokens (and the policy entropy at each position) in one forward.

    prompt_ids/prompt_mask (B, P) left-padded; response_ids/response_mask (B, R) right-padded.
    Returns logprobs (B, R) float32 and entropy (B, R) float32 (or None), both zero on padding.
    Logits are divided by ``temperature`` so the numbers match what the sampler used.

    A plain (not DDP-wrapped) Llama-style model takes ``packed_token_logprobs``: same numbers, no compute
    spent on padding. Anything else takes ``padded_token_logprobs``.
    """
    if packing_applies(model, prompt_mask):
        return packed_token_logprobs(model, prompt_ids, prompt_mask, response_ids, response_mask,
                                     temperature=temperature, with_entropy=with_entropy)
    return padded_token_logprobs(model, prompt_ids, prompt_mask, response_ids, response_mask,
                                 temperature=temperature, with_entropy=with_entropy)


def padded_token_logprobs(model: torch.nn.Module, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
                          response_ids: torch.Tensor, response_mask: torch.Tensor, *, temperature: float = 1.0,
                          with_entropy: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``token_logprobs`` through the model's own forward on the padded (B, P + R) batch (any model)."""
    device = next(model.parameters()).device
    ids = torch.cat([prompt_ids, response_ids], dim=1).to(device)
    mask = torch.cat([prompt_mask, response_mask], dim=1).long().to(device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    resp_len = response_ids.shape[1]
    # only the logits that predict response tokens: positions P-1 .. P+R-2
    logits = model(input_ids=ids, attention_mask=mask, position_ids=positions,
                   logits_to_keep=resp_len + 1).logits[:, :-1]
    return _logprobs_and_entropy(logits, response_ids.to(device), response_mask.to(device), temperature,
                                 with_entropy)


def _logprobs_and_entropy(logits: torch.Tensor, response_ids: torch.Tensor, valid: torch.Tensor,
                          temperature: float, with_entropy: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """logits (..., V) at the positions predicting response_ids (...) -> (logprobs, entropy), 0 where ~valid."""
    logits = logits.float()
    if temperature != 1.0:
        logits = logits / temperature
    logp_all = torch.log_softmax(logits, dim=-1)
    logprobs = logp_all.gather(-1, response_ids[..., None]).squeeze(-1).masked_fill(~valid, 0.0)
    entropy = None
    if with_entropy:
        entropy = -(logp_all.exp() * logp_all).sum(-1).masked_fill(~valid, 0.0)
    return logprobs, entropy


def packing_applies(model: torch.nn.Module, prompt_mask: torch.Tensor) -> bool:
    """The packed path needs the model's own layers (no DDP wrapper, no gradient checkpointing, no attention
    dropout while training) and a real last prompt token in every row (it predicts the first response token)."""
    from aspo.rollout.hf import lean_supported

    if not lean_supported(model):
        return False
    # transformers >= 5.2x calls it activation checkpointing; older releases gradient checkpointing
    checkpointing = getattr(model, "is_activation_checkpointing", None)
    if checkpointing if checkpointing is not None else getattr(model, "is_gradient_checkpointing", False):
        return False
    if model.training and getattr(model.config, "attention_dropout", 0.0):
        return False
    return prompt_mask.shape[1] > 0 and bool(prompt_mask[:, -1].all())


def packed_token_logprobs(model: torch.nn.Module, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
                          response_ids: torch.Tensor, response_mask: torch.Tensor, *, temperature: float = 1.0,
                          with_entropy: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``token_logprobs`` with padding-free token-wise layers (for models that ``packing_applies`` to).

    The real tokens of all rows are packed into one (T, H) sequence for the embeddings, projections, norms,
    MLPs and the LM head -- most of the compute -- and only attention is laid out per row. Padding in an RL
    batch is large (prompts of mixed length, responses ending at EOS), and none of it is computed here.
    """
    from aspo.rollout.hf import apply_rotary, head_counts

    base = model.model
    device = base.embed_tokens.weight.device
    ids = torch.cat([prompt_ids, response_ids], dim=1).to(device)
    mask = torch.cat([prompt_mask, response_mask], dim=1).to(device)
    rows, width = ids.shape
    prompt_len = prompt_ids.shape[1]
    positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
    real = mask.view(-1).nonzero().squeeze(-1)  # (T,) flat indices of real tokens
    x = base.embed_tokens(ids.view(-1)[real])  # (T, H)
    cos, sin = base.rotary_emb(x[None], positions.view(-1)[real][None])  # (1, T, head_dim)
    cos, sin = cos[0, :, None].to(x.dtype), sin[0, :, None].to(x.dtype)
    causal = torch.ones(width, width, dtype=torch.bool, device=device).tril()
    attn_mask = (causal & mask[:, None, None, :]) | torch.eye(width, dtype=torch.bool, device=device)

    def unpack(t: torch.Tensor) -> torch.Tensor:  # (T, heads, d) -> (rows, heads, width, d), zeros on padding
        full = t.new_zeros(rows * width, *t.shape[1:]).index_copy(0, real, t)
        return full.view(rows, width, *t.shape[1:]).transpose(1, 2)

    for layer in base.layers:  # the layer's own modules, token-wise on (T, H); attention per row
        attn = layer.self_attn
        heads, kv_heads, head_dim = head_counts(attn)
        h = layer.input_layernorm(x)
        q = apply_rotary(attn.q_proj(h).view(-1, heads, head_dim), cos, sin)
        k = apply_rotary(attn.k_proj(h).view(-1, kv_heads, head_dim), cos, sin)
        v = attn.v_proj(h).view(-1, kv_heads, head_dim)
        out = torch.nn.functional.scaled_dot_product_attention(
            unpack(q), unpack(k), unpack(v), attn_mask=attn_mask, scale=attn.scaling,
            enable_gqa=kv_heads != heads)
        x = x + attn.o_proj(out.transpose(1, 2).reshape(rows * width, heads * head_dim)[real])
        x = x + layer.mlp(layer.post_attention_layernorm(x))
    # the hidden state at column P-1+j predicts response token j
    packed_index = torch.full((rows * width,), -1, dtype=torch.long, device=device)
    packed_index[real] = torch.arange(len(real), device=device)
    valid = response_mask.to(device)
    cols = prompt_len - 1 + torch.arange(response_ids.shape[1], device=device)
    predict = packed_index[(torch.arange(rows, device=device)[:, None] * width + cols)[valid]]
    hidden = base.norm(x[predict])
    logits = model.lm_head(hidden)
    resp = response_ids.to(device)
    logp, ent = _logprobs_and_entropy(logits, resp[valid], torch.ones_like(predict, dtype=torch.bool), temperature,
                                      with_entropy)
    flat_valid = valid.view(-1).nonzero().squeeze(-1)
    size = rows * response_ids.shape[1]
    logprobs = logp.new_zeros(size).index_copy(0, flat_valid, logp).view_as(valid)
    entropy = None if ent is None else ent.new_zeros(size).index_copy(0, flat_valid, ent).view_as(valid)
    return logprobs, entropy


def normaliser_scale(response_mask: torch.Tensor, loss_agg_mode: str, global_tokens: float,
                     global_seqs: float, world_size: int) -> float:
    """Factor that turns a micro-batch's own mean into its share of the global mean.

    ``policy_loss`` averages over the tokens (or sequences) it is given; a mini-batch split into micro-
    batches, or across data-parallel ranks whose gradients DDP averages, must weight each part by its
    share of the global count so that the summed gradient equals the one-batch gradient.
    """
    if loss_agg_mode == "token-mean":
        local, total = float(response_mask.sum()), global_tokens
    else:
        local, total = float(response_mask.any(-1).sum()), global_seqs
    return local * world_size / max(total, 1.0)


def micro_batches(batch: UpdateBatch, size: int) -> list[UpdateBatch]:
    """Split into micro-batches of ``size`` rows (0: one micro-batch)."""
    n = len(batch)
    if size <= 0 or size >= n:
        return [batch.rows(torch.arange(n))]
    return [batch.rows(torch.arange(i, min(i + size, n))) for i in range(0, n, size)]


def mean_metrics(rows: list[dict[str, float]]) -> dict[str, float]:
    """Average dicts key by key (a key absent from a row is not counted for that row)."""
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    for row in rows:
        for key, value in row.items():
            sums[key] = sums.get(key, 0.0) + float(value)
            counts[key] = counts.get(key, 0) + 1
    return {key: sums[key] / counts[key] for key in sums}


def objective_params(algorithm: Any) -> dict[str, Any]:
    """The keyword parameters of ``policy_loss`` from an AlgorithmConfig (None means: the default)."""
    params = {
        "clip_ratio_low": algorithm.clip_ratio_low,
        "clip_ratio_high": algorithm.clip_ratio_high,
        "clip_ratio_c": algorithm.clip_ratio_c,
        "loss_agg_mode": algorithm.loss_agg_mode,
        "entropy_quantile": algorithm.entropy_quantile,
        "high_entropy_clip_ratio_low": algorithm.high_entropy_clip_ratio_low,
        "high_entropy_clip_ratio_high": algorithm.high_entropy_clip_ratio_high,
    }
    return {k: v for k, v in params.items() if v is not None}
