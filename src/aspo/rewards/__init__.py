"""Reward functions: the registry and the one way every caller scores responses.

A reward function is any callable ``fn(prompt=..., response=..., answer=..., **fields) -> float``;
``fields`` are the other keys of the data record (``tests``, ``entry_point``, ...). Built-in names map to
import paths so that asking for ``arithmetic`` never imports sympy, and ``code`` never imports math-verify.
A user function is given as ``path/to/file.py:function``.

A reward module may also define ``score_batch(records, workers=None) -> list[ScoreResult]`` next to its
function (``code`` does, to run sandboxes in parallel); ``score_records`` uses it when present.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from aspo.errors import UserError

RewardFn = Callable[..., float]

# name -> "module:function"; resolved lazily.
BUILTIN_REWARDS: dict[str, str] = {
    "math": "aspo.rewards.math:math_reward",
    "code": "aspo.rewards.code:code_reward",
    "arithmetic": "aspo.lab.tasks:arithmetic_reward",
    "countdown": "aspo.lab.tasks:countdown_reward",
}


@dataclass(frozen=True)
class ScoreResult:
    reward: float
    error: str | None = None
    answer: str | None = None  # the extracted final answer that earned the reward (rewards that extract one)


def register_reward(name: str, target: str) -> None:
    """Register ``name`` -> ``"module:function"`` (import happens on first use)."""
    BUILTIN_REWARDS[name] = target


def _load_target(target: str) -> RewardFn:
    module_name, _, attr = target.partition(":")
    return getattr(importlib.import_module(module_name), attr)


def _load_file_function(spec: str) -> RewardFn:
    path, _, attr = spec.rpartition(":")
    if not os.path.isfile(path):
        raise UserError(f"reward file {path!r} does not exist (reward spec {spec!r}, expected path/file.py:function)")
    module_name = "aspo_user_reward_" + os.path.splitext(os.path.basename(path))[0]
    module_spec = importlib.util.spec_from_file_location(module_name, path)
    if module_spec is None or module_spec.loader is None:
        raise UserError(f"cannot import reward file {path!r}")
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except Exception as err:  # the user's file failed to import: say where, not a traceback
        raise UserError(f"importing reward file {path!r} failed: {type(err).__name__}: {err}") from err
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise UserError(f"reward file {path!r} has no function {attr!r}")
    return fn


def get_reward(spec: str | RewardFn) -> RewardFn:
    """Resolve a reward name, ``file.py:function`` spec, or callable into a callable."""
    if callable(spec):
        return spec
    if spec in BUILTIN_REWARDS:
        return _load_target(BUILTIN_REWARDS[spec])
    if ":" in spec and spec.rpartition(":")[0].endswith(".py"):
        return _load_file_function(spec)
    raise UserError(
        f"unknown reward {spec!r}; valid names: {', '.join(sorted(BUILTIN_REWARDS))}, or path/file.py:function"
    )


def call_reward(fn: RewardFn, record: Mapping[str, Any]) -> ScoreResult:
    """Score one record; an exception or a non-finite value gives reward 0 and an error string."""
    fields = dict(record)
    kwargs = {"prompt": fields.pop("prompt", ""), "response": fields.pop("response", ""),
              "answer": fields.pop("answer", None)}
    params = inspect.signature(fn).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        fields = {k: v for k, v in fields.items() if k in params}
    try:
        value = float(fn(**kwargs, **fields))
    except Exception as err:  # untrusted / user code: count it, never crash the run
        return ScoreResult(0.0, f"{type(err).__name__}: {err}")
    if value != value or value in (float("inf"), float("-inf")):
        return ScoreResult(0.0, f"non-finite reward {value}")
    return ScoreResult(value)


def score_records(spec: str | RewardFn, records: Iterable[Mapping[str, Any]], *,
                  workers: int | None = None) -> list[ScoreResult]:
    """Score records (each with ``prompt``, ``response``, ``answer`` and any other fields)."""
    records = list(records)
    fn = get_reward(spec)
    batch = getattr(inspect.getmodule(fn), "score_batch", None)
    if batch is not None and getattr(batch, "reward_fn", None) is fn:
        return batch(records, workers=workers)
    return [call_reward(fn, r) for r in records]
