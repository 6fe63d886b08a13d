"""The tiny causal LM: a `transformers` Qwen2 config small enough to train and sample on a CPU.

It is an ordinary Hugging Face checkpoint (``save_pretrained`` / ``from_pretrained``), so everything that
runs on the lab model runs unchanged on a real one.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast, Qwen2ForCausalLM

# ~0.8 M parameters: big enough for 3-digit arithmetic with a scratchpad, small enough that a
# 128-prompt x 8-sample rollout of 40 tokens takes seconds on 2 CPU cores.
DEFAULT_SIZE: dict[str, int] = {
    "hidden_size": 128,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "intermediate_size": 384,
}


def build_model(tokenizer: PreTrainedTokenizerFast, seed: int = 0, **size: int) -> Qwen2ForCausalLM:
    """A freshly initialised Qwen2ForCausalLM over ``tokenizer``'s vocabulary (fp32, tied embeddings).

    ``size`` overrides ``DEFAULT_SIZE`` keys (and ``num_key_value_heads``, ``max_position_embeddings``).
    The same ``seed`` gives the same weights.
    """
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    allowed = {*DEFAULT_SIZE, "num_key_value_heads", "max_position_embeddings"}
    unknown = set(size) - allowed
    if unknown:
        raise ValueError(f"unknown model size keys {sorted(unknown)}; valid: {sorted(allowed)}")
    dims: dict[str, Any] = {**DEFAULT_SIZE, **size}
    dims.setdefault("num_key_value_heads", dims["num_attention_heads"])
    dims.setdefault("max_position_embeddings", 256)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        tie_word_embeddings=True,
        rope_theta=10000.0,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        use_cache=True,
        **dims,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(config)
    _set_generation_defaults(model, tokenizer)
    return model


def _set_generation_defaults(model: Qwen2ForCausalLM, tokenizer: PreTrainedTokenizerFast) -> None:
    # plain temperature sampling: no hidden top-k / top-p from library defaults
    gen = model.generation_config
    gen.pad_token_id, gen.eos_token_id, gen.bos_token_id = (
        tokenizer.pad_token_id,
        tokenizer.eos_token_id,
        tokenizer.bos_token_id,
    )
    gen.top_k, gen.top_p = None, None


def count_parameters(model: Any) -> int:
    """Number of distinct parameters (tied embeddings counted once)."""
    return sum(p.numel() for p in model.parameters())


def load_policy(path: str | Path) -> tuple[Qwen2ForCausalLM, PreTrainedTokenizerFast]:
    """Load a lab checkpoint directory (model + tokenizer) written by ``save_pretrained``, ready to sample
    (eval mode, left padding); the loading itself is ``aspo.pretrained.load_checkpoint``, as for any model."""
    from aspo.pretrained import load_checkpoint

    model, tokenizer = load_checkpoint(str(path))
    tokenizer.padding_side = "left"
    model.eval()
    return model, tokenizer
