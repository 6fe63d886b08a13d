"""How much a short `aspo train` slows when it shares the machine, per thread policy.

    .venv/bin/python benchmarks/contention.py [--quick] [--steps 12] [--repeats 2]
        [--variants policy,today,...]

The same short lab run (``aspo train train.steps=12``, otherwise defaults; whole process, start-up
included) is timed in four situations:

* ``idle``  -- alone (and, for the eval ratio, ``aspo eval`` alone);
* ``busy``  -- beside ``cores // 2`` Python busy loops (one of 2 cores kept busy by another process);
* ``pair``  -- two such trainings started together (each is timed);
* ``eval``  -- beside ``aspo eval`` on the lab's warm start, restarted until the training ends (the
  training and the first evaluation are timed).

Each situation's time is divided by the same variant's idle time. Sharing 2 cores fairly costs 2x at most
(``busy`` and ``eval`` ideally less: the other process takes one core); the target is <= 2.5x, with the
policy's idle time no worse than today's. Variants are environment settings of every child process:

* ``policy``  -- nothing set: whatever ``aspo.threads`` decides (the default users get);
* ``today``   -- torch's defaults before the policy: one thread per core, libgomp spinning ~300k
  iterations at each barrier (``GOMP_SPINCOUNT=300000`` is libgomp's own default), tokenizers parallel;
* ``passive`` -- one thread per core, ``OMP_WAIT_POLICY=PASSIVE`` (waiting threads sleep at once);
* ``one``     -- a single thread (``OMP_NUM_THREADS=1``);
* ``spin3k``  -- one thread per core, a short spin (``GOMP_SPINCOUNT=3000``, tens of microseconds).

The machine is whatever it is: other load makes every figure noisy, so variants are interleaved within each
repeat (A B A B), medians are reported, and the 1-minute load average is printed beside each measurement.
Rerun on a quiet machine for clean figures. Runtime on a quiet 2-core machine, estimated from the idle
run (12.5 s): ~1.5 min per variant and repeat, up to ~3 min for ``today`` (it is the slow one under
contention); the default 4 variants x 2 repeats ~15 min, ``--quick`` (policy and today once) ~5 min.
The lab's warm start is built first if it is not cached (~30 s on a quiet machine).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from aspo.threads import ENV_DEFAULTS, usable_cores  # noqa: E402  (stdlib only: the parent stays light)

PYTHON = sys.executable
# Every knob a variant may set; removed from the inherited environment so each variant is exactly itself.
THREAD_KEYS = (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "GOMP_SPINCOUNT",
    "OMP_WAIT_POLICY",
    "KMP_BLOCKTIME",
    *ENV_DEFAULTS,
)


def variants(cores: int) -> dict[str, dict[str, str]]:
    every = str(cores)
    return {
        "policy": {},
        "today": {
            "OMP_NUM_THREADS": every,
            "GOMP_SPINCOUNT": "300000",
            "OPENBLAS_NUM_THREADS": every,
            "TOKENIZERS_PARALLELISM": "true",
        },
        "passive": {"OMP_NUM_THREADS": every, "OMP_WAIT_POLICY": "PASSIVE"},
        "one": {"OMP_NUM_THREADS": "1"},
        "spin3k": {"OMP_NUM_THREADS": every, "GOMP_SPINCOUNT": "3000"},
    }


def child_env(settings: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in THREAD_KEYS}
    env.update(
        {
            "TQDM_DISABLE": "1",
            "PYTHONWARNINGS": "ignore",
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "WANDB_DISABLED": "true",
        }
    )
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT / "src"), os.environ.get("PYTHONPATH")) if p)
    env.update(settings)
    return env


class Timed:
    """A child process timed from its start to its exit (wall) with its own CPU time (user + system)."""

    def __init__(self, cmd: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        self.handle = log.open("w")
        self.start = time.perf_counter()
        self.proc = subprocess.Popen(cmd, env=env, stdout=self.handle, stderr=subprocess.STDOUT, cwd=ROOT)
        self.wall = self.cpu = float("nan")
        self.returncode: int | None = None
        self._waiter = threading.Thread(target=self._wait, daemon=True)
        self._waiter.start()

    def _wait(self) -> None:
        _, status, usage = os.wait4(self.proc.pid, 0)
        self.wall = time.perf_counter() - self.start
        self.cpu = usage.ru_utime + usage.ru_stime
        self.returncode = os.waitstatus_to_exitcode(status)
        self.proc.returncode = self.returncode
        self.handle.close()

    def done(self) -> bool:
        return not self._waiter.is_alive()

    def join(self, check: bool = True) -> Timed:
        self._waiter.join()
        if check and self.returncode != 0:
            raise RuntimeError(f"exit {self.returncode}; log {self.log}:\n{self.log.read_text()[-3000:]}")
        return self

    def stop(self) -> None:
        if not self.done():
            self.proc.terminate()
        self.join(check=False)


class Bench:
    def __init__(self, args: argparse.Namespace, workdir: Path, warm: Path, data: Path) -> None:
        self.args, self.workdir, self.warm, self.data = args, workdir, warm, data
        self.count = 0
        self.with_eval = "eval" in args.scenarios

    def _path(self, tag: str) -> Path:
        self.count += 1
        return self.workdir / f"{self.count:03d}-{tag}"

    def train(self, env: dict[str, str], tag: str) -> Timed:
        out = self._path(tag)
        return Timed(
            [PYTHON, "-m", "aspo", "train", f"train.steps={self.args.steps}", f"output_dir={out}"],
            env,
            out.with_suffix(".log"),
        )

    def evaluate(self, env: dict[str, str], tag: str) -> Timed:
        out = self._path(tag)
        return Timed(
            [
                PYTHON,
                "-m",
                "aspo",
                "eval",
                "--model",
                str(self.warm),
                "--data",
                str(self.data),
                "--reward",
                "arithmetic",
                "--n",
                "4",
                "--limit",
                str(self.args.eval_problems),
                "--temperature",
                "1.0",
                "--max-new-tokens",
                "48",
                "--output",
                str(out),
            ],
            env,
            out.with_suffix(".log"),
        )

    def idle(self, env: dict[str, str]) -> dict[str, list[float]]:
        train = self.train(env, "idle").join()
        if not self.with_eval:
            return {"train": [train.wall], "train_cpu": [train.cpu]}
        evaluation = self.evaluate(env, "idle-eval").join()
        return {"train": [train.wall], "train_cpu": [train.cpu], "eval": [evaluation.wall]}

    def busy(self, env: dict[str, str]) -> dict[str, list[float]]:
        loops = [subprocess.Popen([PYTHON, "-c", "while True: pass"]) for _ in range(self.args.busy)]
        try:
            train = self.train(env, "busy").join()
        finally:
            for loop in loops:
                loop.kill()
                loop.wait()
        return {"train": [train.wall], "train_cpu": [train.cpu]}

    def pair(self, env: dict[str, str]) -> dict[str, list[float]]:
        first, second = self.train(env, "pair-a"), self.train(env, "pair-b")
        first.join(), second.join()
        return {"train": [first.wall, second.wall], "train_cpu": [first.cpu, second.cpu]}

    def eval(self, env: dict[str, str]) -> dict[str, list[float]]:
        train = self.train(env, "beside-eval")
        evaluations = [self.evaluate(env, "eval")]
        while not train.done():  # keep the evaluation going for the whole training
            if evaluations[-1].done():
                evaluations[-1].join()
                evaluations.append(self.evaluate(env, "eval"))
            time.sleep(0.05)
        train.join()
        first = evaluations[0].join()  # the first evaluation is the one timed: let it finish
        evaluations[-1].stop()
        return {"train": [train.wall], "train_cpu": [train.cpu], "eval": [first.wall]}


def setup(workdir: Path) -> tuple[Path, Path]:
    """The lab's warm start (built if not cached) and a JSONL of held-out lab problems for `aspo eval`."""
    data = workdir / "arithmetic-test.jsonl"
    code = (
        "import json, sys\nfrom aspo.lab import get_task, warm_start\n"
        "path = warm_start('arithmetic', progress=False)\n"
        "with open(sys.argv[1], 'w') as fh:\n"
        "    for r in get_task('arithmetic').make_split('test', 200, seed=0):\n"
        "        fh.write(json.dumps(r) + '\\n')\n"
        "print(path)\n"
    )
    out = subprocess.run(
        [PYTHON, "-c", code, str(data)], env=child_env({}), capture_output=True, text=True, check=True
    )
    return Path(out.stdout.strip().splitlines()[-1]), data


def load1() -> float:
    return os.getloadavg()[0]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="policy and today, one repeat (~5 min quiet)")
    parser.add_argument("--steps", type=int, default=12, help="training steps per run (default 12)")
    parser.add_argument("--repeats", type=int, default=2, help="rounds over every variant (default 2)")
    parser.add_argument("--variants", default="policy,today,passive,one", help="comma-separated, in order")
    parser.add_argument("--scenarios", default="idle,busy,pair,eval", help="comma-separated, in order")
    parser.add_argument(
        "--busy", type=int, default=max(1, usable_cores() // 2), help="busy loops (default cores/2)"
    )
    parser.add_argument("--eval-problems", type=int, default=48, help="problems per `aspo eval` (x4 samples)")
    parser.add_argument("--json", type=Path, default=None, help="also write every measurement here")
    parser.add_argument("--workdir", type=Path, default=None, help="keep run directories and logs here")
    args = parser.parse_args()
    if args.quick:
        args.variants, args.repeats = "policy,today", 1
    cores = usable_cores()
    table = variants(cores)
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = [n for n in names if n not in table] + [
        s for s in scenarios if s not in ("idle", "busy", "pair", "eval")
    ]
    if unknown or "idle" not in scenarios:
        parser.error(f"unknown variant/scenario {unknown} (or no idle scenario to divide by)")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="aspo-contention-"))
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    print(
        f"contention: {cores} usable cores, `aspo train train.steps={args.steps}` (whole process), "
        f"variants {', '.join(names)}, {args.repeats} repeat(s), busy loops {args.busy}; workdir {workdir}"
    )
    for name in names:
        print(f"  {name:8s} {' '.join(f'{k}={v}' for k, v in table[name].items()) or '(nothing set)'}")
    print(f"load at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())} (1/5/15 min)", flush=True)
    warm, data = setup(workdir)
    bench = Bench(args, workdir, warm, data)
    results: dict[str, dict[str, dict[str, list[float]]]] = {n: {s: {} for s in scenarios} for n in names}
    loads: dict[str, dict[str, list[float]]] = {n: {s: [] for s in scenarios} for n in names}
    for repeat in range(args.repeats):
        for scenario in scenarios:
            # alternate the order between repeats, so neither variant always follows the other
            for name in names if repeat % 2 == 0 else names[::-1]:
                load = load1()
                measured = getattr(bench, scenario)(child_env(table[name]))
                loads[name][scenario].append(load)
                for key, values in measured.items():
                    results[name][scenario].setdefault(key, []).extend(values)
                shown = " ".join(f"{k} {', '.join(f'{v:.1f}' for v in vs)}" for k, vs in measured.items())
                print(
                    f"  [{repeat + 1}/{args.repeats}] {scenario:5s} {name:8s} {shown}  (load {load:.2f})",
                    flush=True,
                )
    report(names, scenarios, results, loads)
    elapsed = time.perf_counter() - started
    print(f"load at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}; benchmark took {elapsed:.0f} s")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "cores": cores,
                    "steps": args.steps,
                    "variants": {n: table[n] for n in names},
                    "results": results,
                    "loads": loads,
                    "seconds": elapsed,
                },
                indent=1,
            )
        )


def report(names: list[str], scenarios: list[str], results: dict, loads: dict) -> None:
    med = statistics.median
    print("\nmedian wall seconds (ratio to the same variant idle; cpu = CPU seconds of the training)")
    print(f"{'scenario':22s}" + "".join(f"{n:>28s}" for n in names))
    rows = [("train", s) for s in scenarios] + [("eval", s) for s in scenarios if s in ("idle", "eval")]
    for key, scenario in rows:
        cells = []
        for name in names:
            values = results[name][scenario].get(key)
            base = results[name]["idle"].get(key)
            if not values or not base:
                cells.append("-")
                continue
            cell = f"{med(values):.1f} s ({med(values) / med(base):.2f}x)"
            if key == "train":
                cell += f" cpu {med(results[name][scenario]['train_cpu']):.0f}"
            cells.append(cell)
        print(f"{key + ' ' + scenario:22s}" + "".join(f"{c:>28s}" for c in cells))
    print(
        f"{'load (1 min, median)':22s}"
        + "".join(f"{med([x for s in scenarios for x in loads[n][s]]):>28.2f}" for n in names)
    )
    if "today" in names:
        today = med(results["today"]["idle"]["train"])
        print(
            "idle training vs today: "
            + ", ".join(f"{n} {med(results[n]['idle']['train']) / today:.2f}x" for n in names if n != "today")
        )
    worst = {
        n: max(med(results[n][s]["train"]) / med(results[n]["idle"]["train"]) for s in scenarios)
        for n in names
    }
    print(
        "worst training ratio: " + ", ".join(f"{n} {w:.2f}x" for n, w in worst.items()) + " (target <= 2.5x)"
    )


if __name__ == "__main__":
    main()
