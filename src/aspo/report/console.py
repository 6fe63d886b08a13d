"""What the terminal shows: a progress bar during training and a summary table at the end."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aspo.report.metrics import read_metrics


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
            "reward": f"{metrics.get('reward/mean', float('nan')):.3f}",
            "entropy": f"{metrics.get('actor/entropy', float('nan')):.3f}",
        }
        if self.last_pass is not None:
            post["pass@1"] = f"{self.last_pass:.3f}"
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


def print_summary(run_dir: str | Path, wall_s: float, enabled: bool = True) -> dict[str, Any]:
    """Before -> after table of the run; returns the numbers it shows."""
    rows = read_metrics(run_dir)
    keys = {
        "held-out pass@1": "eval/pass@1",
        "held-out pass@k": "eval/pass@k",
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

        table = Table(title=f"aspo train -- {run_dir}")
        table.add_column("metric")
        table.add_column("first", justify="right")
        table.add_column("last", justify="right")
        for label, key in keys.items():
            first, last = out[key]
            table.add_row(label, _fmt(first), _fmt(last))
        table.add_row("wall time", "", f"{wall_s:.0f} s")
        Console().print(table)
    return {"before_after": out}
