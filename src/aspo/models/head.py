"""Token log-probs and entropies through the LM head, never more than one chunk of vocabulary-sized rows.

The full (tokens, V) logits of a batch are the largest tensors of an update (64 responses x 100 tokens x
a 49k vocabulary is 1.26 GB per float32 copy, and log-softmax, entropy and their gradients make several).
``head_logprobs`` goes through the tokens ``chunk`` at a time: project, log-softmax, keep the token's
log-prob, the entropy and the log-normaliser (a few numbers per token), drop the chunk. Its backward
recomputes each chunk's logits and applies the closed-form gradient, so forward and backward each hold
one chunk's (chunk, V) tensors at a time -- at the price of one extra LM-head matmul per token.

Liger-Kernel's fused linear cross-entropy avoids that matmul by computing the gradients in the forward,
which works for a scalar loss; here the upstream gradients (the objective's per-token weights) are only
known in the backward, and Liger needs Triton (GPU only). torchtune's chunked output chunks the float32
upcast but keeps every chunk's logits alive for autograd. So this is a small custom autograd.Function.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

CHUNK_ELEMENTS = 1 << 24  # about 64 MB of float32 logits per chunk
# output columns per GEMM in ``head_logits``: one thread computes 64 x 576 x 49k (SmolLM2's decode step)
# in 1024-column blocks ~20 % faster than in one call, and the update's 341-row chunks ~10 % (2-core
# EPYC, torch 2.13; same values: each logit is the same dot product)
VOCAB_BLOCK = 1024


def default_chunk(vocab_size: int) -> int:
    """Tokens per chunk so that one chunk's float32 logits take about ``CHUNK_ELEMENTS``."""
    return max(16, CHUNK_ELEMENTS // max(vocab_size, 1))


def head_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    *,
    temperature: float = 1.0,
    with_entropy: bool = True,
    chunk: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log softmax(head(hidden) / T)[target] and the entropy of that softmax, token by token.

    hidden (N, H); weight (V, H) and bias (V,) or None of the LM head; targets (N,) long. Returns logprobs
    (N,) float32 and entropy (N,) float32 (or None). Under ``torch.autocast`` the matmuls run in its dtype
    (the weight cast once per call), the softmax and everything after it in float32. Differentiable
    w.r.t. hidden, weight and bias; equal to the plain ``log_softmax(F.linear(hidden, weight, bias).float()
    / T)`` path up to float summation order.
    """
    chunk = chunk or default_chunk(weight.shape[0])
    # inside an autocast region (train.precision=bf16) the head multiplies in its dtype, in the backward too
    mm_dtype = autocast_dtype(hidden.device.type) or weight.dtype
    logprobs, entropy = _ChunkedHead.apply(
        hidden, weight, bias, targets, float(temperature), bool(with_entropy), int(chunk), mm_dtype
    )
    return logprobs, entropy if with_entropy else None


def autocast_dtype(device_type: str) -> torch.dtype | None:
    """The dtype an enclosing autocast region gives matmuls on ``device_type`` (``train.precision=bf16``:
    ``aspo.precision``); None outside one."""
    if not torch.is_autocast_enabled(device_type):
        return None
    return torch.get_autocast_dtype(device_type)


def head_logits(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``F.linear(hidden, weight, bias)``: hidden (..., H), weight (V, H), bias (V,) or None -> (..., V),
    written ``VOCAB_BLOCK`` vocabulary rows at a time into one buffer (faster for a large vocabulary)."""
    vocab = weight.shape[0]
    if vocab <= 2 * VOCAB_BLOCK:
        return F.linear(hidden, weight, bias)
    out = hidden.new_empty(*hidden.shape[:-1], vocab)
    for j in range(0, vocab, VOCAB_BLOCK):
        block = slice(j, j + VOCAB_BLOCK)
        out[..., block] = F.linear(hidden, weight[block], None if bias is None else bias[block])
    return out


def matmul_weights(
    weight: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The head's weight and bias in the matmul dtype: themselves when it is theirs, else one cast copy
    (autocast would cast every vocabulary block of every chunk anew: they are views, not parameters)."""
    if weight.dtype == dtype:
        return weight, bias
    return weight.to(dtype), None if bias is None else bias.to(dtype)


def _chunk_logits(
    hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, temperature: float
) -> torch.Tensor:
    """(C, H) -> (C, V) float32 logits / T, computed in the (matmul) weight's dtype like the model's own
    forward."""
    logits = head_logits(hidden.to(weight.dtype), weight, bias).float()
    return logits / temperature if temperature != 1.0 else logits


class _ChunkedHead(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        targets: torch.Tensor,
        temperature: float,
        with_entropy: bool,
        chunk: int,
        mm_dtype: torch.dtype,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        n = hidden.shape[0]
        w, b = matmul_weights(weight, bias, mm_dtype)
        logprobs = torch.zeros(n, dtype=torch.float32, device=hidden.device)
        entropy = torch.zeros(n, dtype=torch.float32, device=hidden.device)
        log_norm = torch.zeros(n, dtype=torch.float32, device=hidden.device)
        for i in range(0, n, chunk):
            z = _chunk_logits(hidden[i : i + chunk], w, b, temperature)
            lse = torch.logsumexp(z, dim=-1)
            log_norm[i : i + chunk] = lse
            logprobs[i : i + chunk] = z.gather(-1, targets[i : i + chunk, None]).squeeze(-1) - lse
            if with_entropy:  # H = lse - sum_v p_v z_v
                entropy[i : i + chunk] = lse - torch.softmax(z, dim=-1).mul_(z).sum(-1)
        ctx.save_for_backward(hidden, weight, bias, targets, log_norm, entropy)
        ctx.temperature, ctx.with_entropy, ctx.chunk, ctx.mm_dtype = (
            temperature,
            with_entropy,
            chunk,
            mm_dtype,
        )
        if not with_entropy:
            ctx.mark_non_differentiable(entropy)
        return logprobs, entropy

    @staticmethod
    def backward(
        ctx: Any, grad_logprobs: torch.Tensor | None, grad_entropy: torch.Tensor | None
    ) -> tuple[torch.Tensor | None, ...]:
        hidden, weight, bias, targets, log_norm, entropy = ctx.saved_tensors
        temperature, chunk = ctx.temperature, ctx.chunk
        w, b = matmul_weights(weight, bias, ctx.mm_dtype)
        n = hidden.shape[0]
        g_lp = torch.zeros(n, device=hidden.device) if grad_logprobs is None else grad_logprobs.float()
        use_entropy = ctx.with_entropy and grad_entropy is not None
        g_ent = grad_entropy if grad_entropy is not None else g_lp
        need_hidden, need_weight, need_bias = ctx.needs_input_grad[:3]
        grad_hidden = torch.empty_like(hidden) if need_hidden else None
        # summed over chunks in float32 even for a low-precision head
        grad_weight = (
            torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_weight else None
        )
        grad_bias = (
            torch.zeros(weight.shape[0], dtype=torch.float32, device=weight.device) if need_bias else None
        )
        for i in range(0, n, chunk):
            h, g = hidden[i : i + chunk].to(w.dtype), g_lp[i : i + chunk, None]
            # dlogp_t/dz = onehot_t - p and dH/dz = -p (log p + H), with log p = z - lse:
            # dL/dz = -p (g_lp + g_H (log p + H)) + g_lp onehot_t, built in place on one (C, V) buffer
            log_p = _chunk_logits(h, w, b, temperature).sub_(log_norm[i : i + chunk, None])
            p = log_p.exp()
            coef = g
            if use_entropy:
                coef = (
                    log_p.add_(entropy[i : i + chunk, None]).mul_(g_ent[i : i + chunk, None].float()).add_(g)
                )
            grad_z = p.mul_(coef).neg_().scatter_add_(-1, targets[i : i + chunk, None], g)
            del log_p, coef
            if temperature != 1.0:
                grad_z.div_(temperature)
            grad_z = grad_z.to(w.dtype)
            if grad_hidden is not None:
                grad_hidden[i : i + chunk] = grad_z @ w
            if grad_weight is not None:
                if grad_z.dtype == torch.float32:
                    grad_weight.addmm_(grad_z.t(), h)  # no (V, H) temporary
                else:
                    grad_weight += grad_z.t() @ h
            if grad_bias is not None:
                grad_bias += grad_z.sum(0)
        return (
            grad_hidden,
            None if grad_weight is None else grad_weight.to(weight.dtype),
            None if grad_bias is None else grad_bias.to(weight.dtype),
            None,
            None,
            None,
            None,
            None,
        )
