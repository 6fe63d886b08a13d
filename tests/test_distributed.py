"""Data-parallel training through accelerate on CPU (gloo): 2 processes on the tiny model.

On a machine without CUDA, `accelerate launch --multi_gpu` starts torchrun-style workers and accelerate
selects MULTI_CPU with the gloo backend (`--cpu` alone launches a single process in accelerate 1.x).
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import tiny_overrides
from safetensors.torch import load_file

from aspo.checkpoint import list_checkpoints
from aspo.report.metrics import read_metrics

HERE = Path(__file__).parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
LAUNCH = [
    sys.executable,
    "-m",
    "accelerate.commands.launch",
    "--multi_gpu",
    "--num_processes",
    "2",
    "--num_machines",
    "1",
    "--mixed_precision",
    "no",
    "--dynamo_backend",
    "no",
    "--main_process_port",
    "0",
]


def comparable(rows):
    return [{k: v for k, v in r.items() if not k.startswith(("time/", "perf/"))} for r in rows]


def run(cmd, timeout=300):
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=ENV)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_one_update_gives_the_same_weights_with_1_and_2_processes(tiny_run_inputs, tmp_path):
    root = tiny_run_inputs
    common = [str(root / "model"), str(root / "train.jsonl")]
    run(
        [
            sys.executable,
            str(HERE / "dist" / "one_update.py"),
            str(tmp_path / "w1.pt"),
            str(tmp_path / "r1"),
            *common,
            "train.micro_batch_size=3",
        ]
    )  # one process, gradient accumulated over micro-batches
    run(
        [
            *LAUNCH,
            str(HERE / "dist" / "one_update.py"),
            str(tmp_path / "w2.pt"),
            str(tmp_path / "r2"),
            *common,
        ]
    )
    before = load_file(str(root / "model" / "model.safetensors"))
    w1, w2 = torch.load(tmp_path / "w1.pt"), torch.load(tmp_path / "w2.pt")
    moved = 0.0
    for key, value in w1.items():
        assert torch.allclose(value, w2[key], atol=1e-6, rtol=1e-5), key
        if key in before:
            moved = max(moved, float((value - before[key]).abs().max()))
    assert moved > 1e-4  # the update really changed the weights


def test_two_process_training_resumes_with_one_process(tiny_run_inputs, tmp_path):
    out = tmp_path / "run"
    run(
        [
            *LAUNCH,
            "-m",
            "aspo",
            "train",
            *tiny_overrides(tiny_run_inputs, out, "train.steps=2", "train.device=cpu"),
        ]
    )
    rows = read_metrics(out)
    assert [r["step"] for r in rows] == [0, 1, 2]  # written once, by rank 0
    assert all(r["groups/valid"] <= 4 for r in rows[1:])  # summed over ranks: at most the 4 prompts
    assert (out / "checkpoints" / "step-2" / "model.safetensors").is_file()
    # samples.jsonl: every eval's samples from both ranks, gathered by rank 0, in test-record order
    samples = [json.loads(line) for line in open(out / "samples.jsonl")]
    prompts = [json.loads(line)["prompt"] for line in open(tiny_run_inputs / "test.jsonl")][
        :4
    ]  # data.num_test
    for step in (0, 2):
        rows = [s for s in samples if s["step"] == step]
        assert [(s["prompt"], s["sample"]) for s in rows] == [
            (p, i) for p in prompts for i in range(2)
        ]  # eval.n
    run(
        [
            sys.executable,
            "-m",
            "aspo",
            "train",
            *tiny_overrides(tiny_run_inputs, out, "train.steps=3", "resume=true"),
        ]
    )
    assert [r["step"] for r in read_metrics(out)] == [0, 1, 2, 3]


# heavy: with one core kept busy by another process this once ran through all 4 steps and left rank 0
# waiting in a collective for a rank that had exited (the signal seems to land after the loop's handler is
# gone); out of `make test` until that is understood. `pytest -m heavy` runs it.
@pytest.mark.heavy
def test_sigterm_to_the_launcher_stops_both_ranks_at_one_step_and_resumes_exactly(tiny_run_inputs, tmp_path):
    args = (
        "train.steps=4",
        "train.eval_every=1",
        "train.save_every=1000",
        "train.plots=false",
        "train.device=cpu",
    )
    run([*LAUNCH, "-m", "aspo", "train", *tiny_overrides(tiny_run_inputs, tmp_path / "whole", *args)])
    out = tmp_path / "stopped"
    proc = subprocess.Popen(
        [*LAUNCH, "-m", "aspo", "train", *tiny_overrides(tiny_run_inputs, out, *args)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    )
    metrics, deadline = out / "metrics.jsonl", time.time() + 240
    while not metrics.is_file() or metrics.read_text().count("\n") < 2:  # step 1 logged
        assert proc.poll() is None and time.time() < deadline, "run ended before step 1"
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)  # torchrun's agent passes it to both ranks
    try:
        _, stderr = proc.communicate(timeout=120)
    finally:  # a hung launcher must not outlive the test
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    lines = [line for line in stderr.splitlines() if line.startswith("aspo train: stopped by SIGTERM")]
    assert len(lines) == 1, stderr[-3000:]  # rank 0 speaks for both
    steps = [s for s, _ in list_checkpoints(out)]
    assert len(steps) == 1 and f"after step {steps[0]} of 4" in lines[0]
    run([*LAUNCH, "-m", "aspo", "train", *tiny_overrides(tiny_run_inputs, out, *args, "resume=true")])
    assert comparable(read_metrics(out)) == comparable(read_metrics(tmp_path / "whole"))
