"""`aspo compare`: every algorithm preset x every seed on one config, in parallel, resumable, then a report.

Each (algorithm, seed) is its own `python -m aspo train ... output_dir=DIR/runs/<algo>-s<seed> resume=true`
subprocess, logged to ``train.log`` in its run directory. A bounded pool runs ``--workers`` of them at once,
each limited to ``cores // workers`` torch threads. Rerunning the same command skips finished runs and
resumes unfinished ones from their newest checkpoint; a failing run is reported, not fatal to the others.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import itertools
import json
import os
import platform
import re
import shlex
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aspo.commands.parser import CommandParser
from aspo.errors import UserError

MANIFEST = (
    "compare.json"  # the settings of the comparison, so `--report-only --output DIR` needs nothing else
)
RUN_LOG = "train.log"
HARNESS_KEYS = ("train.seed", "output_dir", "resume")  # set per run by the harness, never by the user


def build_parser() -> argparse.ArgumentParser:
    from aspo.presets import describe_presets

    parser = CommandParser(
        prog="aspo compare",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=textwrap.fill(
            "Run several algorithm presets over several seeds on the same config (the tiny lab by default) "
            "and write summary.json, report.md and figures into --output. Rerun the same command to resume: "
            "finished runs are skipped, unfinished ones continue from their checkpoints.",
            100,
        ),
        epilog="presets (`--algos`):\n"
        + describe_presets()
        + "\n\nexamples:\n  aspo compare --algos grpo,dapo,"
        "aspo --seeds 3 --output runs/cmp train.steps=40\n  aspo compare --algos grpo,aspo --seeds 5 "
        "--grid train.mini_batches=1,4,8,24 --output runs/frontier\n\n`aspo train --help` lists every "
        "config key.",
    )
    parser.add_argument(
        "items",
        nargs="*",
        metavar="[CONFIG.yaml] key=value",
        help="an optional config file, then dotted overrides shared by every run",
    )
    parser.add_argument(
        "--algos", default="grpo,dapo,aspo", help="comma-separated presets (default: %(default)s)"
    )
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 for every preset (default: 3)")
    parser.add_argument("--output", help="comparison directory (rerun with the same one to resume)")
    parser.add_argument(
        "--grid",
        action="append",
        default=[],
        metavar="KEY=V1,V2,...",
        help="sweep a config key over values (repeat for several keys: their product); every "
        "algorithm x seed runs at every grid point, and the report adds a frontier view",
    )
    parser.add_argument("--workers", type=int, default=0, help="runs at once (default: number of cores)")
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="run nothing: rebuild summary/report/figures from the runs in --output",
    )
    parser.add_argument(
        "--verdicts",
        nargs="+",
        metavar="DIR",
        help="run nothing: print one markdown table of the claims' corrected verdicts over the comparisons "
        "in these directories (their summary.json)",
    )
    return parser


@dataclass
class PlannedRun:
    algo: str
    seed: int
    run_dir: Path
    overrides: list[str]
    cfg: Any = field(repr=False)
    point: dict[str, str] = field(default_factory=dict)  # the grid values of this run (empty without --grid)

    @property
    def variant(self) -> str:
        """What the report groups seeds by: the preset, and the grid point when there is one."""
        from aspo.report.compare import variant_label

        return variant_label(self.algo, self.point)

    @property
    def name(self) -> str:
        return f"{self.algo}{point_tag(self.point)}-s{self.seed}"


def point_tag(point: dict[str, str]) -> str:
    """A file-name-safe tag for a grid point: ``-mini_batches8-lr1e-05``."""
    return "".join(
        f"-{key.rsplit('.', 1)[-1]}{re.sub(r'[^A-Za-z0-9._+-]', '_', value)}" for key, value in point.items()
    )


def parse_grid(specs: list[str]) -> dict[str, list[str]]:
    """``["train.lr=1e-5,2e-5", ...]`` -> ``{"train.lr": ["1e-5", "2e-5"], ...}`` (order kept)."""
    grid: dict[str, list[str]] = {}
    for spec in specs:
        key, sep, raw = spec.partition("=")
        key = key.strip()
        values = [v.strip() for v in raw.split(",") if v.strip()]
        if not sep or not key or not values:
            raise UserError(f"--grid {spec!r} is not of the form dotted.key=v1,v2,...")
        if key in grid:
            raise UserError(f"--grid names {key!r} twice; give all its values in one --grid")
        if len(set(values)) != len(values):
            raise UserError(f"--grid {key} repeats a value: {values}")
        grid[key] = values
    return grid


def grid_points(grid: dict[str, list[str]]) -> list[dict[str, str]]:
    """Every combination of the grid's values (one empty point without a grid), first key slowest."""
    keys = list(grid)
    return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*(grid[k] for k in keys))]


def split_items(items: list[str]) -> tuple[str | None, list[str]]:
    """(config file, overrides) from the positional arguments, the same rule as `aspo train`."""
    from aspo.commands.train import parse_args

    return parse_args(items)


def plan_runs(
    config_path: str | None,
    overrides: list[str],
    algos: list[str],
    seeds: list[int],
    output: Path,
    grid: dict[str, list[str]] | None = None,
) -> tuple[list[PlannedRun], Any, int]:
    """Resolve and validate every run's config before anything starts; returns (runs, base config, cap)."""
    from aspo.config import load_config
    from aspo.presets import PRESETS, preset_keys, preset_overrides

    unknown = [a for a in algos if a not in PRESETS]
    if unknown or not algos:
        raise UserError(
            f"unknown algorithm preset(s) {unknown or algos}; valid presets: {', '.join(PRESETS)}"
        )
    reserved = preset_keys(algos) | set(HARNESS_KEYS)
    clash = sorted({o.partition("=")[0].strip() for o in overrides} & reserved)
    if clash:
        raise UserError(
            f"override(s) {clash} would change what the presets or the harness set per run; shared "
            "overrides must apply to every algorithm alike (seeds come from --seeds, run dirs from "
            "--output)"
        )
    grid = grid or {}
    swept = set(grid)
    if swept & (reserved | {o.partition("=")[0].strip() for o in overrides}):
        raise UserError(
            f"--grid key(s) {sorted(swept & (reserved | {o.partition('=')[0].strip() for o in overrides}))}"
            " are also set by a preset, the harness or a shared override; sweep a key nothing else sets"
        )
    base = load_config(config_path, overrides).validate()
    if not base.has_heldout_data:
        raise UserError(
            "aspo compare reports held-out pass@1 / pass@k: give data.test=FILE (without data.train "
            "the lab task's held-out split is used)"
        )
    cap = base.response_cap
    runs = []
    for point in grid_points(grid):
        point_items = [f"{key}={value}" for key, value in point.items()]
        # the response cap may be what is swept: size DAPO's overlong buffer per point
        point_cap = (
            load_config(config_path, [*overrides, *point_items]).validate().response_cap if point else cap
        )
        for algo in algos:
            for seed in seeds:
                planned = PlannedRun(algo, seed, Path(), [], None, point)
                run_dir = (output / "runs" / planned.name).resolve()
                items = [
                    *overrides,
                    *point_items,
                    *preset_overrides(algo, point_cap),
                    f"train.seed={seed}",
                    f"output_dir={json.dumps(str(run_dir))}",
                    "resume=true",
                ]
                cfg = load_config(config_path, items).validate()  # the objective's checks included
                runs.append(PlannedRun(algo, seed, run_dir, items, cfg, point))
    return runs, base, cap


def check_existing(run: PlannedRun) -> None:
    """A run dir from a different config must not be resumed silently: name the keys that differ."""
    from aspo.config import all_keys, load_config

    saved_path = run.run_dir / "config.yaml"
    if not saved_path.is_file():
        return
    saved = load_config(str(saved_path))
    now = copy.deepcopy(run.cfg)
    for cfg in (saved, now):  # an unset aggregation is the objective's own: runs that spelled it out match
        cfg.algorithm.loss_agg_mode = cfg.algorithm.resolved_objective_params()["loss_agg_mode"]
    if now.train.precision == "auto":  # a run saves what auto chose, and a resumed auto run keeps it
        now.train.precision = saved.train.precision
    diffs = [
        f"{key}={value!r} (now {v2!r})"
        for (key, _, value), (_, _, v2) in zip(all_keys(saved), all_keys(now), strict=True)
        if value != v2 and key not in ("output_dir", "resume")
    ]
    if diffs:
        raise UserError(
            f"{run.run_dir} was run with a different config: {', '.join(diffs)}; use another "
            "--output, or delete that run directory to redo it"
        )


def is_finished(run: PlannedRun) -> bool:
    """The final held-out eval was logged (the trainer's last act before its final checkpoint, which
    ``train.save_every=0`` turns off): everything the report needs is there."""
    from aspo.report.compare import is_complete
    from aspo.report.metrics import read_metrics

    return is_complete(read_metrics(run.run_dir), run.cfg.train.steps)


@dataclass
class Job:
    """One subprocess: ``argv`` with stdout+stderr appended to ``log``."""

    name: str
    argv: list[str]
    log: Path
    env: dict[str, str]


@dataclass
class JobResult:
    name: str
    returncode: int
    wall_s: float
    log: Path


def run_jobs(jobs: list[Job], workers: int, report: Any = print) -> list[JobResult]:
    """Run ``jobs`` with at most ``workers`` at once; on Ctrl-C the running children are terminated."""
    live: dict[str, subprocess.Popen] = {}
    stop = threading.Event()
    lock = threading.Lock()

    def one(job: Job) -> JobResult:
        if stop.is_set():
            return JobResult(job.name, -1, 0.0, job.log)
        job.log.parent.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        with open(job.log, "a") as log:
            log.write(f"\n=== aspo compare {time.strftime('%Y-%m-%d %H:%M:%S')}: {shlex.join(job.argv)}\n")
            log.flush()
            proc = subprocess.Popen(
                job.argv, stdout=log, stderr=subprocess.STDOUT, env=job.env, stdin=subprocess.DEVNULL
            )
            with lock:
                live[job.name] = proc
            code = proc.wait()
            with lock:
                live.pop(job.name, None)
        return JobResult(job.name, code, time.perf_counter() - start, job.log)

    results = []
    pool = ThreadPoolExecutor(max_workers=max(1, workers))
    try:
        futures = [pool.submit(one, job) for job in jobs]
        for future in as_completed(futures):
            result = future.result()
            results.append(result)
            report(result)
    except KeyboardInterrupt:
        stop.set()
        with lock:
            for proc in live.values():
                proc.terminate()
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    return results


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """Treat SIGTERM like Ctrl-C (children terminated) while runs are going; main thread only."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_env(threads: int) -> dict[str, str]:
    from aspo.threads import child_environment

    env = child_environment(threads)
    env.update({"TQDM_DISABLE": "1", "PYTHONUNBUFFERED": "1"})
    return env


def _update_run_state(run_dir: Path, result: JobResult) -> None:
    from aspo.report.compare import RUN_STATE_FILE

    path = run_dir / RUN_STATE_FILE
    state = json.loads(path.read_text()) if path.is_file() else {"wall_s": 0.0, "attempts": 0}
    state.update(
        {
            "wall_s": state["wall_s"] + result.wall_s,
            "attempts": state["attempts"] + 1,
            "returncode": result.returncode,
            "log": RUN_LOG,
        }
    )
    path.write_text(json.dumps(state, indent=1) + "\n")


def machine_info() -> dict[str, Any]:
    import torch

    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
    }


def execute(args: argparse.Namespace, argv: list[str]) -> int:
    from aspo.config import to_dict
    from aspo.presets import preset_overrides
    from aspo.threads import usable_cores

    config_path, overrides = split_items(args.items)
    algos = [a.strip() for a in args.algos.split(",") if a.strip()]
    if args.seeds < 1:
        raise UserError(f"--seeds={args.seeds} must be >= 1")
    output = Path(args.output)
    grid = parse_grid(args.grid)
    runs, base, cap = plan_runs(config_path, overrides, algos, list(range(args.seeds)), output, grid)
    for run in runs:
        check_existing(run)
    cores = usable_cores()
    workers = min(args.workers or cores, len(runs))
    threads = max(1, cores // workers)
    output.mkdir(parents=True, exist_ok=True)
    manifest_path = output / MANIFEST
    previous = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    todo = [r for r in runs if not is_finished(r)]
    points = f" x {len(runs) // (len(algos) * args.seeds)} grid points" if grid else ""
    print(
        f"aspo compare: {len(runs)} runs ({', '.join(algos)} x {args.seeds} seeds{points}); "
        f"{len(runs) - len(todo)} already finished, {len(todo)} to run, "
        f"{workers} at a time x {threads} thread(s)",
        flush=True,
    )
    start = time.perf_counter()
    if todo and base.model == "tiny":
        from aspo.lab import warm_start

        print("aspo compare: preparing the lab warm start (cached after the first time)", flush=True)
        warm_start(base.task, progress=False)  # once here, not racing in every run
    by_name = {r.name: r for r in runs}
    failed = []

    def report(result: JobResult) -> None:
        _update_run_state(by_name[result.name].run_dir, result)
        if result.returncode == 0:
            print(f"aspo compare: {result.name} finished in {result.wall_s:.0f} s", flush=True)
        else:
            failed.append(result)
            print(
                f"aspo compare: {result.name} FAILED (exit {result.returncode}); log: {result.log}",
                flush=True,
            )

    env = run_env(threads)
    jobs = [
        Job(
            r.name,
            [sys.executable, "-m", "aspo", "train", *([config_path] if config_path else []), *r.overrides],
            r.run_dir / RUN_LOG,
            env,
        )
        for r in todo
    ]
    with _sigterm_as_interrupt():  # a killed harness must not leave its runs training unattended
        run_jobs(jobs, workers, report)
    wall = previous.get("wall_s", 0.0) + (time.perf_counter() - start if todo else 0.0)
    setup = {
        "name": output.resolve().name,
        "command": shlex.join(["aspo", "compare", *argv]),
        "algos": algos,
        "seeds": list(range(args.seeds)),
        "grid": grid,
        "config_file": config_path,
        "overrides": overrides,
        "presets": {a: preset_overrides(a, cap) for a in algos},
        "max_new_tokens": cap,
        "config": to_dict(base),
        "machine": machine_info(),
        "workers": workers,
        "threads_per_run": threads,
        "wall_s": wall,
    }
    manifest_path.write_text(json.dumps(setup, indent=1) + "\n")
    write_report(output, setup, runs)
    return 1 if failed else 0


def write_report(output: Path, setup: dict[str, Any], runs: list[PlannedRun] | None = None) -> None:
    from aspo.report.compare import write_compare_report

    if runs is None:  # --report-only: the same plan from the manifest alone
        runs = [
            PlannedRun(a, s, Path(), [], None, point)
            for point in grid_points(setup.get("grid") or {})
            for a in setup["algos"]
            for s in setup["seeds"]
        ]
        for run in runs:
            run.run_dir = output / "runs" / run.name
    planned = [(r.algo, r.seed, r.run_dir, r.point) for r in runs]
    summary = write_compare_report(output, setup, planned)
    print(f"aspo compare: wrote {output / 'summary.json'}, {output / 'report.md'} and figures", flush=True)
    width = max((len(v) for v in summary["aggregate"]), default=22)
    for variant, metrics in summary["aggregate"].items():
        p1 = metrics["pass@1"]
        if p1["mean"] is not None:
            ci = f" ± {p1['ci95']:.3f}" if p1["ci95"] is not None else ""
            print(f"  {variant:<{width}} final held-out pass@1 {p1['mean']:.3f}{ci} ({p1['n']} seeds)")


def print_verdicts(dirs: list[Path]) -> None:
    from aspo.report.verdicts import verdict_table

    studies = {}
    for d in dirs:
        path = d / "summary.json"
        if not path.is_file():
            raise UserError(f"--verdicts: {path} does not exist (run `aspo compare --output {d}` first)")
        summary = json.loads(path.read_text())
        if "claims" not in summary:
            raise UserError(
                f"--verdicts: {path} predates corrected verdicts; rebuild it with "
                f"`aspo compare --report-only --output {d}`"
            )
        studies[d.name] = summary
    print("\n".join(verdict_table(studies)))


def main(argv: list[str]) -> int:
    args = build_parser().parse_intermixed_args(argv)
    if args.verdicts:
        print_verdicts([Path(d) for d in args.verdicts])
        return 0
    if not args.output:
        raise UserError("--output DIR is required (rerunning with the same DIR resumes the comparison)")
    if args.report_only:
        manifest = Path(args.output) / MANIFEST
        if not manifest.is_file():
            raise UserError(f"--report-only: {manifest} does not exist (run the comparison first)")
        write_report(Path(args.output), json.loads(manifest.read_text()))
        return 0
    return execute(args, argv)
