"""Reward functions: the registry and the one way every caller scores responses.

A reward function is any callable ``fn(prompt=..., response=..., answer=..., **fields) -> float``;
``fields`` are the other keys of the data record (``tests``, ``entry_point``, ...). Built-in names map to
import paths so that asking for ``arithmetic`` never imports sympy, and ``code`` never imports math-verify.
A user function is given as ``path/to/file.py:function``.

A reward module may also define ``score_batch(records, workers=None) -> list[ScoreResult]`` next to its
function (``code`` does, to run sandboxes in parallel); ``score_records`` uses it when present.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aspo.errors import RewardInfraError, SandboxUnavailable, UserError
from aspo.rewards.user_file import load_file_function

RewardFn = Callable[..., float]

# name -> "module:function"; resolved lazily.
BUILTIN_REWARDS: dict[str, str] = {
    "math": "aspo.rewards.math:math_reward",
    "code": "aspo.rewards.code:code_reward",
    "number": "aspo.rewards.number:number_reward",
    "arithmetic": "aspo.lab.tasks:arithmetic_reward",
    "countdown": "aspo.lab.tasks:countdown_reward",
}


@dataclass(frozen=True)
class ScoreResult:
    reward: float
    error: str | None = None
    # keyword-only: a positional third argument would silently land in the wrong field
    infra: bool = field(default=False, kw_only=True)  # the check could not run: not a verdict on the response
    answer: str | None = field(
        default=None, kw_only=True
    )  # the extracted final answer that earned the reward
    # False: the reward failed before judging the response (it raised, its record lacks what it needs)
    verdict: bool = field(default=True, kw_only=True)

    @property
    def unscored(self) -> bool:
        """No verdict on the response: its 0 says nothing about it (`aspo eval` counts these)."""
        return self.infra or not self.verdict


def register_reward(name: str, target: str) -> None:
    """Register ``name`` -> ``"module:function"`` (import happens on first use)."""
    BUILTIN_REWARDS[name] = target


def _load_target(target: str) -> RewardFn:
    module_name, _, attr = target.partition(":")
    return getattr(importlib.import_module(module_name), attr)


def check_reward_spec(spec: str) -> str:
    """ "builtin" or "file" for a valid reward spec, without importing anything; else a UserError naming it
    (config validation calls this before anything that depends on the reward)."""
    if spec in BUILTIN_REWARDS:
        return "builtin"
    path, sep, attr = spec.rpartition(":")
    if sep and path.endswith(".py") and attr:
        if not os.path.isfile(path):
            raise UserError(
                f"reward file {path!r} does not exist (reward spec {spec!r}, expected path/file.py:function)"
            )
        return "file"
    close = difflib.get_close_matches(spec, BUILTIN_REWARDS, n=1)
    raise UserError(
        f"unknown reward {spec!r}"
        + (f" (did you mean {close[0]!r}?)" if close else "")
        + f"; valid names: {', '.join(sorted(BUILTIN_REWARDS))}, or path/file.py:function"
    )


def get_reward(spec: str | RewardFn, *, timeout: float | None = None) -> RewardFn:
    """Resolve a reward name, ``file.py:function`` spec, or callable into a callable.

    A ``file.py:function`` runs in a worker process, each call bounded by ``timeout`` seconds (default
    ``bounded.DEFAULT_TIMEOUT``; 0: in this process, unbounded, and its module's ``score_batch`` is used
    when it has one). A reward that needs something from the
    host (``code``: an isolating sandbox) checks it here, so a run fails at start-up rather than mid-way.
    """
    if callable(spec):
        fn = spec
    elif check_reward_spec(spec) == "builtin":
        fn = _load_target(BUILTIN_REWARDS[spec])
    else:
        fn = load_file_function(spec)  # imported here too: a broken file is a UserError at start-up
        from aspo.rewards.bounded import DEFAULT_TIMEOUT, BoundedReward

        timeout = DEFAULT_TIMEOUT if timeout is None else timeout
        if timeout < 0:
            raise UserError(f"reward_timeout={timeout!r} must be >= 0 (0: no bound)")
        if timeout > 0:
            fn = BoundedReward(spec, fn, timeout)
    preflight = getattr(fn, "preflight", None)
    if preflight is not None:
        preflight()
    return fn


def call_reward(fn: RewardFn, record: Mapping[str, Any]) -> ScoreResult:
    """Score one record; an exception or a non-finite value gives reward 0 and an error string."""
    fields = dict(record)
    kwargs = {
        "prompt": fields.pop("prompt", ""),
        "response": fields.pop("response", ""),
        "answer": fields.pop("answer", None),
    }
    params = inspect.signature(fn).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        fields = {k: v for k, v in fields.items() if k in params}
    try:
        value = float(fn(**kwargs, **fields))
    except SandboxUnavailable:
        raise  # nothing may run here: not a score
    except Exception as err:  # untrusted / user code: count it, never crash the run
        return ScoreResult(0.0, f"{type(err).__name__}: {err}", verdict=False)
    if value != value or value in (float("inf"), float("-inf")):
        return ScoreResult(0.0, f"non-finite reward {value}", verdict=False)
    return ScoreResult(value)


def score_records(
    spec: str | RewardFn,
    records: Iterable[Mapping[str, Any]],
    *,
    workers: int | None = None,
    stop_on_infra: bool = True,
) -> list[ScoreResult]:
    """Score records (each with ``prompt``, ``response``, ``answer`` and any other fields).

    A result with ``infra=True`` is a check that could not run; when most of the batch is, this raises
    RewardInfraError (unless ``stop_on_infra=False``)."""
    records = list(records)
    fn = get_reward(spec)
    # the function's own module (a file reward's is not in sys.modules, so not inspect.getmodule)
    batch = (getattr(fn, "__globals__", None) or {}).get("score_batch")
    if batch is not None and getattr(batch, "reward_fn", None) is fn:
        results = batch(records, workers=workers)
    else:
        results = [call_reward(fn, r) for r in records]
    if stop_on_infra:
        check_infra(results)
    return results


def check_infra(results: list[ScoreResult]) -> None:
    """Raise RewardInfraError when most checks of a batch could not run (each was already retried once):
    their zeros would say nothing about the responses."""
    failed = [r for r in results if r.infra]
    if len(failed) >= 2 and len(failed) > len(results) / 2:
        raise RewardInfraError(
            f"{len(failed)} of {len(results)} reward checks could not run (retried once "
            f"each), e.g. {failed[0].error}. Stopping rather than scoring them as wrong: "
            "check the machine's free memory and process limits, and the sandbox set-up."
        )
