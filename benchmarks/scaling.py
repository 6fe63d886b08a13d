"""How the native trainer's step time and peak memory grow with response length and group size.

    .venv/bin/python benchmarks/scaling.py [--steps 6] [--threads 1] [--lengths 32 64 128 256]
        [--groups 4 8 16]

The job of benchmarks/vs_trl.py (tiny random-init Qwen2, 8 prompts per step, one update per step), except
that the tokenizer's EOS is a token the model cannot emit, so every response is exactly ``max_new_tokens``
long and "length" means what it says. Each setting runs as its own ``aspo train`` process: step time is
the median of its ``time/step`` after the first step (per-step generation and update too), memory is the
process's peak RSS. Two sweeps: length L in --lengths at n = 8, and group size n in --groups at L = 32.

Growth is reported two ways: the exponent b of a least-squares fit time ~ L^b (b = 1: linear, 2: quadratic)
and the R^2 of a straight-line fit time = c0 + c1 * L. Memory: the growth of peak RSS over the smallest
setting, in MB per extra token (or sample). Timings on a shared machine are noisy: the load is printed.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402  (the sibling module, after the path line)
    Settings,
    aspo_command,
    build_job,
    child_env,
    load_average,
    median,
    run_timed,
)


def step_medians(run_dir: Path) -> dict[str, float]:
    """Median seconds per step (total, generation, update) after the first step."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "time/step" in r][1:]
    return {key: median([r[f"time/{key}"] for r in rows]) for key in ("step", "rollout", "update")}


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


def sweep(name: str, values: list[int], make: object, job: object, env: dict, work: Path) -> list[dict]:
    rows = []
    for value in values:
        settings: Settings = make(value)
        out = work / f"{name}-{value}"
        shutil.rmtree(out, ignore_errors=True)
        load = load_average()
        timed = run_timed(aspo_command(job, settings, out), env, work / f"{name}-{value}.log")
        row = {
            name: value,
            **step_medians(out),
            "max_rss_mb": timed.max_rss_mb,
            "wall_s": timed.wall_s,
            "tokens_per_step": settings.prompts_per_step * settings.n * settings.max_new_tokens,
            "load": load,
        }
        rows.append(row)
        print(
            f"  {name}={value:4d}: step {row['step']:6.3f} s (generation {row['rollout']:6.3f}, update "
            f"{row['update']:6.3f}), peak RSS {row['max_rss_mb']:5.0f} MB, "
            f"{row['tokens_per_step']} tokens/step "
            f"(load {load})",
            flush=True,
        )
    return rows


def report(name: str, rows: list[dict]) -> None:
    xs = [float(r[name]) for r in rows]
    for key in ("step", "rollout", "update"):
        ys = [r[key] for r in rows]
        _, slope, r2 = linear_fit(xs, ys)
        print(
            f"  {key:8s} time ~ {name}^{power_fit(xs, ys):.2f}; "
            f"straight line {slope * 1000:.2f} ms per unit of "
            f"{name}, R^2 {r2:.3f}"
        )
    mem = [r["max_rss_mb"] for r in rows]
    _, slope, r2 = linear_fit(xs, mem)
    print(f"  peak RSS {mem[0]:.0f} -> {mem[-1]:.0f} MB: +{slope:.2f} MB per unit of {name} (R^2 {r2:.3f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6, help="steps per setting (the first is not counted)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--lengths", type=int, nargs="+", default=[32, 64, 128, 256])
    parser.add_argument("--groups", type=int, nargs="+", default=[4, 8, 16])
    parser.add_argument("--workdir", default=None, help="default: a temporary directory, removed at the end")
    parser.add_argument("--json", default=None, help="also write the raw numbers here")
    args = parser.parse_args()

    work = Path(args.workdir or tempfile.mkdtemp(prefix="aspo-scaling-"))
    job = build_job(work / "job", unreachable_eos=True)
    env = child_env(args.threads)
    print(
        f"tiny Qwen2, 8 prompts per step, one update per step, {args.steps} steps per setting, "
        f"threads {args.threads}; every response exactly max_new_tokens long"
    )
    print("response length L (n = 8):")
    by_length = sweep(
        "L", args.lengths, lambda v: Settings(steps=args.steps, max_new_tokens=v), job, env, work
    )
    print("group size n (L = 32):")
    by_group = sweep("n", args.groups, lambda v: Settings(steps=args.steps, n=v), job, env, work)
    print("\ngrowth with response length L:")
    report("L", by_length)
    print("growth with group size n:")
    report("n", by_group)
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {"by_length": by_length, "by_group": by_group, "threads": args.threads, "steps": args.steps},
                indent=1,
            )
        )
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
