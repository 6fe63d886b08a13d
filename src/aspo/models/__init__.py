"""The model-side fast paths shared by sampling and training.

``aspo.models.llama``: the Llama-style decoder layer and its pieces (support check, rotary, masks,
prompt de-duplication), used by the sampler's ``lean_decode`` and the trainer's packed forward.
``aspo.models.logprobs``: per-token log-probs and entropies of responses (``token_logprobs``), activation
checkpointing.
``aspo.models.head``: the LM head's log-softmax one chunk of tokens at a time.
"""

from aspo.models.llama import lean_supported
from aspo.models.logprobs import (
    checkpointing_by_default,
    enable_activation_checkpointing,
    packed_token_logprobs,
    packing_applies,
    padded_token_logprobs,
    token_logprobs,
)

__all__ = [
    "checkpointing_by_default",
    "enable_activation_checkpointing",
    "lean_supported",
    "packed_token_logprobs",
    "packing_applies",
    "padded_token_logprobs",
    "token_logprobs",
]
