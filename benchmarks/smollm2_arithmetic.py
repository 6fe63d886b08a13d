"""Real-model run: `aspo train configs/smollm2-arithmetic.yaml`, timed, then `aspo eval` on its checkpoint.

    .venv/bin/python benchmarks/smollm2_arithmetic.py [--out runs/smollm2-bench] [--no-eval] [key=value ...]

Needs the bundled model (`make smollm2`). Runs the training as a child process (start-up and evals
included, as a user pays them), then prints: held-out pass@1 / pass@k before -> after and the gain, token
entropy first -> last step, wall time, CPU time, peak resident memory (``ru_maxrss`` of the child, from
``os.wait4``), seconds per step split into rollout and update, and the load average before and after (the
numbers depend on it: say it next to them). Unless ``--no-eval``: ``aspo eval --model <final checkpoint>
--data lab:add:N`` with the run's eval settings, to check that it reproduces the final held-out pass@1.
Extra ``key=value`` arguments are passed to `aspo train` as overrides.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "configs" / "smollm2-arithmetic.yaml"


def timed(cmd: list[str]) -> dict[str, float]:
    """Run ``cmd``; wall seconds, CPU seconds and peak RSS (MiB) of that child alone."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"failed ({os.waitstatus_to_exitcode(status)}): {' '.join(cmd)}")
    return {"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime, "peak_mib": usage.ru_maxrss / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", type=Path, default=ROOT / "runs" / f"smollm2-bench-{time.strftime('%Y%m%d-%H%M%S')}"
    )
    parser.add_argument("--no-eval", action="store_true", help="skip the aspo eval reproduction")
    args, overrides = parser.parse_known_args()
    load_before = os.getloadavg()
    train = timed([sys.executable, "-m", "aspo", "train", str(CONFIG), f"output_dir={args.out}", *overrides])
    load_after = os.getloadavg()
    rows = [json.loads(line) for line in (args.out / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if "eval/pass@1" in r]
    steps = [r for r in rows if "time/step" in r]
    first, last = evals[0], evals[-1]
    k = next(key for key in first if key.startswith("eval/pass@") and key != "eval/pass@1")
    print(
        f"\nheld-out pass@1 {first['eval/pass@1']:.3f} -> {last['eval/pass@1']:.3f} "
        f"(gain {last['eval/pass@1'] - first['eval/pass@1']:+.3f}); {k.split('/')[1]} "
        f"{first[k]:.3f} -> {last[k]:.3f}"
    )
    print(
        f"token entropy {steps[0]['actor/entropy']:.3f} (step 1) -> {steps[-1]['actor/entropy']:.3f} "
        f"(step {steps[-1]['step']}); "
        f"train reward {steps[0]['reward/mean']:.3f} -> {steps[-1]['reward/mean']:.3f}"
    )
    split = {key: statistics.mean(r[key] for r in steps) for key in steps[0] if key.startswith("time/")}
    print("seconds per step (mean): " + ", ".join(f"{key[5:]} {v:.1f}" for key, v in split.items()))
    print(
        f"aspo train: wall {train['wall_s']:.0f} s, CPU {train['cpu_s']:.0f} s, "
        f"peak RSS {train['peak_mib']:.0f} MiB; "
        f"load average {load_before[0]:.2f} before, {load_after[0]:.2f} after"
    )
    if args.no_eval:
        return
    import yaml

    cfg = yaml.safe_load((args.out / "config.yaml").read_text())
    ckpt = sorted((args.out / "checkpoints").glob("step-*"), key=lambda p: int(p.name.split("-")[1]))[-1]
    out = args.out / "eval-final"
    ev = timed(
        [
            sys.executable,
            "-m",
            "aspo",
            "eval",
            "--model",
            str(ckpt),
            "--data",
            f"lab:{cfg['task']}:{cfg['data']['num_test']}",
            "--reward",
            cfg["reward"] or "number",
            "--n",
            str(cfg["eval"]["n"]),
            "--temperature",
            str(cfg["eval"]["temperature"]),
            "--top-p",
            str(cfg["eval"]["top_p"]),
            "--max-new-tokens",
            str(cfg["rollout"]["max_new_tokens"]),
            "--output",
            str(out),
        ]
    )
    summary = json.loads((out / "summary.json").read_text())
    print(
        f"aspo eval on {ckpt.name}: pass@1 {summary['pass@1']:.3f} (training's final eval "
        f"{last['eval/pass@1']:.3f}), wall {ev['wall_s']:.0f} s"
    )


if __name__ == "__main__":
    main()
