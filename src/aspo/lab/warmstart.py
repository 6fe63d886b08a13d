"""Supervised warm start for the tiny lab, cached on disk by a hash of its settings.

``warm_start("arithmetic")`` trains a fresh tiny model on task demonstrations (AdamW, seeded; bit-identical
on CPU for a given torch thread count -- other thread counts round differently and the metrics move by
~0.02), measures held-out pass@1 / pass@k at temperature 1.0, and saves model + tokenizer with
``save_pretrained`` plus ``warmstart.json`` (settings, metrics, timings). Only the first call with given
settings pays: later calls return the cached directory. The build happens in a temporary sibling
directory that is renamed into place only when complete, so an interrupted build never leaves a broken
cache entry.

The defaults are deliberately *partial*: the policy has learned the format and most of the procedure but
still slips at temperature 1.0, so RL starts from groups with mixed rewards and has room to climb.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import time
from pathlib import Path
from typing import Any

from aspo import cache
from aspo.errors import UserError
from aspo.lab.model import DEFAULT_SIZE, build_model, count_parameters
from aspo.lab.tasks import Task, get_task
from aspo.lab.tokenizer import build_tokenizer

# Bump when training or evaluation code changes what a given set of settings produces.
CODE_VERSION = "1"
INFO_FILE = "warmstart.json"
GREEDY_TOP_P = 1e-9

DEFAULT_SETTINGS: dict[str, Any] = {
    "steps": 300,
    "batch_size": 64,
    "lr": 3e-3,
    "weight_decay": 0.01,
    "warmup_steps": 20,
    "seed": 0,
    # Fraction of training demonstrations with one slip (see Task.flawed_demonstration); None = the
    # task's default in TASK_DEFAULTS. The policy converges towards this imperfect teacher: right
    # procedure, ~flawed_fraction slips at temperature 1.0, few greedily -- a partial policy whose
    # headroom does not hinge on stopping SFT at the right step.
    "flawed_fraction": None,
    "eval_problems": 200,  # held-out problems for the pass@k measurement saved with the checkpoint
    "eval_samples": 8,  # samples per problem (k of pass@k)
    "task_params": {},  # e.g. {"digits": 3} for arithmetic
    **DEFAULT_SIZE,
}


# Per-task overrides of DEFAULT_SETTINGS. Arithmetic is learned in ~300 steps, so its teacher slips on
# purpose; Countdown is still hard for the tiny model (held-out pass@1 ~0.03), so its teacher is exact.
TASK_DEFAULTS: dict[str, dict[str, Any]] = {
    "arithmetic": {"flawed_fraction": 0.6},
    "countdown": {"flawed_fraction": 0.0},
}


def resolve_settings(task_name: str, settings: dict[str, Any]) -> dict[str, Any]:
    """Defaults overlaid with ``settings``; unknown keys are a ``UserError`` that names them."""
    unknown = set(settings) - set(DEFAULT_SETTINGS)
    if unknown:
        raise UserError(f"unknown warm-start settings {sorted(unknown)}; valid: {sorted(DEFAULT_SETTINGS)}")
    get_task(task_name, **settings.get("task_params", {}))  # validates the task name and its params
    given = {k: v for k, v in settings.items() if v is not None}
    resolved = {**DEFAULT_SETTINGS, **TASK_DEFAULTS.get(task_name, {}), **given}
    if not 0.0 <= resolved["flawed_fraction"] < 1.0:
        raise UserError(f"flawed_fraction must be in [0, 1), got {resolved['flawed_fraction']!r}")
    return resolved


def settings_hash(task_name: str, settings: dict[str, Any]) -> str:
    """Short stable hash of the task, resolved settings and ``CODE_VERSION``."""
    blob = json.dumps({"task": task_name, "code_version": CODE_VERSION, **settings}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """``cache_dir`` if given, else ``$ASPO_CACHE_DIR/warmstart``, else ``~/.cache/aspo/warmstart``."""
    return cache.cache_root("warmstart", cache_dir)


def warm_start_path(task_name: str, *, cache_dir: str | Path | None = None, **settings: Any) -> Path:
    """Where ``warm_start`` with these arguments keeps (or will keep) its checkpoint."""
    resolved = resolve_settings(task_name, settings)
    return cache_root(cache_dir) / f"{task_name}-{settings_hash(task_name, resolved)}"


def warm_start(
    task_name: str, *, cache_dir: str | Path | None = None, progress: bool = True, **settings: Any
) -> Path:
    """Checkpoint directory of the supervised warm start for ``task_name``, building it on first use."""
    resolved = resolve_settings(task_name, settings)
    final = cache_root(cache_dir) / f"{task_name}-{settings_hash(task_name, resolved)}"
    notice = (
        f"building the {task_name} warm start once ({resolved['steps']} SFT steps); cached at {final}"
        if progress
        else None
    )
    return cache.build_once(
        final,
        lambda tmp: build_warm_start(task_name, resolved, tmp, progress=progress),
        marker=INFO_FILE,
        notice=notice,
    )


def build_warm_start(
    task_name: str, settings: dict[str, Any], out_dir: Path, *, progress: bool = True
) -> dict[str, Any]:
    """Train, measure and save into ``out_dir`` (no caching); returns the info written to ``INFO_FILE``."""
    import torch

    task = get_task(task_name, **settings["task_params"])
    tokenizer = build_tokenizer()
    size = {k: settings[k] for k in DEFAULT_SIZE}
    model = build_model(tokenizer, seed=settings["seed"], **size)
    start = time.perf_counter()
    losses = supervised_finetune(
        model,
        tokenizer,
        task,
        steps=settings["steps"],
        batch_size=settings["batch_size"],
        lr=settings["lr"],
        weight_decay=settings["weight_decay"],
        warmup_steps=settings["warmup_steps"],
        flawed_fraction=settings["flawed_fraction"],
        seed=settings["seed"],
        progress=progress,
    )
    train_s = time.perf_counter() - start
    start = time.perf_counter()
    records = task.make_split("test", settings["eval_problems"], seed=settings["seed"])
    metrics = (
        evaluate_policy(
            model,
            tokenizer,
            task,
            records,
            n=settings["eval_samples"],
            temperature=1.0,
            seed=settings["seed"],
        )
        if records
        else {}
    )
    greedy = evaluate_policy(model, tokenizer, task, records, n=1, temperature=0.0) if records else {}
    eval_s = time.perf_counter() - start
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    info = {
        "task": task_name,
        "code_version": CODE_VERSION,
        "settings": settings,
        "parameters": count_parameters(model),
        "final_loss": losses[-1] if losses else None,
        "train_seconds": round(train_s, 2),
        "eval_seconds": round(eval_s, 2),
        "heldout_temperature_1": metrics,
        "heldout_greedy_pass@1": greedy.get("pass@1"),
        "torch_threads": torch.get_num_threads(),
    }
    (out_dir / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")  # written last: marks completion
    return info


def sft_batch(
    tokenizer: Any, task: Task, records: list[dict[str, Any]], responses: list[str] | None = None
) -> dict[str, Any]:
    """Right-padded ``input_ids`` / ``attention_mask`` / ``labels`` (-100 outside response + EOS).

    Shapes: (B, T). ``responses`` default to the task's demonstrations.
    """
    import torch

    responses = responses if responses is not None else [task.demonstration(r) for r in records]
    prompts = tokenizer([r["prompt"] for r in records], add_special_tokens=True)["input_ids"]
    answers = tokenizer(responses, add_special_tokens=False)["input_ids"]
    rows = [(p, a + [tokenizer.eos_token_id]) for p, a in zip(prompts, answers, strict=True)]
    width = max(len(p) + len(a) for p, a in rows)
    ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (p, a) in enumerate(rows):
        ids[i, : len(p) + len(a)] = torch.tensor(p + a)
        labels[i, len(p) : len(p) + len(a)] = torch.tensor(a)
        mask[i, : len(p) + len(a)] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def supervised_finetune(
    model: Any,
    tokenizer: Any,
    task: Task,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    weight_decay: float = 0.0,
    warmup_steps: int = 0,
    flawed_fraction: float = 0.0,
    seed: int = 0,
    progress: bool = True,
    examples: list[tuple[dict, str]] | None = None,
) -> list[float]:
    """AdamW on demonstrations (fresh train problems each step), or on fixed ``examples`` (record, response).

    With ``flawed_fraction`` > 0, that fraction of the demonstrations carries one slip.

    Linear warm-up then cosine decay to 10% of ``lr``. Returns the per-step losses.
    """
    import torch
    from tqdm.auto import tqdm

    torch.manual_seed(seed)
    rng = random.Random(seed)
    stream = task.stream("train", seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay, betas=(0.9, 0.98))

    def lr_at(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        frac = (step - warmup_steps) / max(1, steps - warmup_steps)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_at)
    model.train()
    losses = []
    bar = tqdm(range(steps), desc=f"warm start ({task.name})", disable=not progress, leave=False)
    for _ in bar:
        if examples is None:
            records = [next(stream) for _ in range(batch_size)]
            responses = [
                task.flawed_demonstration(r, rng) if rng.random() < flawed_fraction else task.demonstration(r)
                for r in records
            ]
            batch = sft_batch(tokenizer, task, records, responses)
        else:
            chosen = [examples[rng.randrange(len(examples))] for _ in range(batch_size)]
            batch = sft_batch(tokenizer, task, [r for r, _ in chosen], [s for _, s in chosen])
        loss = model(**batch).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
    model.eval()
    return losses


def sample_responses(
    model: Any,
    tokenizer: Any,
    prompts: list[str],
    *,
    n: int,
    max_new_tokens: int,
    temperature: float = 1.0,
    seed: int = 0,
    batch_prompts: int = 64,
) -> list[list[str]]:
    """``n`` responses per prompt through the rollout engine (``aspo.rollout.HFEngine``, the sampler RL
    uses); greedy if ``temperature`` is 0 (one response, repeated ``n`` times)."""
    from aspo.rollout import HFEngine

    engine = HFEngine(model, tokenizer)
    greedy = temperature <= 0
    # greedy = the top token only: a nucleus smaller than any probability keeps exactly the argmax
    settings = {"temperature": 1.0, "top_p": GREEDY_TOP_P} if greedy else {"temperature": temperature}
    out: list[list[str]] = []
    for start in range(0, len(prompts), batch_prompts):
        chunk = prompts[start : start + batch_prompts]
        per = 1 if greedy else n
        texts = engine.generate(
            chunk, n=per, max_new_tokens=max_new_tokens, seed=seed + start, **settings
        ).responses
        out.extend(texts[i * per : (i + 1) * per] * (n if greedy else 1) for i in range(len(chunk)))
    return out


def evaluate_policy(
    model: Any,
    tokenizer: Any,
    task: Task,
    records: list[dict[str, Any]],
    *,
    n: int = 8,
    temperature: float = 1.0,
    seed: int = 0,
) -> dict[str, float]:
    """avg@n, pass@1 and pass@n of ``model`` on ``records`` at ``temperature``."""
    from aspo.evaluate import summarize

    responses = sample_responses(
        model,
        tokenizer,
        [r["prompt"] for r in records],
        n=n,
        max_new_tokens=task.max_new_tokens,
        temperature=temperature,
        seed=seed,
    )
    rewards = [
        [task.verify(**r, response=s) for s in samples] for r, samples in zip(records, responses, strict=True)
    ]
    return summarize(rewards, k=n)
