"""What the terminal shows: a progress bar during training and a summary table at the end."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aspo.report.metrics import read_metrics
from aspo.report.signal import signal_note


class Progress:
    """tqdm bar with step, reward, entropy and the last held-out pass@1."""

    def __init__(self, total: int, initial: int = 0, enabled: bool = True) -> None:
        self.bar = None
        self.last_pass = None
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=initial, desc="aspo train", unit="step", dynamic_ncols=True)

    def update(self, step: int, metrics: dict[str, float]) -> None:
        if self.bar is None:
            return
        if "eval/pass@1" in metrics:
            self.last_pass = metrics["eval/pass@1"]
        post = {
            "reward": _fmt(metrics.get("reward/mean")),
            "entropy": _fmt(metrics.get("actor/entropy")),  # - : no update this step
        }
        if self.last_pass is not None:
            post["pass@1"] = f"{self.last_pass:.3f}"
        note = signal_note(metrics)
        if note is not None:  # no group with signal: this step taught nothing
            post["signal"] = note
        self.bar.set_postfix(post, refresh=False)
        self.bar.update(step - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _first_last(rows: list[dict[str, Any]], key: str) -> tuple[float | None, float | None]:
    values = [r[key] for r in rows if isinstance(r.get(key), (int, float))]
    return (values[0], values[-1]) if values else (None, None)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def run_contents(run_dir: str | Path) -> list[tuple[str, str]]:
    """(what, where) for each output the run directory holds, paths relative to it."""
    run = Path(run_dir)
    checkpoints = sorted(
        (p for p in (run / "checkpoints").glob("step-*") if p.name[5:].isdigit()),
        key=lambda p: int(p.name[5:]),
    )
    found = [
        ("metrics", "metrics.jsonl", (run / "metrics.jsonl").exists()),
        ("plots", "plots/*.png", any((run / "plots").glob("*.png"))),
        ("samples", "samples.jsonl", (run / "samples.jsonl").exists()),
        (
            "checkpoints",
            ", ".join(str(p.relative_to(run)) for p in checkpoints),
            bool(checkpoints),
        ),
        ("TensorBoard", f"tensorboard --logdir {run / 'tensorboard'}", (run / "tensorboard").is_dir()),
    ]
    return [(what, where) for what, where, present in found if present]


def print_summary(run_dir: str | Path, wall_s: float, enabled: bool = True) -> dict[str, Any]:
    """Before -> after table of the run, then the run directory on a line of its own (so it can be copied)
    and what it holds; returns the numbers it shows."""
    rows = read_metrics(run_dir)
    k = next((int(r["eval/k"]) for r in rows if isinstance(r.get("eval/k"), (int, float))), None)
    keys = {
        "held-out pass@1": "eval/pass@1",
        f"held-out pass@{k if k is not None else 'k'}": "eval/pass@k",
        "train reward": "reward/mean",
        "token entropy": "actor/entropy",
        "response length": "response/length_mean",
    }
    out: dict[str, Any] = {}
    for key in keys.values():
        out[key] = _first_last(rows, key)
    if enabled:
        from rich.console import Console
        from rich.table import Table

        table = Table(title="aspo train: first -> last")
        table.add_column("metric")
        table.add_column("first", justify="right")
        table.add_column("last", justify="right")
        for label, key in keys.items():
            first, last = out[key]
            table.add_row(label, _fmt(first), _fmt(last))
        table.add_row("wall time", "", f"{wall_s:.0f} s")
        console = Console()
        console.print(table)
        # plain print: rich would wrap a long path over several lines
        print(f"run directory: {run_dir}")
        for what, where in run_contents(run_dir):
            print(f"  {what + ':':<13}{where}")
    return {"before_after": out}
