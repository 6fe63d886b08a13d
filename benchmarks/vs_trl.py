"""aspo's native trainer against TRL's GRPOTrainer on one identical job, as whole processes.

    .venv/bin/python benchmarks/vs_trl.py [--runs 3] [--steps 40] [--threads 1] [--workdir DIR]
        [--precisions auto | fp32,bf16] [--trl trl,trl-nockpt | none]

The job (benchmarks/_common.py): a random-init tiny Qwen2 (the lab's size, ~0.8 M parameters) with the
lab's character tokenizer, saved with ``save_pretrained``; a JSONL of addition prompts; one reward function.
Per step 8 prompts x 8 samples, up to 32 new tokens at temperature 1.0 (no top-p / top-k), then one AdamW
update on all 64 responses (lr 3e-4 constant, no warm-up, no weight decay, grad clip 1.0), 40 steps, CPU.

Same math: advantages are the group-standardised rewards ((r - mean) / (std + eps), no group filtering),
the loss is the on-policy PPO-clip surrogate averaged over all response tokens of the batch (aspo:
``algorithm.loss=grpo`` with ``token-mean``; TRL: ``loss_type="dapo"``, ``num_iterations=1``, ``beta=0``,
``scale_rewards="group"``, ``mask_truncated_completions=False``). With one update per rollout the ratio is
1 and the gradient is -A * grad log p / #tokens in both. What differs (see docs/performance.md): the std
epsilon (aspo 1e-6, TRL 1e-4), the random streams (so the samples differ, not their distribution), the
data order, aspo's dual-clip constant (never binds at ratio 1), and what each writes: aspo a metrics file,
TensorBoard events, plots and a final checkpoint with optimizer state; TRL only its console log.
``--precisions fp32,bf16`` runs aspo once per ``train.precision`` in the same interleaved series
(``aspo-fp32``, ``aspo-bf16``) and prints their ratio; ``--trl none`` leaves TRL out.

Both run as fresh processes (start-up included: users pay it), interleaved (ABAB... with the order flipped
every run), with the same torch thread count (OMP_NUM_THREADS). Reported: median wall time, median CPU
time (user + system: the steadier number on a shared machine), the ratios TRL / aspo, peak RSS of each
process, and for aspo the generated tokens per second and the split of step time into generation, scoring
and update (from its metrics.jsonl). The load average is printed with every run: on a loaded machine wall
times are noisy, say so when quoting them.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402  (the sibling module, after the path line)
    Settings,
    Timed,
    aspo_command,
    aspo_time_shares,
    build_chat_job,
    build_job,
    child_env,
    load_average,
    median,
    run_timed,
    trl_command,
)


def trl_step_seconds(log: Path) -> float:
    """Seconds TRL spent in its training steps (sum of its logged ``step_time``)."""
    return sum(float(x) for x in re.findall(r"'step_time': '([0-9.eE+-]+)'", log.read_text()))


def trl_mean_length(log: Path) -> float:
    """TRL's mean response length in tokens over the run's steps (its logged ``completions/mean_length``;
    steps have equally many responses)."""
    means = [float(x) for x in re.findall(r"'completions/mean_length': '([0-9.eE+-]+)'", log.read_text())]
    return sum(means) / max(len(means), 1)


# the real-model job's settings: the SmolLM2 config's rollout (8 x 8, 64 tokens, T = 0.7), one update a step.
# The learning rate is too small to move the policy in 5 steps (the update is computed all the same): both
# trainers then sample from one distribution at every step, so neither gets cheaper steps by learning to
# answer shorter (at 2e-5 aspo's responses shortened from 39 to 17 tokens in 5 steps, TRL's did not).
CHAT_SETTINGS = Settings(steps=5, max_new_tokens=64, temperature=0.7, lr=1e-7)
# TRL variants: GRPOConfig's defaults (activation checkpointing on) and with checkpointing off
TRL_VARIANTS = {"trl": None, "trl-nockpt": False}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--job", choices=("tiny", "smollm2"), default="tiny")
    parser.add_argument(
        "--model",
        default="smollm2-135m-instruct",
        help="--job smollm2: a local checkpoint directory, or the packaged name (converted once, cached)",
    )
    parser.add_argument(
        "--trl",
        default="trl",
        help=f"comma-separated TRL variants to run against aspo: {', '.join(TRL_VARIANTS)}",
    )
    parser.add_argument(
        "--precisions",
        default="auto",
        help="comma-separated train.precision values aspo runs in (default auto: one run, named aspo)",
    )
    parser.add_argument("--runs", type=int, default=3, help="timed runs of each trainer (interleaved)")
    parser.add_argument("--steps", type=int, default=None, help="default: 40 (tiny), 5 (smollm2)")
    parser.add_argument("--lr", type=float, default=None, help="default: 3e-4 (tiny), 1e-7 (smollm2)")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch / OpenMP threads for both (1: steadiest on a shared machine)",
    )
    parser.add_argument("--workdir", default=None, help="default: a temporary directory, removed at the end")
    parser.add_argument("--json", default=None, help="also write the raw numbers here")
    args = parser.parse_args()
    variants = [v.strip() for v in args.trl.split(",") if v.strip() and v.strip() != "none"]
    unknown = [v for v in variants if v not in TRL_VARIANTS]
    precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
    if not precisions or any(p not in ("auto", "fp32", "bf16") for p in precisions):
        parser.error(f"--precisions: {args.precisions!r}; choose from auto, fp32, bf16")
    if unknown or not (variants or len(precisions) > 1):
        parser.error(f"--trl: unknown variant(s) {unknown}; choose from {', '.join(TRL_VARIANTS)}")

    work = Path(args.workdir or tempfile.mkdtemp(prefix="aspo-vs-trl-"))
    if args.job == "tiny":
        job, base = build_job(work / "job"), Settings()
    else:
        from aspo.pretrained import resolve_model

        job, base = build_chat_job(work / "job", resolve_model(args.model)), CHAT_SETTINGS
    settings = replace(base, steps=args.steps or base.steps, lr=args.lr or base.lr)
    env = child_env(args.threads)
    aspo_names = ["aspo"] if precisions == ["auto"] else [f"aspo-{p}" for p in precisions]
    commands = {
        name: lambda out, p=p: aspo_command(job, settings, out, p)
        for name, p in zip(aspo_names, precisions, strict=True)
    }
    for variant in variants:
        trl_settings = replace(settings, trl_checkpointing=TRL_VARIANTS[variant])
        commands[variant] = lambda out, s=trl_settings: trl_command(job, s, out)
    print(
        f"job {args.job}: {job.root}  steps {settings.steps}, "
        f"{settings.prompts_per_step} prompts x {settings.n} samples, "
        f"{settings.max_new_tokens} new tokens, T {settings.temperature}, threads {args.threads}"
    )
    # one short untimed run each: file-system caches and .pyc files warm for all alike
    warm = replace(settings, steps=1, prompts_per_step=2, n=2, max_new_tokens=4)
    warm_up = {"aspo": lambda out: aspo_command(job, warm, out)}
    if variants:
        warm_up["trl"] = lambda out: trl_command(job, warm, out)
    for name, build in warm_up.items():
        run_timed(build(work / f"warm-{name}"), env, work / f"warm-{name}.log")

    names = list(commands)
    results: dict[str, list[dict]] = {name: [] for name in names}
    for run in range(args.runs):
        shift = run % len(names)  # rotate the order: each trainer runs first, middle and last in turn
        for name in names[shift:] + names[:shift]:
            out = work / f"{name}-{run}"
            shutil.rmtree(out, ignore_errors=True)
            load = load_average()
            timed: Timed = run_timed(commands[name](out), env, work / f"{name}-{run}.log")
            row = {"wall_s": timed.wall_s, "cpu_s": timed.cpu_s, "max_rss_mb": timed.max_rss_mb, "load": load}
            if name in aspo_names:
                row.update(aspo_time_shares(out))
            else:
                log = work / f"{name}-{run}.log"
                row.update(step=trl_step_seconds(log), length=trl_mean_length(log))
            results[name].append(row)
            print(
                f"run {run} {name:10s}: wall {timed.wall_s:6.1f} s  cpu {timed.cpu_s:6.1f} s  "
                f"peak RSS {timed.max_rss_mb:6.0f} MB  (in steps {row['step']:.1f} s; mean response "
                f"{row['length']:.1f} tokens; load {load})",
                flush=True,
            )

    def med(name: str, key: str) -> float:
        return median([r[key] for r in results[name]])

    print("\nmedians over", args.runs, "runs:")
    for name in names:
        print(
            f"  {name:10s}: wall {med(name, 'wall_s'):6.1f} s, cpu {med(name, 'cpu_s'):6.1f} s, "
            f"peak RSS {med(name, 'max_rss_mb'):5.0f} MB, in training steps {med(name, 'step'):5.1f} s, "
            f"outside them (start-up, teardown) {med(name, 'wall_s') - med(name, 'step'):4.1f} s, "
            f"mean response {med(name, 'length'):.1f} tokens"
        )
    first = aspo_names[0]
    for variant in variants + aspo_names[1:]:
        pairs = list(zip(results[first], results[variant], strict=True))
        per_run_wall = [t["wall_s"] / a["wall_s"] for a, t in pairs]
        per_run_cpu = [t["cpu_s"] / a["cpu_s"] for a, t in pairs]
        print(
            f"ratio {variant} / {first}: wall {median(per_run_wall):.2f}x (median of per-run ratios; runs "
            f"{', '.join(f'{r:.2f}' for r in per_run_wall)}), cpu {median(per_run_cpu):.2f}x; "
            f"training steps only {med(variant, 'step') / med(first, 'step'):.2f}x; "
            f"peak memory {first} / {variant}: {med(first, 'max_rss_mb') / med(variant, 'max_rss_mb'):.2f}"
        )
    for name in aspo_names:
        step = med(name, "step")
        print(
            f"{name}: {med(name, 'tokens') / med(name, 'rollout'):.0f} generated tokens/s in generation; "
            f"of step time: generation {med(name, 'rollout') / step:.0%}, scoring "
            f"{med(name, 'reward') / step:.1%}, update {med(name, 'update') / step:.0%}"
        )
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "job": args.job,
                    "settings": settings.__dict__,
                    "threads": args.threads,
                    "precisions": precisions,
                    "results": results,
                },
                indent=1,
            )
        )
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
