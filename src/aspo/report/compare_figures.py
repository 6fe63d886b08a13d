"""Figures of `aspo compare`: one curve per algorithm, a band over seeds, and the token-weight view.

Curves are the mean over seeds at the steps every seed logged; the band is the 95 % t-interval of that
mean (``aspo.report.stats.band``). Training metrics (not ``eval/...``) are first smoothed per run with a
trailing mean over ``smooth`` steps so that the band shows seed-to-seed spread, not step noise.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from aspo.report.plots import series, step_axis
from aspo.report.stats import band, mean_ci95, trailing_mean

# figure file stem -> (title, [(metric key, panel title), ...]); one panel per key
CURVE_FIGURES: dict[str, tuple[str, list[tuple[str, str]]]] = {
    "eval_pass_at_1": ("held-out pass@1", [("eval/pass@1", "held-out pass@1")]),
    "eval_pass_at_k": ("held-out pass@k", [("eval/pass@k", "held-out pass@k")]),
    "entropy": ("token entropy (update forward pass)", [("actor/entropy", "mean token entropy (nats)")]),
    "clip_fraction": (
        "trust-region clip fraction by advantage sign",
        [
            ("actor/clipfrac/pos", "positive-advantage tokens"),
            ("actor/clipfrac/neg", "negative-advantage tokens"),
        ],
    ),
    "dual_clip_fraction": (
        "dual-clip fraction by advantage sign",
        [
            ("actor/dualclip/pos", "positive-advantage tokens"),
            ("actor/dualclip/neg", "negative-advantage tokens"),
        ],
    ),
    "ppo_kl": ("KL between behaviour and current policy (update batches)", [("actor/ppo_kl", "ppo_kl")]),
    "response_length": (
        "response length (tokens)",
        [("response/length_mean", "training rollouts"), ("eval/response_length", "held-out samples")],
    ),
    "repetition": (
        "repetition rate",
        [("response/repetition", "training rollouts"), ("eval/repetition", "held-out samples")],
    ),
    "reward": ("training reward (before group filtering)", [("reward/mean", "mean reward")]),
}
WEIGHT_PREFIX = "actor/pos_weight_by_prob/"
WEIGHT_FIGURE = "token_weight"


def smoothing_window(rows_by_algo: dict[str, list[list[dict[str, Any]]]]) -> int:
    """A tenth of the longest run (at least 1 step)."""
    steps = [
        max((r.get("step", 0) for r in rows), default=0) for runs in rows_by_algo.values() for rows in runs
    ]
    return max(1, max(steps, default=0) // 10)


def seed_curve(
    runs: list[list[dict[str, Any]]], key: str, smooth: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(steps, mean, 95 % half-width) over the runs at the steps all of them logged ``key``."""
    per_run = []
    for rows in runs:
        xs, ys = series(rows, key)
        if not xs:
            return None
        if not key.startswith("eval/"):
            ys = trailing_mean(ys, smooth).tolist()
        per_run.append(dict(zip(xs, ys, strict=True)))
    if not per_run:
        return None
    common = sorted(set.intersection(*(set(d) for d in per_run)))
    if not common:
        return None
    stack = np.array([[d[s] for s in common] for d in per_run])
    mean, half = band(stack)
    return np.array(common), mean, half


def bucket_lower(key: str) -> float:
    return float(key.rsplit("/", 1)[-1].split("-")[0])


def weight_buckets(rows: list[dict[str, Any]], prefix: str = WEIGHT_PREFIX) -> dict[str, float]:
    """Mean over training steps of each ``<prefix><bucket>`` metric in one run (bucket name -> weight);
    by default the positive tokens' ``pos_weight_by_prob``."""
    keys = sorted({k for r in rows for k in r if k.startswith(prefix)}, key=bucket_lower)
    out = {}
    for key in keys:
        _, ys = series(rows, key)
        if ys:
            out[key[len(prefix) :]] = float(np.mean(ys))
    return out


def _colors(algos: list[str]) -> dict[str, Any]:
    import matplotlib.pyplot as plt

    cmap = plt.get_cmap("tab10")
    return {algo: cmap(i % 10) for i, algo in enumerate(algos)}


def plot_curves(rows_by_algo: dict[str, list[list[dict[str, Any]]]], out_dir: Path) -> list[tuple[str, str]]:
    """Write every curve figure with data; returns [(file name, caption)]."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    smooth = smoothing_window(rows_by_algo)
    colors = _colors(list(rows_by_algo))
    written = []
    for stem, (title, panels) in CURVE_FIGURES.items():
        curves = [
            [(algo, seed_curve(runs, key, smooth)) for algo, runs in rows_by_algo.items()]
            for key, _ in panels
        ]
        if not any(c is not None for panel in curves for _, c in panel):
            continue
        fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 3.6), squeeze=False)
        for ax, (_, label), panel in zip(axes[0], panels, curves, strict=True):
            for algo, curve in panel:
                if curve is None:
                    continue
                xs, mean, half = curve
                ax.plot(xs, mean, color=colors[algo], label=algo, marker="o" if len(xs) < 15 else None, ms=3)
                ax.fill_between(xs, mean - half, mean + half, color=colors[algo], alpha=0.18, lw=0)
            # one panel: the figure's title alone (a panel title would repeat it)
            ax.set_title(label if len(panels) > 1 else title, fontsize=10 if len(panels) > 1 else 11)
            step_axis(ax)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        if len(panels) > 1:
            fig.suptitle(title, fontsize=11)
        fig.tight_layout()
        name = f"{stem}.png"
        fig.savefig(out_dir / name, dpi=100)
        plt.close(fig)
        smoothed = any(not key.startswith("eval/") for key, _ in panels)
        caption = f"{title}: mean over seeds, band = 95 % t-interval over seeds"
        if smoothed and smooth > 1:
            caption += f"; training curves smoothed with a trailing mean over {smooth} steps"
        written.append((name, caption))
    return written


def plot_token_weights(
    rows_by_algo: dict[str, list[list[dict[str, Any]]]], out_dir: Path
) -> list[tuple[str, str]]:
    """Grouped bars: mean gradient weight of positive tokens per behaviour-probability bucket."""
    per_algo = {algo: [weight_buckets(rows) for rows in runs] for algo, runs in rows_by_algo.items()}
    buckets = sorted(
        {b for runs in per_algo.values() for run in runs for b in run}, key=lambda b: float(b.split("-")[0])
    )
    if not buckets:
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = _colors(list(rows_by_algo))
    width = 0.8 / max(len(per_algo), 1)
    fig, ax = plt.subplots(figsize=(7.5, 4.4))
    for i, (algo, runs) in enumerate(per_algo.items()):
        stats = [mean_ci95([run.get(b) for run in runs]) for b in buckets]
        xs = np.arange(len(buckets)) + (i - (len(per_algo) - 1) / 2) * width
        means = [s["mean"] if s["mean"] is not None else np.nan for s in stats]
        errs = [s["ci95"] or 0.0 for s in stats]
        ax.bar(xs, means, width, yerr=errs, capsize=2, color=colors[algo], label=algo)
    ax.axhline(1.0, color="grey", lw=0.8, ls="--")
    ax.set_xticks(np.arange(len(buckets)), buckets)
    ax.set_xlabel("behaviour probability of the token, exp(old_log_prob)")
    ax.set_ylabel("mean gradient weight")
    ax.set_title(
        "gradient weight of positive-advantage tokens by probability (averaged over training)", fontsize=10
    )
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8, ncol=min(len(per_algo), 3), loc="upper center", bbox_to_anchor=(0.5, -0.2))
    fig.tight_layout()
    name = f"{WEIGHT_FIGURE}.png"
    fig.savefig(out_dir / name, dpi=100)
    plt.close(fig)
    caption = (
        "mean gradient weight of positive-advantage tokens by behaviour-probability bucket, averaged over "
        "all update steps of a run, then over seeds (error bar: 95 % t-interval over seeds); "
        "GRPO-style weights are r, ASPO's are 1/r"
    )
    return [(name, caption)]


def plot_compare(
    rows_by_algo: dict[str, list[list[dict[str, Any]]]], out_dir: str | Path
) -> list[tuple[str, str]]:
    """All figures of a comparison into ``out_dir``; returns [(file name, caption)] in report order."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return plot_curves(rows_by_algo, out_dir) + plot_token_weights(rows_by_algo, out_dir)


def _as_numbers(values: list[str]) -> list[float] | None:
    try:
        return [float(v) for v in values]
    except ValueError:
        return None


def plot_frontier(
    frontier: dict[str, dict[str, list[dict[str, Any]]]],
    grid: dict[str, list[str]],
    metrics: tuple[str, ...],
    out_dir: Path,
) -> list[tuple[str, str]]:
    """One figure per swept key: each frontier metric against the swept value, one line per algorithm with
    its 95 % band over seeds; returns [(file name, caption)]."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for key, lines in frontier.items():
        numbers = _as_numbers(grid[key])
        # numeric values on a log axis when they span more than a decade, else evenly spaced categories
        log_x = numbers is not None and min(numbers) > 0 and max(numbers) / min(numbers) > 10
        position = {v: (numbers[i] if numbers is not None else i) for i, v in enumerate(grid[key])}
        colors = _colors(list(lines))
        fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.6), squeeze=False)
        for ax, metric in zip(axes[0], metrics, strict=True):
            for line, entries in lines.items():
                pts = [
                    (position[e["value"]], e[metric]) for e in entries if e[metric].get("mean") is not None
                ]
                if not pts:
                    continue
                xs = np.array([p[0] for p in pts], dtype=float)
                mean = np.array([p[1]["mean"] for p in pts])
                half = np.array([p[1]["ci95"] or 0.0 for p in pts])
                ax.plot(xs, mean, color=colors[line], label=line, marker="o", ms=3)
                ax.fill_between(xs, mean - half, mean + half, color=colors[line], alpha=0.18, lw=0)
            if log_x:
                ax.set_xscale("log")
            if numbers is None:
                ax.set_xticks(range(len(grid[key])), grid[key])
            ax.set_title(f"final {metric}", fontsize=10)
            ax.set_xlabel(key)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        fig.tight_layout()
        name = f"frontier_{key.replace('.', '_')}.png"
        fig.savefig(out_dir / name, dpi=100)
        plt.close(fig)
        written.append(
            (
                name,
                f"frontier over {key}: each final metric against the swept value, mean over seeds, "
                "band = 95 % t-interval over seeds",
            )
        )
    return written
