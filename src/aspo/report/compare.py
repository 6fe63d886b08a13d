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

from aspo.report.compare_figures import plot_compare, plot_frontier, weight_buckets
from aspo.report.compare_text import render_report
from aspo.report.metrics import read_metrics
from aspo.report.plots import series
from aspo.report.stats import mean_ci95
from aspo.report.verdicts import claim_tests

UNCLIPPED_WEIGHT_PREFIX = "actor/pos_unclipped_weight_by_prob/"  # logged by aspo.objectives.policy_loss
RUN_STATE_FILE = "compare_run.json"  # written by the harness in each run dir: wall time, attempts, exit code
NOTES_FILE = "notes.md"  # a person's interpretation, included verbatim in report.md when present
# Failure modes, counted apart because they are opposite failures: (name, rule). Entropy is the mean token
# entropy of an update; "start" is the first update's, so a run's own starting point is its reference.
ENTROPY_COLLAPSE_FRACTION = 0.2
ENTROPY_BLOWUP_FACTOR = 2.0
FAILURE_MODES: dict[str, str] = {
    "entropy_collapse": f"final token entropy below {ENTROPY_COLLAPSE_FRACTION:g} x the first update's",
    "divergence": f"final token entropy above {ENTROPY_BLOWUP_FACTOR:g} x the first update's, "
    "or a non-finite entropy or KL",
    "below_start": "final held-out pass@1 below its step-0 value",
}
# the final metrics drawn against a swept value in the frontier view
FRONTIER_METRICS = ("pass@1", "pass@k", "entropy", "avg_ppo_kl", "avg_clipfrac_pos", "avg_dualclip_neg")

# final metric -> (metrics.jsonl key, what it is)
FINAL_METRICS: dict[str, tuple[str, str]] = {
    "pass@1": ("eval/pass@1", "held-out pass@1 at the last eval (the final step)"),
    "pass@k": ("eval/pass@k", "held-out pass@k (k = eval.n) at the last eval"),
    "entropy": ("actor/entropy", "mean token entropy of the last update"),
    "entropy_high": (
        "actor/entropy_high",
        "mean entropy of the tokens above their response's entropy quantile (top 20 %), last update",
    ),
    "response_length": ("eval/response_length", "mean held-out response length (tokens) at the last eval"),
    "repetition": ("eval/repetition", "held-out repetition rate at the last eval"),
}
# training-wide summaries: name -> (metrics.jsonl key, reduction over the training steps, what it is)
TRAINING_METRICS: dict[str, tuple[str, str, str]] = {
    "pass@1_gain": ("eval/pass@1", "gain", "final minus step-0 held-out pass@1"),
    "mean_entropy": ("actor/entropy", "mean", "token entropy, mean over training steps"),
    "mean_entropy_high": (
        "actor/entropy_high",
        "mean",
        "entropy of the top-20 % entropy tokens, mean over steps",
    ),
    "min_entropy": ("actor/entropy", "min", "lowest token entropy over training"),
    "avg_clipfrac_pos": ("actor/clipfrac/pos", "mean", "clip fraction of positive tokens, mean over steps"),
    "avg_clipfrac_neg": ("actor/clipfrac/neg", "mean", "clip fraction of negative tokens, mean over steps"),
    "avg_dualclip_pos": (
        "actor/dualclip/pos",
        "mean",
        "dual-clip fraction of positive tokens, mean over steps",
    ),
    "avg_dualclip_neg": (
        "actor/dualclip/neg",
        "mean",
        "dual-clip fraction of negative tokens, mean over steps",
    ),
    "avg_ppo_kl": ("actor/ppo_kl", "mean", "behaviour-to-current KL estimate, mean over steps"),
    "jitter_ppo_kl": ("actor/ppo_kl", "jitter", "mean |change| of ppo_kl between consecutive steps"),
    "jitter_clipfrac_pos": ("actor/clipfrac/pos", "jitter", "mean |change| of clipfrac/pos between steps"),
    "jitter_clipfrac_neg": ("actor/clipfrac/neg", "jitter", "mean |change| of clipfrac/neg between steps"),
    "rel_jitter_ppo_kl": ("actor/ppo_kl", "rel_jitter", "jitter_ppo_kl divided by the mean |ppo_kl|"),
    "rel_jitter_clipfrac_pos": ("actor/clipfrac/pos", "rel_jitter", "jitter of clipfrac/pos over its mean"),
    "rel_jitter_clipfrac_neg": ("actor/clipfrac/neg", "rel_jitter", "jitter of clipfrac/neg over its mean"),
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
    if how in ("jitter", "rel_jitter"):
        if len(ys) < 2:
            return None
        jitter = float(np.mean(np.abs(np.diff(ys))))
        if how == "jitter":
            return jitter
        # an absolute jitter grows with the level it moves around; over the level it compares shapes
        level = float(np.mean(np.abs(ys)))
        return jitter / level if level > 0 else None
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


def variant_label(algo: str, point: dict[str, str]) -> str:
    """What seeds are grouped by: the preset, and the grid point when there is one."""
    return algo if not point else f"{algo} [{', '.join(f'{k}={v}' for k, v in point.items())}]"


def failure_modes(
    rows: list[dict[str, Any]], initial_pass1: float | None, final_pass1: float | None
) -> dict[str, str]:
    """The ``FAILURE_MODES`` a finished run shows, each with what was seen; empty when none."""
    found = {}
    train_rows = [r for r in rows if r.get("step", 0) > 0]
    _, entropy = series(train_rows, "actor/entropy")
    if len(entropy) >= 2 and entropy[-1] < ENTROPY_COLLAPSE_FRACTION * entropy[0]:
        found["entropy_collapse"] = f"entropy {entropy[0]:.3g} -> {entropy[-1]:.3g}"
    non_finite = [
        k for r in train_rows for k in ("actor/entropy", "actor/ppo_kl", "actor/kl") if _non_finite(r.get(k))
    ]
    if len(entropy) >= 2 and entropy[-1] > ENTROPY_BLOWUP_FACTOR * entropy[0]:
        found["divergence"] = f"entropy {entropy[0]:.3g} -> {entropy[-1]:.3g}"
    elif non_finite:
        found["divergence"] = f"non-finite {non_finite[0]}"
    if initial_pass1 is not None and final_pass1 is not None and final_pass1 < initial_pass1:
        found["below_start"] = f"pass@1 {initial_pass1:.3g} -> {final_pass1:.3g}"
    return found


def _non_finite(value: Any) -> bool:
    # metrics.jsonl writes NaN and inf as null only through _finite; a raw float may still arrive here
    return isinstance(value, float) and not math.isfinite(value)


def run_record(
    output_dir: Path, algo: str, seed: int, run_dir: Path, point: dict[str, str] | None = None
) -> dict[str, Any]:
    """One entry of ``summary.json["runs"]``."""
    rows = read_metrics(run_dir)
    steps = target_steps(run_dir)
    state_path = run_dir / RUN_STATE_FILE
    state = json.loads(state_path.read_text()) if state_path.is_file() else {}
    complete = is_complete(rows, steps)
    status = (
        "finished" if complete else ("failed" if state.get("returncode") not in (None, 0) else "unfinished")
    )
    record: dict[str, Any] = {
        "algo": algo,
        "variant": variant_label(algo, point or {}),
        "point": dict(point or {}),
        "seed": seed,
        "run_dir": _relative(run_dir, output_dir),
        "status": status,
        "steps": max((r.get("step", 0) for r in rows), default=None),
        "target_steps": steps,
        "wall_s": state.get("wall_s"),
        "attempts": state.get("attempts"),
        "log": _relative(run_dir / state["log"], output_dir) if state.get("log") else None,
    }
    if complete:
        record["initial"] = {
            "pass@1": _reduce_initial(rows, "eval/pass@1"),
            "pass@k": _reduce_initial(rows, "eval/pass@k"),
        }
        record["final"] = {name: _last(rows, key) for name, (key, _) in FINAL_METRICS.items()}
        record["training"] = {
            name: _reduce(rows, key, how) for name, (key, how, _) in TRAINING_METRICS.items()
        }
        record["pos_weight_by_prob"] = weight_buckets(rows)
        record["pos_unclipped_weight_by_prob"] = weight_buckets(rows, UNCLIPPED_WEIGHT_PREFIX)
        record["failures"] = failure_modes(rows, record["initial"]["pass@1"], record["final"]["pass@1"])
    return record


def _reduce_initial(rows: list[dict[str, Any]], key: str) -> float | None:
    xs, ys = series(rows, key)
    return ys[0] if xs and xs[0] == 0 else None


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.resolve().relative_to(root.resolve()))
    except ValueError:
        return str(path.resolve())


def aggregate(runs: list[dict[str, Any]], variants: list[str]) -> dict[str, dict[str, dict[str, Any]]]:
    """Per variant (algorithm, or algorithm at a grid point) and metric: mean and 95 % half-width over the
    finished seeds; ``failures`` counts the runs that show each failure mode."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for variant in variants:
        done = [r for r in runs if r["variant"] == variant and r["status"] == "finished"]
        metrics: dict[str, dict[str, Any]] = {}
        for name in FINAL_METRICS:
            metrics[name] = mean_ci95([r["final"][name] for r in done])
        metrics["initial_pass@1"] = mean_ci95([r["initial"]["pass@1"] for r in done])
        for name in TRAINING_METRICS:
            metrics[name] = mean_ci95([r["training"][name] for r in done])
        buckets = sorted(
            {b for r in done for b in r["pos_weight_by_prob"]}, key=lambda b: float(b.split("-")[0])
        )
        for bucket in buckets:
            metrics[f"pos_weight/{bucket}"] = mean_ci95([r["pos_weight_by_prob"].get(bucket) for r in done])
            metrics[f"pos_unclipped_weight/{bucket}"] = mean_ci95(
                [r.get("pos_unclipped_weight_by_prob", {}).get(bucket) for r in done]
            )
        metrics["failures"] = {
            mode: {"count": sum(mode in r["failures"] for r in done), "n": len(done)}
            for mode in FAILURE_MODES
        }
        out[variant] = metrics
    return out


def frontier(
    runs: list[dict[str, Any]], agg: dict[str, dict[str, dict[str, Any]]], grid: dict[str, list[str]]
) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """For each swept key: one line per algorithm (and per value of the other swept keys), its points in
    the grid's order, each ``{"value", <metric>: mean_ci95, "failures": counts per mode}``."""
    out: dict[str, dict[str, list[dict[str, Any]]]] = {}
    variants = {r["variant"]: (r["algo"], r["point"]) for r in runs}
    for key, values in grid.items():
        lines: dict[str, list[dict[str, Any]]] = {}
        for variant, (algo, point) in variants.items():
            others = ", ".join(f"{k}={v}" for k, v in point.items() if k != key)
            line = algo if not others else f"{algo} [{others}]"
            entry = {
                "value": point[key],
                **{m: agg[variant][m] for m in FRONTIER_METRICS},
                "failures": agg[variant]["failures"],
            }
            lines.setdefault(line, []).append(entry)
        for entries in lines.values():
            entries.sort(key=lambda e: values.index(e["value"]))
        out[key] = lines
    return out


def write_compare_report(
    output_dir: str | Path, setup: dict[str, Any], planned: list[tuple[str, int, Path, dict[str, str]]]
) -> dict[str, Any]:
    """Write ``summary.json``, the figures and ``report.md`` into ``output_dir``; returns the summary.

    ``setup`` describes the comparison (algos, seeds, grid, presets, config, machine, wall time); ``planned``
    lists (algo, seed, run dir, grid point) in report order.
    """
    output_dir = Path(output_dir)
    runs = [run_record(output_dir, algo, seed, run_dir, point) for algo, seed, run_dir, point in planned]
    variants = list(dict.fromkeys(r["variant"] for r in runs))
    agg = aggregate(runs, variants)
    summary = {
        "setup": setup,
        "metric_definitions": {
            **{k: v[1] for k, v in FINAL_METRICS.items()},
            "initial_pass@1": "held-out pass@1 at step 0 (before training)",
            **{k: v[2] for k, v in TRAINING_METRICS.items()},
            "pos_weight/<bucket>": "mean gradient weight of positive-advantage tokens whose "
            "behaviour probability is in the bucket, mean over steps",
            **{f"failure/{k}": v for k, v in FAILURE_MODES.items()},
        },
        "aggregate_note": "mean and 95 % t-interval half-width (ci95) over the finished seeds; "
        "ci95 is null with one seed",
        "runs": runs,
        "aggregate": agg,
        "claims": claim_tests(runs),
    }
    grid = setup.get("grid") or {}
    if grid:
        summary["frontier"] = frontier(runs, agg, grid)
    rows_by_variant = {
        v: [
            read_metrics(output_dir / r["run_dir"])
            for r in runs
            if r["variant"] == v and r["status"] == "finished"
        ]
        for v in variants
    }
    figures = plot_compare({v: rs for v, rs in rows_by_variant.items() if rs}, output_dir)
    if grid:
        figures += plot_frontier(summary["frontier"], grid, FRONTIER_METRICS, output_dir)
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
