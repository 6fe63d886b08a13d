"""The matmul precision of sampling and training (``train.precision``, ``aspo eval --precision``).

fp32  every op in float32: today's path, bit for bit (no autocast region is entered at all).
bf16  ``torch.autocast(device, bfloat16)`` around the sampler's and the trainer's forwards: the linear
      layers, attention and the LM head multiply in bfloat16; the weights (the optimizer's master copy),
      their gradients, AdamW's state, the residual stream, the norms' statistics, log-softmax,
      log-probs, entropy, ratios, the loss, advantages and the KL stay float32. The chunked LM head
      (``aspo.models.head``) casts its weight once per call and returns float32 log-probs.
auto  bf16 on a CUDA device that supports it; on a CPU only where it has AMX (``amx_bf16`` among
      /proc/cpuinfo's flags) *and* the model has at least ``AUTO_MIN_PARAMS`` parameters; else fp32.
      With ``avx512_bf16`` but no AMX, bf16 is native but gains too little to pay for the mismatch it
      brings (the whole SmolLM2 job took 0.91x float32's CPU time, at 13 % more memory, its decode
      slower; docs/performance.md). A rule, not a timing: the same command on the same machine always
      runs in the same precision, whatever else the machine is doing. Without either flag, bf16 is
      emulated (converted to float32 in the kernels) and slower: on a 2-core Xeon with AVX-512 but
      neither flag, a 2048 x 576 x 1536 matmul ran 54-145 GFLOP/s in float32 and 23-26 in bf16 (torch
      2.13, one thread; docs/performance.md).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch

PRECISIONS = ("auto", "fp32", "bf16")
NATIVE_BF16_FLAGS = ("amx_bf16", "avx512_bf16")
# `auto` takes bf16 on a CPU only with AMX, and only from this many parameters. On a 2-core AMD EPYC with
# avx512_bf16 but no AMX, `model_speedup` measured 0.61-1.25x for the 0.86M-parameter lab model (its small
# GEMMs gain nothing over the casts) and 1.27-1.79x for SmolLM2-135M's forward + backward, but the whole
# job only 1.10x by CPU time (docs/performance.md). An earlier start-up timing flipped between runs of
# one config on a busy machine, so seeds did not repeat.
AUTO_BF16_FLAG = "amx_bf16"
AUTO_MIN_PARAMS = 50_000_000


@dataclass(frozen=True)
class Precision:
    """A resolved precision: ``name`` fp32 | bf16, why it was chosen, on which device type."""

    name: str
    reason: str = "requested"
    device_type: str = "cpu"

    @property
    def is_bf16(self) -> bool:
        return self.name == "bf16"

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """The region the sampler's and the trainer's forwards run in (nothing at all for fp32)."""
        if not self.is_bf16:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=torch.bfloat16)

    def describe(self) -> str:
        return f"precision {self.name} ({self.reason})"


FP32 = Precision("fp32")


def cpu_flags(path: str = "/proc/cpuinfo") -> set[str]:
    """The CPU's feature flags (the first ``flags`` line of /proc/cpuinfo; empty where there is none)."""
    try:
        with open(path) as fh:
            for line in fh:
                if line.startswith("flags"):
                    return set(line.partition(":")[2].split())
    except OSError:
        pass
    return set()


def native_bf16_flags(flags: Iterable[str]) -> list[str]:
    """Which of the native bf16 flags the CPU has (AMX tiles or AVX512-BF16 dot products)."""
    have = set(flags)
    return [f for f in NATIVE_BF16_FLAGS if f in have]


def model_speedup(model: torch.nn.Module, rows: int = 4, tokens: int = 64, reps: int = 3) -> float:
    """float32 over bf16 seconds of ``model``'s own training forward + backward (``token_logprobs`` on
    ``rows`` random sequences of ``tokens``, half prompt, half response; the fastest of ``reps`` after a
    warm-up each): > 1 means bf16 is faster for this model, casts, norms and LM head included. Leaves no
    gradient behind and draws from no global random stream."""
    from aspo.models import token_logprobs

    device = next(model.parameters()).device
    vocab = int(getattr(getattr(model, "config", None), "vocab_size", 0) or 2)
    gen = torch.Generator().manual_seed(0)
    half = max(tokens // 2, 1)
    prompt_ids = torch.randint(vocab, (rows, half), generator=gen).to(device)
    response_ids = torch.randint(vocab, (rows, half), generator=gen).to(device)
    mask = torch.ones(rows, half, dtype=torch.bool, device=device)
    was_training = model.training
    model.eval()

    def seconds(precision: Precision) -> float:
        best = float("inf")
        for _ in range(reps + 1):  # the first: warm-up
            start = time.perf_counter()
            with precision.autocast():
                logprobs, entropy = token_logprobs(model, prompt_ids, mask, response_ids, mask)
            assert entropy is not None
            (logprobs.sum() + entropy.sum()).backward()
            best = min(best, time.perf_counter() - start)
        return best

    device_type = device.type
    try:
        return seconds(Precision("fp32", device_type=device_type)) / seconds(
            Precision("bf16", device_type=device_type)
        )
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)


def resolve_precision(
    requested: str,
    device: torch.device | str,
    model: torch.nn.Module | None = None,
    *,
    flags: Iterable[str] | None = None,
    params: int | None = None,
) -> Precision:
    """``train.precision`` -> the precision to run in, with the reason.

    ``flags`` (default: this CPU's) and ``params`` (default: ``model``'s parameter count, frozen ones
    included) can be given to decide without touching the hardware or a model.
    """
    device_type = torch.device(device).type
    if requested not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)} (got {requested!r})")
    if requested != "auto":
        return Precision(requested, "requested", device_type)
    if device_type == "cuda":
        if torch.cuda.is_bf16_supported():
            return Precision("bf16", "auto: CUDA device with bf16 support", device_type)
        return Precision("fp32", "auto: this CUDA device has no bf16 support", device_type)
    if device_type != "cpu":
        return Precision("fp32", f"auto: float32 on {device_type}", device_type)
    native = native_bf16_flags(cpu_flags() if flags is None else flags)
    if not native:
        return Precision(
            "fp32",
            "auto: this CPU has no native bf16 (neither amx_bf16 nor avx512_bf16 among its flags), so bf16 "
            "matmuls would be emulated and slower",
            device_type,
        )
    if AUTO_BF16_FLAG not in native:
        return Precision(
            "fp32",
            f"auto: this CPU has {' and '.join(native)} but no AMX, where bf16 saved only ~9 % of "
            "a 135M-parameter model's CPU time at 13 % more memory; so float32 (train.precision=bf16 "
            "forces it)",
            device_type,
        )
    if params is None:
        if model is None:
            return Precision("fp32", "auto: no model to size", device_type)
        params = sum(p.numel() for p in model.parameters())
    where = f"this CPU has {' and '.join(native)} and the model {params / 1e6:.1f}M parameters"
    if params >= AUTO_MIN_PARAMS:
        return Precision("bf16", f"auto: {where}", device_type)
    return Precision(
        "fp32",
        f"auto: {where}, below the {AUTO_MIN_PARAMS // 1_000_000}M from which bf16 pays for its casts",
        device_type,
    )


def saved_precision(run_dir: Any) -> str | None:
    """The precision a run directory's config.yaml says it ran in (fp32 | bf16), or None."""
    import os

    import yaml

    path = os.path.join(str(run_dir), "config.yaml")
    try:
        with open(path) as fh:
            tree = yaml.safe_load(fh) or {}
    except (OSError, yaml.YAMLError):
        return None
    value = (tree.get("train") or {}).get("precision") if isinstance(tree, dict) else None
    return value if value in ("fp32", "bf16") else None
