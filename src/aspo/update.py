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

    def without_tokens(self, pad_token_id: int) -> UpdateBatch:
        """A one-row batch with no valid token (zero loss and gradient): keeps DDP's collective calls matched
        on a rank that has no data for this mini-batch."""
        if len(self):
            one = self.rows(torch.arange(1))
        else:
            ids = torch.full((1, 1), pad_token_id)
            one = UpdateBatch(ids, torch.ones(1, 1, dtype=torch.bool), ids.clone(),
                              torch.zeros(1, 1, dtype=torch.bool), torch.zeros(1, 1), torch.zeros(1))
        one.response_mask = torch.zeros_like(one.response_mask)
        return one


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
    """``token_logprobs`` without padding and with each distinct prompt computed once.

    For models that ``packing_applies`` to. The real tokens are packed into one (T, H) sequence for the
    embeddings, projections, norms, MLPs and the LM head -- most of the compute -- and only attention is
    laid out per row. A prompt's hidden states do not depend on the response that follows it, so the G
    responses of a group share one copy of their prompt (its keys and values are indexed into every
    response row; autograd sums their gradients): T = distinct prompt tokens + response tokens, instead of
    rows x (P + R) in the padded forward. Same values and gradients, up to float summation order.
    """
    from aspo.rollout.hf import apply_rotary, head_counts

    base = model.model
    device = base.embed_tokens.weight.device
    prompt_ids, prompt_mask = prompt_ids.to(device), prompt_mask.to(device)
    response_ids, valid = response_ids.to(device), response_mask.to(device)
    rows, resp_len = response_ids.shape
    # distinct prompts (padding included in the key: rows of one group are padded alike)
    distinct, group = torch.unique(prompt_ids.masked_fill(~prompt_mask, -1), dim=0, return_inverse=True)
    p_mask = distinct >= 0  # (U, P)
    n_prompts, prompt_len = distinct.shape
    p_real = p_mask.view(-1).nonzero().squeeze(-1)  # flat indices into (U * P)
    r_real = valid.view(-1).nonzero().squeeze(-1)  # flat indices into (rows * R)
    n_p = len(p_real)
    p_positions = (p_mask.long().cumsum(-1) - 1).clamp(min=0)
    r_positions = p_mask.sum(-1)[group][:, None] + torch.arange(resp_len, device=device)
    tokens = torch.cat([distinct.clamp(min=0).view(-1)[p_real], response_ids.view(-1)[r_real]])
    positions = torch.cat([p_positions.view(-1)[p_real], r_positions.view(-1)[r_real]])
    x = base.embed_tokens(tokens)  # (T, H)
    cos, sin = base.rotary_emb(x[None], positions[None])  # (1, T, head_dim)
    cos, sin = cos[0, :, None].to(x.dtype), sin[0, :, None].to(x.dtype)
    # prompts attend causally within themselves; responses to their prompt and causally to themselves.
    # A padding query sees itself so that no softmax row is empty (its output is never read).
    def causal(n: int) -> torch.Tensor:
        return torch.ones(n, n, dtype=torch.bool, device=device).tril()

    eye_p, eye_r = torch.eye(prompt_len, dtype=torch.bool, device=device), torch.eye(resp_len, dtype=torch.bool,
                                                                                     device=device)
    p_attn = (causal(prompt_len) & p_mask[:, None, None, :]) | eye_p
    r_attn = torch.cat([p_mask[group][:, None, None, :].expand(rows, 1, resp_len, prompt_len),
                        (causal(resp_len) & valid[:, None, None, :]) | eye_r], dim=-1)

    def unpack(t: torch.Tensor, real: torch.Tensor, n: int, width: int) -> torch.Tensor:
        """(N, heads, d) packed -> (n, heads, width, d), zeros on padding."""
        full = t.new_zeros(n * width, *t.shape[1:]).index_copy(0, real, t)
        return full.view(n, width, *t.shape[1:]).transpose(1, 2)

    sdpa = torch.nn.functional.scaled_dot_product_attention
    for layer in base.layers:  # the layer's own modules, token-wise on (T, H); attention per row
        attn = layer.self_attn
        heads, kv_heads, head_dim = head_counts(attn)
        gqa = kv_heads != heads
        h = layer.input_layernorm(x)
        q = apply_rotary(attn.q_proj(h).view(-1, heads, head_dim), cos, sin)
        k = apply_rotary(attn.k_proj(h).view(-1, kv_heads, head_dim), cos, sin)
        v = attn.v_proj(h).view(-1, kv_heads, head_dim)
        kp, vp = unpack(k[:n_p], p_real, n_prompts, prompt_len), unpack(v[:n_p], p_real, n_prompts, prompt_len)
        out_p = sdpa(unpack(q[:n_p], p_real, n_prompts, prompt_len), kp, vp, attn_mask=p_attn,
                     scale=attn.scaling, enable_gqa=gqa)
        k_rows = torch.cat([kp[group], unpack(k[n_p:], r_real, rows, resp_len)], dim=2)
        v_rows = torch.cat([vp[group], unpack(v[n_p:], r_real, rows, resp_len)], dim=2)
        out_r = sdpa(unpack(q[n_p:], r_real, rows, resp_len), k_rows, v_rows, attn_mask=r_attn,
                     scale=attn.scaling, enable_gqa=gqa)
        out = torch.cat([out_p.transpose(1, 2).reshape(n_prompts * prompt_len, -1)[p_real],
                         out_r.transpose(1, 2).reshape(rows * resp_len, -1)[r_real]])
        x = x + attn.o_proj(out)
        x = x + layer.mlp(layer.post_attention_layernorm(x))
    # response token 0 is predicted by its prompt's last token, token j > 0 by response token j - 1
    p_index = torch.full((n_prompts * prompt_len,), -1, dtype=torch.long, device=device)
    p_index[p_real] = torch.arange(n_p, device=device)
    r_index = torch.full((rows * resp_len,), -1, dtype=torch.long, device=device)
    r_index[r_real] = n_p + torch.arange(len(r_real), device=device)
    predictor = torch.cat([p_index.view(n_prompts, prompt_len)[group, -1:], r_index.view(rows, resp_len)[:, :-1]], 1)
    hidden = base.norm(x[predictor[valid]])
    logp, ent = _logprobs_and_entropy(model.lm_head(hidden), response_ids[valid],
                                      torch.ones(len(hidden), dtype=torch.bool, device=device), temperature,
                                      with_entropy)
    logprobs = logp.new_zeros(rows * resp_len).index_copy(0, r_real, logp).view_as(valid)
    entropy = None if ent is None else ent.new_zeros(rows * resp_len).index_copy(0, r_real, ent).view_as(valid)
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
