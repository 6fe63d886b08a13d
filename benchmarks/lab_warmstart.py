"""Build the tiny-lab warm start from scratch and measure it; then a cheap proxy for RL headroom.

    .venv/bin/python benchmarks/lab_warmstart.py [--task arithmetic] [--steps N] [--rft-seconds 60]

Prints: parameter count, warm-start wall time (train + held-out measurement), held-out pass@1 / pass@k at
temperature 1.0 and greedy pass@1. Then rejection-sampling fine-tuning (RFT) for about ``--rft-seconds``:
sample k responses per training prompt at temperature 1.0, keep the verified ones, SFT on them, repeat --
and reports the held-out pass@1 it reaches. If filtered self-training lifts pass@1, a policy-gradient
method with the same samples has learnable headroom too. Last, from the same warm start, a plain on-policy
group-normalised policy gradient (GRPO-style, no clipping: a proxy, not the project's trainer) for about
``--pg-seconds``. Timings depend on machine load: say so.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from typing import Any

import torch

from aspo.lab.model import load_policy
from aspo.lab.tasks import get_task
from aspo.lab.warmstart import (
    DEFAULT_SETTINGS,
    evaluate_policy,
    sample_responses,
    sft_batch,
    supervised_finetune,
    warm_start,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="arithmetic")
    parser.add_argument("--steps", type=int, default=DEFAULT_SETTINGS["steps"])
    parser.add_argument("--lr", type=float, default=DEFAULT_SETTINGS["lr"])
    parser.add_argument("--batch-size", type=int, default=DEFAULT_SETTINGS["batch_size"])
    parser.add_argument("--flawed-fraction", type=float, default=None, help="default: the task's")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-problems", type=int, default=200)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--rft-seconds", type=float, default=60.0)
    parser.add_argument("--rft-prompts", type=int, default=32)
    parser.add_argument("--rft-steps", type=int, default=8)
    parser.add_argument("--rft-lr", type=float, default=1e-4)  # 5e-4 breaks the policy in one step
    parser.add_argument("--pg-seconds", type=float, default=120.0)
    parser.add_argument("--pg-prompts", type=int, default=16)
    parser.add_argument("--pg-lr", type=float, default=1e-4)
    parser.add_argument("--cache-dir", default=None, help="default: a fresh temporary directory")
    args = parser.parse_args()

    settings = {
        "steps": args.steps,
        "lr": args.lr,
        "batch_size": args.batch_size,
        "seed": args.seed,
        "flawed_fraction": args.flawed_fraction,
        "eval_problems": args.eval_problems,
        "eval_samples": args.samples,
    }
    cache = args.cache_dir or tempfile.mkdtemp(prefix="aspo-lab-bench-")
    print(f"torch threads: {torch.get_num_threads()}  cache: {cache}")
    start = time.perf_counter()
    path = warm_start(args.task, cache_dir=cache, **settings)
    build_s = time.perf_counter() - start
    info = json.loads((path / "warmstart.json").read_text())
    print(f"parameters: {info['parameters']:,}")
    print(
        f"warm start wall: {build_s:.1f} s (train {info['train_seconds']} s, held-out eval "
        f"{info['eval_seconds']} s), final loss {info['final_loss']:.4f}"
    )
    print(f"held-out T=1.0, {args.eval_problems} problems x {args.samples}: {info['heldout_temperature_1']}")
    print(f"held-out greedy pass@1: {info.get('heldout_greedy_pass@1', float('nan')):.3f}")
    task = get_task(args.task)
    test = task.make_split("test", args.eval_problems, seed=args.seed)
    lengths = [len(task.demonstration(r)) + 1 for r in test]
    print(
        f"response length (demonstration + EOS): mean {sum(lengths) / len(lengths):.1f}, max {max(lengths)}"
    )

    before = info["heldout_temperature_1"]
    if args.rft_seconds > 0:
        rejection_sampling_proxy(args, task, path, test, before)
    if args.pg_seconds > 0:
        policy_gradient_proxy(args, task, path, test, before)


def rejection_sampling_proxy(
    args: argparse.Namespace, task: Any, path: Any, test: list, before: dict
) -> None:
    model, tokenizer = load_policy(path)
    stream = task.stream("train", seed=args.seed + 1000)
    start, rounds, kept_total, sampled_total = time.perf_counter(), 0, 0, 0
    while time.perf_counter() - start < args.rft_seconds:
        records = [next(stream) for _ in range(args.rft_prompts)]
        responses = sample_responses(
            model,
            tokenizer,
            [r["prompt"] for r in records],
            n=args.samples,
            max_new_tokens=task.max_new_tokens,
            temperature=1.0,
            seed=rounds,
        )
        kept = [
            (r, s)
            for r, group in zip(records, responses, strict=True)
            for s in group
            if task.verify(**r, response=s) == 1.0
        ]
        sampled_total += len(records) * args.samples
        kept_total += len(kept)
        if kept:
            supervised_finetune(
                model,
                tokenizer,
                task,
                steps=args.rft_steps,
                batch_size=32,
                lr=args.rft_lr,
                seed=rounds,
                progress=False,
                examples=kept,
            )
        rounds += 1
    rft_s = time.perf_counter() - start
    after = evaluate_policy(model, tokenizer, task, test, n=args.samples, temperature=1.0, seed=args.seed)
    greedy_after = evaluate_policy(model, tokenizer, task, test, n=1, temperature=0.0)
    print(f"RFT proxy: {rounds} rounds in {rft_s:.1f} s, kept {kept_total}/{sampled_total} samples")
    print(
        f"held-out T=1.0 after RFT: {after}  (pass@1 {before['pass@1']:.3f} -> {after['pass@1']:.3f}, "
        f"delta {after['pass@1'] - before['pass@1']:+.3f}); greedy after {greedy_after['pass@1']:.3f}"
    )


def policy_gradient_proxy(args: argparse.Namespace, task: Any, path: Any, test: list, before: dict) -> None:
    model, tokenizer = load_policy(path)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.pg_lr, weight_decay=0.0)
    stream = task.stream("train", seed=args.seed + 2000)
    start, steps, mixed, reward_sum, sampled = time.perf_counter(), 0, 0, 0.0, 0
    while time.perf_counter() - start < args.pg_seconds:
        records = [next(stream) for _ in range(args.pg_prompts)]
        groups = sample_responses(
            model,
            tokenizer,
            [r["prompt"] for r in records],
            n=args.samples,
            max_new_tokens=task.max_new_tokens,
            temperature=1.0,
            seed=10_000 + steps,
        )
        rewards = torch.tensor(
            [[task.verify(**r, response=s) for s in g] for r, g in zip(records, groups, strict=True)]
        )
        advantages = (rewards - rewards.mean(1, keepdim=True)) / (rewards.std(1, keepdim=True) + 1e-6)
        mixed += int((rewards.std(1) > 0).sum())
        reward_sum, sampled = reward_sum + float(rewards.sum()), sampled + rewards.numel()
        batch = sft_batch(
            tokenizer, task, [r for r in records for _ in range(args.samples)], [s for g in groups for s in g]
        )
        model.train()
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
        labels = batch["labels"][:, 1:]
        mask = labels != -100
        token_logp = (
            torch.log_softmax(logits.float(), -1).gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        )
        loss = -(advantages.reshape(-1, 1) * token_logp * mask).sum() / mask.sum()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        model.eval()
        steps += 1
    pg_s = time.perf_counter() - start
    after = evaluate_policy(model, tokenizer, task, test, n=args.samples, temperature=1.0, seed=args.seed)
    print(
        f"policy-gradient proxy: {steps} steps of {args.pg_prompts}x{args.samples} in {pg_s:.1f} s, "
        f"train reward {reward_sum / max(1, sampled):.3f}, "
        f"mixed-reward groups {mixed}/{steps * args.pg_prompts}"
    )
    print(
        f"held-out T=1.0 after PG: {after}  (pass@1 {before['pass@1']:.3f} -> {after['pass@1']:.3f}, "
        f"delta {after['pass@1'] - before['pass@1']:+.3f})"
    )


if __name__ == "__main__":
    main()
