"""LoRA through peft: adapters on the policy, adapter checkpoints, merging an adapter into a plain model.

The trainer keeps using the transformers model itself: ``get_peft_model`` injects the adapter layers into
that model in place, so its own forward -- and the layer-by-layer fast paths (``rollout.hf.lean_decode``,
``update.packed_token_logprobs``), which call each projection module -- already include the adapters.
The ``PeftModel`` wrapper is kept only for what peft does best: saving the adapter in its own format and
switching the adapters off for the reference policy (``reference_policy``).

An adapter checkpoint (``adapter_config.json`` + ``adapter_model.safetensors``) names its base model in
``base_model_name_or_path``; ``read_adapter_base`` finds it, ``attach_adapter`` loads the adapter onto it.
"""

from __future__ import annotations

import contextlib
import json
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from aspo.errors import UserError

ADAPTER_CONFIG, ADAPTER_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"


def _peft() -> Any:
    try:
        import peft
    except ImportError as err:
        raise UserError('lora.rank > 0 needs the peft package: pip install "aspo[peft]"') from err
    return peft


@contextlib.contextmanager
def _quiet_peft() -> Iterator[None]:
    with warnings.catch_warnings():  # peft still asks transformers for the deprecated name
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
        yield


def target_modules(spec: str) -> str | list[str]:
    """``all-linear`` (peft's: every linear layer but the LM head) or a comma-separated list of names."""
    names = [name.strip() for name in spec.split(",") if name.strip()]
    return "all-linear" if names == ["all-linear"] else names


def apply_lora(
    model: torch.nn.Module, rank: int, alpha: float, dropout: float, modules: str, base: str, seed: int
) -> Any:
    """Inject LoRA adapters into ``model`` in place and freeze everything else; returns the ``PeftModel``.

    ``base`` is recorded as the adapter's base model (a path made absolute, so a checkpoint loads from any
    directory). The adapters' random init (A; B starts at zero, so the policy is unchanged) is drawn from
    ``seed`` without touching the global RNG.
    """
    peft = _peft()
    config = peft.LoraConfig(
        r=rank,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=target_modules(modules),
        bias="none",
        task_type="CAUSAL_LM",
    )
    with torch.random.fork_rng(devices=[]), _quiet_peft():
        torch.manual_seed(seed)
        try:
            wrapped = peft.get_peft_model(model, config)
        except ValueError as err:  # e.g. a target module the model does not have
            raise UserError(f"lora.target_modules={modules!r}: {err}") from err
    wrapped.peft_config["default"].base_model_name_or_path = (
        os.path.abspath(base) if os.path.exists(base) else base
    )
    return wrapped


def reference_policy(peft_model: Any | None) -> contextlib.AbstractContextManager:
    """Context in which an adapted model computes the base model's outputs (adapters switched off); a no-op
    without LoRA (``peft_model`` None).

    That is exactly the initial policy: the base weights are frozen and a fresh adapter is the identity
    (B = 0), so no second copy of the model is needed for the KL reference.
    """
    return contextlib.nullcontext() if peft_model is None else peft_model.disable_adapter()


def read_adapter_base(path: str | Path) -> str | None:
    """The base model an adapter checkpoint at ``path`` was trained on; None if ``path`` holds no adapter."""
    config_path = Path(path) / ADAPTER_CONFIG
    if not config_path.is_file():
        return None
    try:
        with open(config_path) as fh:
            base = json.load(fh).get("base_model_name_or_path")
    except (OSError, ValueError) as err:
        raise UserError(f"{config_path} is not a readable adapter config: {err}") from err
    if not base:
        raise UserError(f"{config_path} does not name its base model (base_model_name_or_path)")
    return str(base)


def attach_adapter(model: torch.nn.Module, path: str | Path, merge: bool = True) -> Any:
    """Load the adapter at ``path`` onto ``model``; ``merge``: fold it into the weights and return a plain
    transformers model (W + alpha/r * B A), else return the ``PeftModel``."""
    peft = _peft()
    try:
        with _quiet_peft():
            wrapped = peft.PeftModel.from_pretrained(model, str(path), local_files_only=True)
    except (OSError, ValueError, RuntimeError) as err:
        raise UserError(f"cannot load the LoRA adapter in {str(path)!r}: {err}") from err
    return wrapped.merge_and_unload() if merge else wrapped


def load_adapter_state(peft_model: Any, state: dict[str, torch.Tensor]) -> None:
    """Put adapter weights as saved in ``adapter_model.safetensors`` into ``peft_model`` (for resume)."""
    result = _peft().set_peft_model_state_dict(peft_model, state)
    missing = [k for k in result.missing_keys if "lora_" in k]
    if missing or result.unexpected_keys:
        raise UserError(
            f"the checkpoint's adapter does not fit this run's lora.* settings (missing "
            f"{missing[:2]}, unexpected {list(result.unexpected_keys)[:2]})"
        )
