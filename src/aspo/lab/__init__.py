"""The embedded tiny lab: a no-download default for ``aspo train``.

A character tokenizer (``build_tokenizer``), a ~1 M-parameter Qwen2 model (``build_model``), synthetic
verifiable tasks (``get_task``: ``arithmetic``, ``countdown``; ``add`` and ``code`` for pretrained chat
models) and a cached supervised warm start
(``warm_start``). Importing this package is cheap: torch and transformers load on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "build_tokenizer": "aspo.lab.tokenizer",
    "build_model": "aspo.lab.model",
    "count_parameters": "aspo.lab.model",
    "load_policy": "aspo.lab.model",
    "Task": "aspo.lab.tasks",
    "get_task": "aspo.lab.tasks",
    "TASKS": "aspo.lab.tasks",
    "arithmetic_reward": "aspo.lab.tasks",
    "countdown_reward": "aspo.lab.tasks",
    "warm_start": "aspo.lab.warmstart",
    "warm_start_path": "aspo.lab.warmstart",
    "evaluate_policy": "aspo.lab.warmstart",
    "sample_responses": "aspo.lab.warmstart",
    "DEFAULT_SETTINGS": "aspo.lab.warmstart",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'aspo.lab' has no attribute {name!r}")
