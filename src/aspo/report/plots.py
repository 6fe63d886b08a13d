"""PNG figures of one run, drawn from its ``metrics.jsonl`` (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aspo.report.metrics import read_metrics

# figure name -> (title, metric keys drawn as one line each)
RUN_FIGURES: dict[str, tuple[str, list[str]]] = {
    "reward": ("mean training reward", ["reward/mean"]),
    "eval_pass": ("held-out pass@1 / pass@k", ["eval/pass@1", "eval/pass@k"]),
    "entropy": ("token entropy (update forward)", ["actor/entropy"]),
    "clip_fraction": (
        "trust-region clip fraction by advantage sign",
        ["actor/clipfrac/pos", "actor/clipfrac/neg"],
    ),
    "dual_clip_fraction": (
        "dual-clip fraction by advantage sign",
        ["actor/dualclip/pos", "actor/dualclip/neg"],
    ),
    "response_length": ("mean response length (tokens)", ["response/length_mean"]),
}


def series(rows: list[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of the rows that carry ``key`` with a number."""
    pts = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float))]
    return [p[0] for p in pts], [float(p[1]) for p in pts]


def step_axis(ax: Any) -> None:
    """An x axis of training steps: labelled, whole numbers only (no 2.5 steps on a short run)."""
    from matplotlib.ticker import MaxNLocator

    ax.set_xlabel("step")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def plot_run(run_dir: str | Path) -> list[Path]:
    """Write ``plots/<name>.png`` for every figure with data; returns the paths written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    rows = read_metrics(run_dir)
    out_dir = run_dir / "plots"
    out_dir.mkdir(exist_ok=True)
    written = []
    for name, (title, keys) in RUN_FIGURES.items():
        lines = [(key, *series(rows, key)) for key in keys]
        if not any(xs for _, xs, _ in lines):
            continue
        fig, ax = plt.subplots(figsize=(6, 3.6))
        for key, xs, ys in lines:
            if xs:
                ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, ms=3, label=key)
        ax.set_title(title)
        step_axis(ax)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = out_dir / f"{name}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written
