"""The rollout engines by name (``rollout.engine``), each imported only when chosen.

vLLM is an optional GPU extra: naming it here costs nothing until a run asks for it.
"""

from __future__ import annotations

import importlib
from typing import Any

import torch

from aspo.errors import UserError
from aspo.rollout.base import GenerationEngine

ENGINES = {"hf": "aspo.rollout.hf:HFEngine", "vllm": "aspo.rollout.vllm:VLLMEngine"}


def make_engine(name: str, model: torch.nn.Module, tokenizer: Any, **kwargs: Any) -> GenerationEngine:
    """The engine called ``name`` around ``model`` and ``tokenizer`` (``kwargs``: its own options)."""
    if name not in ENGINES:
        raise UserError(f"unknown rollout.engine {name!r}; valid engines: {', '.join(ENGINES)}")
    module, _, cls = ENGINES[name].partition(":")
    engine: GenerationEngine = getattr(importlib.import_module(module), cls)(model, tokenizer, **kwargs)
    return engine
