"""Per-token log-probs and entropies of responses under a model: the trainer's forward.

One entry point, ``token_logprobs``, for the policy update, the behaviour-log-prob recomputation, the
reference model and evaluation. Two layouts give the same numbers: ``packed_token_logprobs`` (Llama-style
models, no compute on padding, each prompt once) and ``padded_token_logprobs`` (any model, through its
own forward). Both hand the final hidden states to ``aspo.models.head.head_logprobs``, which never holds
more than one chunk of vocabulary-sized rows. Both honour the model's activation checkpointing
(``enable_activation_checkpointing``, ``train.activation_checkpointing``): while training, each decoder
layer keeps only its input for the backward and is recomputed there.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils.checkpoint import checkpoint

from aspo.models.head import head_logprobs
from aspo.models.llama import decoder_layer, distinct_prompts, lean_supported, rotary_tables
from aspo.models.llama import self_attention_mask as attention_mask

# models whose logits are exactly lm_head(final hidden state): no soft-capping or scaling after the head
_PLAIN_HEAD_TYPES = ("llama", "mistral", "qwen2", "qwen3", "phi3", "gpt2", "olmo", "olmo2", "smollm3")


def token_logprobs(
    model: torch.nn.Module,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    response_ids: torch.Tensor,
    response_mask: torch.Tensor,
    *,
    temperature: float = 1.0,
    with_entropy: bool = True,
    chunk: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs of the response tokens (and the policy entropy at each position) in one forward.

    prompt_ids/prompt_mask (B, P) left-padded; response_ids/response_mask (B, R) right-padded.
    Returns logprobs (B, R) float32 and entropy (B, R) float32 (or None), both zero on padding.
    Logits are divided by ``temperature`` so the numbers match what the sampler used. ``chunk``: response
    tokens per LM-head chunk (None: about 64 MB of logits; 0: the whole batch's logits at once, the plain
    autograd path, kept to measure against).

    A plain (not DDP-wrapped) Llama-style model takes ``packed_token_logprobs``: same numbers, no compute
    spent on padding. Anything else takes ``padded_token_logprobs``.
    """
    forward = packed_token_logprobs if packing_applies(model, prompt_mask) else padded_token_logprobs
    return forward(
        model,
        prompt_ids,
        prompt_mask,
        response_ids,
        response_mask,
        temperature=temperature,
        with_entropy=with_entropy,
        chunk=chunk,
    )


def packing_applies(model: torch.nn.Module, prompt_mask: torch.Tensor) -> bool:
    """The packed path needs the model's own layers (no DDP wrapper, no attention dropout while training,
    whole weights: FSDP2 gathers its shards in the forwards this path bypasses) and a real last prompt
    token in every row (it predicts the first response token). It honours the model's activation
    checkpointing layer by layer, as the model's own forward would."""
    if not lean_supported(model):
        return False
    base: Any = model.model
    if type(base.embed_tokens.weight.data) is not torch.Tensor:  # a DTensor shard
        return False
    cfg: Any = model.config
    if model.training and bool(getattr(cfg, "attention_dropout", 0.0)):
        return False
    return prompt_mask.shape[1] > 0 and bool(prompt_mask[:, -1].all())


def padded_token_logprobs(
    model: torch.nn.Module,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    response_ids: torch.Tensor,
    response_mask: torch.Tensor,
    *,
    temperature: float = 1.0,
    with_entropy: bool = True,
    chunk: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``token_logprobs`` through the model's own forward on the padded (B, P + R) batch (any model)."""
    device = next(model.parameters()).device
    ids = torch.cat([prompt_ids, response_ids], dim=1).to(device)
    mask = torch.cat([prompt_mask, response_mask], dim=1).long().to(device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    response_ids, valid = response_ids.to(device), response_mask.to(device)
    resp_len = response_ids.shape[1]
    # only the states that predict response tokens (positions P-1 .. P+R-2); no KV cache to keep
    inputs: dict[str, Any] = {"input_ids": ids, "attention_mask": mask, "position_ids": positions}
    inputs.update(logits_to_keep=resp_len + 1, use_cache=False)
    head = _output_head(model) if chunk != 0 else None
    if head is None:  # logits through the model's own head, all at once
        logits = model(**inputs).logits[:, :-1]
        return _logprobs_and_entropy(logits, response_ids, valid, temperature, with_entropy)
    # the model's forward (through any DDP wrapper) up to the head's input; the head sees no positions
    captured: list[torch.Tensor] = []

    def keep_hidden(_: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        captured.append(args[0])
        return (args[0][..., :0, :], *args[1:])

    handle = head.register_forward_pre_hook(keep_hidden)
    try:
        model(**inputs)
    finally:
        handle.remove()
    hidden = captured[0][:, :-1][valid]  # (N, H): the states predicting the valid response tokens
    return _scatter(head, hidden, response_ids, valid, temperature, with_entropy, chunk)


def packed_token_logprobs(
    model: torch.nn.Module,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    response_ids: torch.Tensor,
    response_mask: torch.Tensor,
    *,
    temperature: float = 1.0,
    with_entropy: bool = True,
    chunk: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``token_logprobs`` without padding and with each distinct prompt computed once.

    For models that ``packing_applies`` to. The real tokens are packed into one (T, H) sequence for the
    embeddings, projections, norms, MLPs and the LM head -- most of the compute -- and only attention is
    laid out per row. A prompt's hidden states do not depend on the response that follows it, so the G
    responses of a group share one copy of their prompt (its keys and values are indexed into every
    response row; autograd sums their gradients): T = distinct prompt tokens + response tokens, instead of
    rows x (P + R) in the padded forward. Same values and gradients, up to float summation order.
    """
    base: Any = model.model
    device = base.embed_tokens.weight.device
    prompt_ids, prompt_mask = prompt_ids.to(device), prompt_mask.to(device)
    response_ids, valid = response_ids.to(device), response_mask.to(device)
    rows, resp_len = response_ids.shape
    first_row, group = distinct_prompts(prompt_ids, prompt_mask)
    p_mask = prompt_mask[first_row]  # (U, P)
    n_prompts, prompt_len = p_mask.shape
    p_real = p_mask.view(-1).nonzero().squeeze(-1)  # flat indices into (U * P)
    r_real = valid.view(-1).nonzero().squeeze(-1)  # flat indices into (rows * R)
    n_p = len(p_real)
    p_positions = (p_mask.long().cumsum(-1) - 1).clamp(min=0)
    r_positions = p_mask.sum(-1)[group][:, None] + torch.arange(resp_len, device=device)
    tokens = torch.cat([prompt_ids[first_row].view(-1)[p_real], response_ids.view(-1)[r_real]])
    positions = torch.cat([p_positions.view(-1)[p_real], r_positions.view(-1)[r_real]])
    x = base.embed_tokens(tokens)  # (T, H)
    cos, sin = rotary_tables(base, positions)  # (T, 1, head_dim)
    # prompts attend causally within themselves; responses to their prompt and causally to themselves
    p_attn = attention_mask(p_mask)
    r_attn = torch.cat(
        [p_mask[group][:, None, None, :].expand(rows, 1, resp_len, prompt_len), attention_mask(valid)], dim=-1
    )

    def unpack(t: torch.Tensor, real: torch.Tensor, n: int, width: int) -> torch.Tensor:
        """(N, heads, d) packed -> (n, heads, width, d), zeros on padding."""
        full = t.new_zeros(n * width, *t.shape[1:]).index_copy(0, real, t)
        return full.view(n, width, *t.shape[1:]).transpose(1, 2)

    def per_row_attention(
        scaling: float,
    ) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
        sdpa = torch.nn.functional.scaled_dot_product_attention

        def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            gqa = k.shape[1] != q.shape[1]
            kp, vp = (
                unpack(k[:n_p], p_real, n_prompts, prompt_len),
                unpack(v[:n_p], p_real, n_prompts, prompt_len),
            )
            out_p = sdpa(
                unpack(q[:n_p], p_real, n_prompts, prompt_len),
                kp,
                vp,
                attn_mask=p_attn,
                scale=scaling,
                enable_gqa=gqa,
            )
            k_rows = torch.cat([kp[group], unpack(k[n_p:], r_real, rows, resp_len)], dim=2)
            v_rows = torch.cat([vp[group], unpack(v[n_p:], r_real, rows, resp_len)], dim=2)
            out_r = sdpa(
                unpack(q[n_p:], r_real, rows, resp_len),
                k_rows,
                v_rows,
                attn_mask=r_attn,
                scale=scaling,
                enable_gqa=gqa,
            )
            return torch.cat(
                [
                    out_p.transpose(1, 2).reshape(n_prompts * prompt_len, -1)[p_real],
                    out_r.transpose(1, 2).reshape(rows * resp_len, -1)[r_real],
                ]
            )

        return attend

    for layer in base.layers:  # the layer's own modules, token-wise on (T, H); attention per row
        attend = per_row_attention(layer.self_attn.scaling)
        if checkpointed(layer):  # keep only the layer's input; its activations are recomputed in backward
            x = checkpoint(decoder_layer, layer, x, cos, sin, attend, use_reentrant=False)
        else:
            x = decoder_layer(layer, x, cos, sin, attend)
    # response token 0 is predicted by its prompt's last token, token j > 0 by response token j - 1
    p_index = torch.full((n_prompts * prompt_len,), -1, dtype=torch.long, device=device)
    p_index[p_real] = torch.arange(n_p, device=device)
    r_index = torch.full((rows * resp_len,), -1, dtype=torch.long, device=device)
    r_index[r_real] = n_p + torch.arange(len(r_real), device=device)
    predictor = torch.cat(
        [p_index.view(n_prompts, prompt_len)[group, -1:], r_index.view(rows, resp_len)[:, :-1]], 1
    )
    hidden = base.norm(x[predictor[valid]])  # (N, H)
    lm_head: Any = model.lm_head
    if chunk == 0:
        logp, ent = _logprobs_and_entropy(
            lm_head(hidden), response_ids[valid], None, temperature, with_entropy
        )
        return _to_rows(logp, valid), None if ent is None else _to_rows(ent, valid)
    return _scatter(lm_head, hidden, response_ids, valid, temperature, with_entropy, chunk)


# train.activation_checkpointing's default: on from this size. Below it the layers' activations are small
# in absolute terms (the lab's 1M-parameter model: megabytes) and recomputing them is pure cost; at
# SmolLM2-135M they set the update's peak (GBs), and checkpointing cut the run's peak 4.7 -> 3.4 GB.
CHECKPOINTING_MIN_PARAMETERS = 50_000_000


def checkpointing_by_default(model: torch.nn.Module) -> bool:
    """Whether ``train.activation_checkpointing: null`` turns checkpointing on for this model."""
    return sum(p.numel() for p in model.parameters()) >= CHECKPOINTING_MIN_PARAMETERS


def enable_activation_checkpointing(model: torch.nn.Module) -> bool:
    """Turn on the model's own per-layer activation checkpointing (non-reentrant), which the packed path
    honours too. False (and nothing changed) for a model without it."""
    if not getattr(model, "supports_gradient_checkpointing", False):
        return False
    hf_model: Any = model
    # transformers >= 5.2x calls it activation checkpointing; older releases gradient checkpointing
    if hasattr(hf_model, "activation_checkpointing_enable"):
        hf_model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        hf_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return True


def checkpointed(layer: torch.nn.Module) -> bool:
    """Whether this decoder layer's forward is to be checkpointed now: the model's flag is on for it (set
    by ``enable_activation_checkpointing``), it is training, and a backward will follow."""
    flagged = bool(getattr(layer, "gradient_checkpointing", False))
    return flagged and layer.training and torch.is_grad_enabled()


def _scatter(
    head: Any,
    hidden: torch.Tensor,
    response_ids: torch.Tensor,
    valid: torch.Tensor,
    temperature: float,
    with_entropy: bool,
    chunk: int | None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """hidden (N, H) at the N valid response positions of valid (B, R) -> (B, R) logprobs and entropy."""
    logp, ent = head_logprobs(
        hidden,
        head.weight,
        head.bias,
        response_ids[valid],
        temperature=temperature,
        with_entropy=with_entropy,
        chunk=chunk,
    )
    return _to_rows(logp, valid), None if ent is None else _to_rows(ent, valid)


def _to_rows(values: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """(N,) values of the valid positions -> (B, R), zero elsewhere."""
    flat = valid.reshape(-1).nonzero().squeeze(-1)
    return values.new_zeros(valid.numel()).index_copy(0, flat, values).view(valid.shape)


def _logprobs_and_entropy(
    logits: torch.Tensor,
    response_ids: torch.Tensor,
    valid: torch.Tensor | None,
    temperature: float,
    with_entropy: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """logits (..., V) at the positions predicting response_ids (...) -> (logprobs, entropy), 0 where ~valid.

    The plain path: the whole batch's float32 logits, log-softmax and their gradients at once.
    """
    logits = logits.float()
    if temperature != 1.0:
        logits = logits / temperature
    logp_all = torch.log_softmax(logits, dim=-1)
    logprobs = logp_all.gather(-1, response_ids[..., None]).squeeze(-1)
    entropy = -(logp_all.exp() * logp_all).sum(-1) if with_entropy else None
    if valid is not None:
        logprobs = logprobs.masked_fill(~valid, 0.0)
        entropy = None if entropy is None else entropy.masked_fill(~valid, 0.0)
    return logprobs, entropy


def _output_head(model: torch.nn.Module) -> torch.nn.Linear | None:
    """The LM head to chunk through, or None where the logits must come from the model's own forward:
    logits post-processed after the head (soft-capping, scaling), a head that is not a plain Linear (e.g.
    LoRA-wrapped), or weights sharded outside the forward (FSDP)."""
    inner = getattr(model, "module", model)  # DDP keeps the model at .module and runs its forward in place
    from torch.distributed.fsdp import FullyShardedDataParallel

    if isinstance(model, FullyShardedDataParallel) or isinstance(inner, FullyShardedDataParallel):
        return None
    cfg = getattr(inner, "config", None)
    get_head = getattr(inner, "get_output_embeddings", None)
    if getattr(cfg, "model_type", None) not in _PLAIN_HEAD_TYPES or get_head is None:
        return None
    head = get_head()
    if type(head) is not torch.nn.Linear or type(head.weight.data) is not torch.Tensor:  # DTensor: FSDP2
        return None
    return head
