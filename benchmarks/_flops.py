"""FLOP and byte counts of the real-model job's two phases, for benchmarks/machine_limits.py: pure
functions of a Llama-style model's sizes and the batch's masks (checked against torch's FlopCounterMode in
tests/test_machine_limits.py).

- ``update_flops``: one forward + backward of ``aspo.models.packed_token_logprobs`` (model and hardware
  FLOPs);
- ``decode_flops``: ``aspo.rollout.hf.lean_decode``'s prefill and steps (FLOPs, KV-cache bytes);
- ``decode_bound``: the least time those steps can take on a machine of given peak and bandwidth.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Shape:
    """The sizes of a Llama-style decoder that set its FLOPs."""

    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int

    @staticmethod
    def of(config: Any) -> Shape:
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        return Shape(
            config.num_hidden_layers,
            config.hidden_size,
            config.intermediate_size,
            config.num_attention_heads,
            config.num_key_value_heads,
            head_dim,
            config.vocab_size,
        )

    def layer_matrices(self) -> list[tuple[str, int, int]]:
        """(name, in, out) of one decoder layer's projections."""
        h, i = self.hidden, self.intermediate
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        return [
            ("q", h, q),
            ("k", h, kv),
            ("v", h, kv),
            ("o", q, h),
            ("gate", h, i),
            ("up", h, i),
            ("down", i, h),
        ]

    @property
    def layer_params(self) -> int:
        """Matmul parameters of one decoder layer."""
        return sum(a * b for _, a, b in self.layer_matrices())

    @property
    def head_params(self) -> int:
        return self.vocab * self.hidden

    def attention_flops(self, pairs: float) -> float:
        """Forward FLOPs of all layers' scores and weighted values over ``pairs`` query-key pairs."""
        return 4.0 * self.layers * self.heads * self.head_dim * pairs


def update_flops(
    shape: Shape,
    prompt_ids: Any,
    prompt_mask: Any,
    response_mask: Any,
    *,
    checkpointing: bool,
    chunked_head: bool = True,
) -> dict[str, float]:
    """FLOPs of one forward + backward of the packed path (``aspo.models.packed_token_logprobs``).

    prompt_ids/prompt_mask (rows, P) left-padded, response_mask (rows, R) bool; each distinct prompt is
    computed once. Returns tokens (T: through the layers, distinct prompts' + responses'), head_tokens (N:
    response tokens, through the LM head), model and hardware FLOPs.
    model = 6 x layer params x layers x T + 6 x head params x N + 3 x attention over the real causal pairs.
    hardware: the layers run forward + backward (2x forward) and, checkpointed, the forward again but for
    the down projection (about 7.5x instead of 6x); the chunked head recomputes its logits in the
    backward (8x instead of 6x); attention is dense over the padded (P, P) prompt and (R, P + R) response
    blocks, its backward 2x its forward (and recomputed when checkpointed).
    """
    from aspo.models.llama import distinct_prompts

    first_row, group = distinct_prompts(prompt_ids, prompt_mask)
    p_len = prompt_mask[first_row].sum(-1).double()  # (U,) real prompt tokens
    r_len = response_mask.sum(-1).double()  # (rows,)
    tokens, head_tokens = float(p_len.sum() + r_len.sum()), float(r_len.sum())
    # a prompt token sees itself and the real tokens before it; a response token its prompt too
    pairs = float((p_len * (p_len + 1) / 2).sum() + (r_len * p_len[group] + r_len * (r_len + 1) / 2).sum())
    rows, resp_width = response_mask.shape
    width = prompt_mask.shape[1]
    dense_pairs = float(len(first_row) * width * width + rows * resp_width * (width + resp_width))
    layers = shape.layers * shape.layer_params
    model = 6 * layers * tokens + 6 * shape.head_params * head_tokens + 3 * shape.attention_flops(pairs)
    passes = 4 if checkpointing else 3  # forward, backward (2 forwards' worth), the recomputed forward
    # torch's non-reentrant checkpoint stops recomputing once the backward has what it needs: a layer's
    # last projection (down) is not rerun
    recomputed = shape.layers * shape.intermediate * shape.hidden if checkpointing else 0
    hardware = (
        2 * (passes * layers - recomputed) * tokens
        + (8 if chunked_head else 6) * shape.head_params * head_tokens
        + passes * shape.attention_flops(dense_pairs)
    )
    return {"tokens": tokens, "head_tokens": head_tokens, "model": model, "hardware": hardware}


def decode_flops(shape: Shape, rows_per_step: list[int], prompt_width: int, prompts: int) -> dict[str, Any]:
    """FLOPs of ``aspo.rollout.hf.lean_decode``: the prefill of ``prompts`` distinct prompts padded to
    ``prompt_width``, then one LM-head call per sampled token column, with rows_per_step[s] rows at step s.
    The logits of step 0 come from the prefill; step s >= 1 runs every layer on its rows against
    prompt_width + s cached columns (dense, as the kernel does). Returns prefill (FLOPs) and steps (list of
    (FLOPs, KV-cache bytes read) per step, float32 cache)."""
    layers = shape.layers * shape.layer_params
    prefill = 2 * layers * prompts * prompt_width + shape.attention_flops(prompts * prompt_width**2)
    kv_bytes_per_column = shape.layers * 2 * shape.kv_heads * shape.head_dim * 4
    steps = []
    for s, rows in enumerate(rows_per_step):
        flops = 2.0 * shape.head_params * rows
        kv = 0.0
        if s:
            columns = prompt_width + s
            flops += 2.0 * layers * rows + shape.attention_flops(rows * columns)
            kv = float(rows * columns * kv_bytes_per_column)
        steps.append((flops, kv))
    return {"prefill": float(prefill), "steps": steps}


def decode_bound(
    flops: dict[str, Any], weight_bytes: float, peak_update: float, peak_decode: float, bandwidth: float
) -> dict[str, float]:
    """Lower bound in seconds of a decode (``decode_flops``): the prefill at the update-shape peak, then
    per step the slower of its FLOPs at the decode peak and reading the weights + KV cache at
    ``bandwidth`` (bytes/s). Also the two terms summed alone, to say which binds."""
    compute = [f / peak_decode for f, _ in flops["steps"]]
    memory = [(weight_bytes + kv) / bandwidth for _, kv in flops["steps"]]
    prefill = flops["prefill"] / peak_update
    return {
        "bound_s": prefill + sum(max(c, m) for c, m in zip(compute, memory, strict=True)),
        "compute_s": prefill + sum(compute),
        "memory_s": prefill + sum(memory),
    }
