"""`aspo compare` results: ``summary.json`` (per run and aggregated over seeds), figures and ``report.md``.

Everything here reads finished run directories only (``config.yaml`` + ``metrics.jsonl`` +
``compare_run.json``), so a report can be regenerated from a committed study without its checkpoints.
Run directories in ``summary.json`` are relative to the directory that holds it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from aspo.report.compare_figures import plot_compare, weight_buckets
from aspo.report.compare_text import render_report
from aspo.report.metrics import read_metrics
from aspo.report.plots import series
from aspo.report.stats import mean_ci95

RUN_STATE_FILE = "compare_run.json"  # written by the harness in each run dir: wall time, attempts, exit code
NOTES_FILE = "notes.md"  # a person's interpretation, included verbatim in report.md when present

# final metric -> (metrics.jsonl key, what it is)
FINAL_METRICS: dict[str, tuple[str, str]] = {
    "pass@1": ("eval/pass@1", "held-out pass@1 at the last eval (the final step)"),
    "pass@k": ("eval/pass@k", "held-out pass@k (k = eval.n) at the last eval"),
    "entropy": ("actor/entropy", "mean token entropy of the last update"),
    "response_length": ("eval/response_length", "mean held-out response length (tokens) at the last eval"),
    "repetition": ("eval/repetition", "held-out repetition rate at the last eval"),
}
# training-wide summaries: name -> (metrics.jsonl key, reduction over the training steps, what it is)
TRAINING_METRICS: dict[str, tuple[str, str, str]] = {
    "pass@1_gain": ("eval/pass@1", "gain", "final minus step-0 held-out pass@1"),
    "min_entropy": ("actor/entropy", "min", "lowest token entropy over training"),
    "avg_clipfrac_pos": ("actor/clipfrac/pos", "mean", "clip fraction of positive tokens, mean over steps"),
    "avg_clipfrac_neg": ("actor/clipfrac/neg", "mean", "clip fraction of negative tokens, mean over steps"),
    "avg_dualclip_pos": ("actor/dualclip/pos", "mean", "dual-clip fraction of positive tokens, mean over steps"),
    "avg_dualclip_neg": ("actor/dualclip/neg", "mean", "dual-clip fraction of negative tokens, mean over steps"),
    "avg_ppo_kl": ("actor/ppo_kl", "mean", "behaviour-to-current KL estimate, mean over steps"),
    "jitter_ppo_kl": ("actor/ppo_kl", "jitter", "mean |change| of ppo_kl between consecutive steps"),
    "jitter_clipfrac_pos": ("actor/clipfrac/pos", "jitter", "mean |change| of clipfrac/pos between steps"),
    "jitter_clipfrac_neg": ("actor/clipfrac/neg", "jitter", "mean |change| of clipfrac/neg between steps"),
}


def _last(rows: list[dict[str, Any]], key: str) -> float | None:
    _, ys = series(rows, key)
    return ys[-1] if ys else None


def _reduce(rows: list[dict[str, Any]], key: str, how: str) -> float | None:
    xs, ys = series(rows, key)
    if how == "gain":
        return ys[-1] - ys[0] if len(ys) >= 2 and xs[0] == 0 else None
    ys = [y for x, y in zip(xs, ys, strict=True) if x > 0]  # training rows only (step 0 is the initial eval)
    if not ys:
        return None
    if how == "mean":
        return float(np.mean(ys))
    if how == "min":
        return float(np.min(ys))
    if how == "jitter":
        return float(np.mean(np.abs(np.diff(ys)))) if len(ys) >= 2 else None
    raise ValueError(f"unknown reduction {how!r}")


def target_steps(run_dir: Path) -> int | None:
    """``train.steps`` from the run's saved config (None when the run never started)."""
    path = run_dir / "config.yaml"
    if not path.is_file():
        return None
    with open(path) as fh:
        return int((yaml.safe_load(fh) or {}).get("train", {}).get("steps", 0))


def is_complete(rows: list[dict[str, Any]], steps: int | None) -> bool:
    """The run logged its final held-out eval (at step ``train.steps``)."""
    return steps is not None and any(r.get("step") == steps and "eval/pass@1" in r for r in rows)


def run_record(output_dir: Path, algo: str, seed: int, run_dir: Path) -> dict[str, Any]:
    """One entry of ``summary.json["runs"]``."""
    rows = read_metrics(run_dir)
    steps = target_steps(run_dir)
    state_path = run_dir / RUN_STATE_FILE
    state = json.loads(state_path.read_text()) if state_path.is_file() else {}
    complete = is_complete(rows, steps)
    status = "finished" if complete else ("failed" if state.get("returncode") not in (None, 0) else "unfinished")
    record: dict[str, Any] = {
        "algo": algo, "seed": seed, "run_dir": _relative(run_dir, output_dir), "status": status,
        "steps": max((r.get("step", 0) for r in rows), default=None), "target_steps": steps,
        "wall_s": state.get("wall_s"), "attempts": state.get("attempts"),
        "log": _relative(run_dir / state["log"], output_dir) if state.get("log") else None,
    }
    if complete:
        record["initial"] = {"pass@1": _reduce_initial(rows, "eval/pass@1"),
                             "pass@k": _reduce_initial(rows, "eval/pass@k")}
        record["final"] = {name: _last(rows, key) for name, (key, _) in FINAL_METRICS.items()}
        record["training"] = {name: _reduce(rows, key, how) for name, (key, how, _) in TRAINING_METRICS.items()}
        record["pos_weight_by_prob"] = weight_buckets(rows)
    return record


def _reduce_initial(rows: list[dict[str, Any]], key: str) -> float | None:
    xs, ys = series(rows, key)
    return ys[0] if xs and xs[0] == 0 else None


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.resolve().relative_to(root.resolve()))
    except ValueError:
        return str(path.resolve())


def aggregate(runs: list[dict[str, Any]], algos: list[str]) -> dict[str, dict[str, dict[str, Any]]]:
    """Per algorithm and metric: mean and 95 % half-width over the finished seeds."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for algo in algos:
        done = [r for r in runs if r["algo"] == algo and r["status"] == "finished"]
        metrics: dict[str, dict[str, Any]] = {}
        for name in FINAL_METRICS:
            metrics[name] = mean_ci95([r["final"][name] for r in done])
        metrics["initial_pass@1"] = mean_ci95([r["initial"]["pass@1"] for r in done])
        for name in TRAINING_METRICS:
            metrics[name] = mean_ci95([r["training"][name] for r in done])
        buckets = sorted({b for r in done for b in r["pos_weight_by_prob"]}, key=lambda b: float(b.split("-")[0]))
        for bucket in buckets:
            metrics[f"pos_weight/{bucket}"] = mean_ci95([r["pos_weight_by_prob"].get(bucket) for r in done])
        out[algo] = metrics
    return out


def write_compare_report(output_dir: str | Path, setup: dict[str, Any],
                         planned: list[tuple[str, int, Path]]) -> dict[str, Any]:
    """Write ``summary.json``, the figures and ``report.md`` into ``output_dir``; returns the summary.

    ``setup`` describes the comparison (algos, seeds, presets, config, machine, wall time); ``planned`` lists
    (algo, seed, run dir) in report order.
    """
    output_dir = Path(output_dir)
    algos = list(dict.fromkeys(algo for algo, _, _ in planned))
    runs = [run_record(output_dir, algo, seed, run_dir) for algo, seed, run_dir in planned]
    summary = {
        "setup": setup,
        "metric_definitions": {**{k: v[1] for k, v in FINAL_METRICS.items()},
                               "initial_pass@1": "held-out pass@1 at step 0 (before training)",
                               **{k: v[2] for k, v in TRAINING_METRICS.items()},
                               "pos_weight/<bucket>": "mean gradient weight of positive-advantage tokens whose "
                                                      "behaviour probability is in the bucket, mean over steps"},
        "aggregate_note": "mean and 95 % t-interval half-width (ci95) over the finished seeds; ci95 is null with "
                          "one seed",
        "runs": runs,
        "aggregate": aggregate(runs, algos),
    }
    rows_by_algo = {algo: [read_metrics(output_dir / r["run_dir"]) for r in runs
                           if r["algo"] == algo and r["status"] == "finished"] for algo in algos}
    figures = plot_compare({a: rs for a, rs in rows_by_algo.items() if rs}, output_dir)
    notes_path = output_dir / NOTES_FILE
    notes = notes_path.read_text() if notes_path.is_file() else None
    (output_dir / "summary.json").write_text(json.dumps(_finite(summary), indent=1) + "\n")
    (output_dir / "report.md").write_text(render_report(summary, figures, notes))
    return summary


def _finite(obj: Any) -> Any:
    """JSON has no NaN: non-finite floats become null."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj
