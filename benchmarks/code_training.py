"""The code reward inside the training loop, over a longer run: does scoring stay fast and clean?

    .venv/bin/python benchmarks/code_training.py [--config configs/smollm2-code.yaml] [--steps 30]
        [--out DIR] [key=value ...]

Runs `aspo train` on the code task as a child process (extra ``key=value`` arguments are passed on as
overrides; ``train.save_every=0`` and ``eval_every=0`` unless given) and watches it from outside: every
0.2 s it reads the child's resident memory and its live descendant processes (the sandboxes, the
zygote servers). At each new row of ``metrics.jsonl`` it prints the step's wall time, the scoring's time
and share of the step, code checks per second, infrastructure errors (checks that could not run: must be
0), the peak RSS and the descendants alive at that moment. At the end: early vs late steps (the first and
last third: step time, checks per second, RSS) as ratios measured in this one run, the total of
infrastructure errors, and the descendant processes still alive after the trainer exited (leaked
sandboxes: must be 0). The CPU model, its flags of note and the load average are printed with them.
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
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import cpu_description  # noqa: E402  (the sibling module, after the path line)


def _parents() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, start time): every process this user can see."""
    out = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
        if fields[0] != "Z":  # a zombie is dead already
            out[int(entry)] = (int(fields[1]), fields[19])
    return out


def descendants(root: int) -> set[tuple[int, str]]:
    """(pid, start time) of every live process below ``root``."""
    table = _parents()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    found, todo = set(), [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add((child, table[child][1]))
            todo.append(child)
    return found


def rss_mib(pid: int) -> float:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0.0
    line = next((ln for ln in status.splitlines() if ln.startswith("VmRSS:")), "VmRSS: 0 kB")
    return int(line.split()[1]) / 1024


def _mean(rows: list[dict], key: str) -> float:
    return statistics.mean(r[key] for r in rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "smollm2-code.yaml")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument(
        "--out", type=Path, default=ROOT / "runs" / f"code-soak-{time.strftime('%Y%m%d-%H%M%S')}"
    )
    args, overrides = parser.parse_known_args()
    given = {o.split("=", 1)[0] for o in overrides}
    defaults = {"train.save_every": "0", "train.eval_every": "0", "train.plots": "false"}
    overrides += [f"{k}={v}" for k, v in defaults.items() if k not in given]
    cmd = [sys.executable, "-m", "aspo", "train", str(args.config), f"output_dir={args.out}"]
    cmd += [f"train.steps={args.steps}", *overrides]
    print(cpu_description())
    load_before = os.getloadavg()
    args.out.mkdir(parents=True, exist_ok=True)
    log = args.out.with_name(args.out.name + ".log")  # the child's console (its progress bar), beside the run
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log.open("w"))
    metrics = args.out / "metrics.jsonl"
    seen: set[tuple[int, str]] = set()
    rows: list[dict] = []
    peak = 0.0
    print(
        f"{'step':>4} {'step s':>7} {'reward s':>8} {'share':>6} {'checks/s':>8} {'infra':>5} "
        f"{'RSS MiB':>8} {'procs':>5}"
    )
    while True:
        done = proc.poll() is not None
        live = descendants(proc.pid) if not done else set()
        seen |= live
        peak = max(peak, rss_mib(proc.pid))
        lines = metrics.read_text().splitlines() if metrics.exists() else []
        for line in lines[len(rows) :]:
            row = json.loads(line) if line.strip() else {}
            rows.append(row)
            if "time/step" not in row:
                continue
            row["rss_mib"], row["procs"] = peak, len(live)
            print(
                f"{row['step']:>4} {row['time/step']:>7.1f} {row['time/reward']:>8.2f} "
                f"{row['perf/reward_share']:>6.3f} {row['perf/reward_checks_per_s']:>8.1f} "
                f"{row['reward/infra_errors']:>5.0f} {peak:>8.0f} {len(live):>5}",
                flush=True,
            )
        if done:
            break
        time.sleep(0.2)
    if proc.returncode != 0:
        tail = log.read_text().strip().splitlines()[-3:]
        sys.exit(f"aspo train failed ({proc.returncode}): {' '.join(cmd)}\n" + "\n".join(tail))
    wall = time.perf_counter() - start
    time.sleep(1.0)  # let killed sandboxes finish dying
    alive = _parents()
    leaked = [pid for pid, start in seen if alive.get(pid, (0, ""))[1] == start]
    steps = [r for r in rows if "time/step" in r]
    evals = [r for r in rows if "eval/pass@1" in r]
    if evals:
        print(
            f"held-out pass@1 {evals[0]['eval/pass@1']:.3f} (step {evals[0]['step']}) -> "
            f"{evals[-1]['eval/pass@1']:.3f} (step {evals[-1]['step']}); aspo train wall {wall:.0f} s"
        )
    third = max(1, len(steps) // 3)
    early, late = steps[:third], steps[-third:]
    print(
        f"\nsteps {len(steps)}; early (first {third}) vs late (last {third}) steps, ratio late/early: "
        f"step time {_mean(late, 'time/step') / _mean(early, 'time/step'):.2f}, "
        f"checks/s {_mean(late, 'perf/reward_checks_per_s') / _mean(early, 'perf/reward_checks_per_s'):.2f}, "
        f"peak RSS {_mean(late, 'rss_mib') / _mean(early, 'rss_mib'):.2f}"
    )
    print(
        f"scoring: {_mean(steps, 'perf/reward_checks_per_s'):.1f} checks/s, "
        f"{_mean(steps, 'perf/reward_share'):.3f} of a step (mean); infrastructure errors "
        f"{sum(r['reward/infra_errors'] for r in steps):.0f} in all; responses per step "
        f"{_mean(steps, 'response/length_mean'):.0f} tokens long (mean)"
    )
    print(
        f"descendant processes alive after the trainer exited: {len(leaked)}"
        f"{' ' + str(sorted(p for p, _ in leaked)) if leaked else ''}; "
        f"load average {load_before[0]:.2f} before, {os.getloadavg()[0]:.2f} after"
    )


if __name__ == "__main__":
    main()
