"""Rollout: generate G responses per prompt and keep the behaviour log-probs.

Engines share one small interface (`GenerationEngine`), so the trainer does not care whether tokens come
from transformers on a CPU or from vLLM on a GPU; `make_engine` picks one by name (aspo.rollout.engines).
"""

from aspo.rollout.base import GenerationEngine, Rollout
from aspo.rollout.engines import make_engine
from aspo.rollout.hf import HFEngine

__all__ = ["GenerationEngine", "HFEngine", "Rollout", "make_engine"]
