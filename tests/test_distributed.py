"""Data-parallel training through accelerate on CPU (gloo): 2 processes on the tiny model.

On a machine without CUDA, `accelerate launch --multi_gpu` starts torchrun-style workers and accelerate
selects MULTI_CPU with the gloo backend (`--cpu` alone launches a single process in accelerate 1.x).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import psutil  # accelerate's own dependency
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


def finish(cmd, timeout):
    """Run ``cmd``; (exit status, stderr). One still running after ``timeout`` seconds is killed with every
    process it started (the launcher's ranks run in sessions of their own): nothing outlives the test, and
    the test fails."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        _, stderr = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            for child in psutil.Process(proc.pid).children(recursive=True):
                child.kill()
            proc.kill()
            proc.wait()
    return proc.returncode, stderr


def run(cmd, timeout=300):
    code, stderr = finish(cmd, timeout)
    assert code == 0, stderr[-3000:]


# weights, gradients and AdamW moments sharded over the 2 ranks (FSDP2 on gloo); 3 groups on rank 0 and 1
# on rank 1, in micro-batches of 3 rows: 4 forwards and backwards against 2, which rank 1 must match
FSDP = ("uneven", "train.fsdp=true", "train.micro_batch_size=3")


@pytest.mark.parametrize(
    "sharding",
    [(), FSDP, ("nan-first",), (*FSDP, "nan-first")],
    ids=["ddp", "fsdp", "ddp-nan-on-one-rank-first", "fsdp-nan-on-one-rank-first"],
)
def test_one_update_gives_the_same_weights_with_1_and_2_processes(tiny_run_inputs, tmp_path, sharding):
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
            *sharding,
        ],
        timeout=150,  # a rank left out of a collective hangs: fail instead
    )
    before = load_file(str(root / "model" / "model.safetensors"))
    w1, w2 = torch.load(tmp_path / "w1.pt"), torch.load(tmp_path / "w2.pt")
    moved = 0.0
    for key, value in w1.items():
        # AdamW's first step is g / (|g| + eps): where a gradient nearly cancels (|g| ~ eps) its float
        # rounding, which differs with the summation order of 1 and 2 processes, moves the step by ~1e-4
        # of lr (1e-2 here); anything the split got wrong moves weights by a sizeable fraction of lr
        assert torch.allclose(value, w2[key], atol=1e-5, rtol=1e-5), key
        if key in before:
            moved = max(moved, float((value - before[key]).abs().max()))
    assert moved > 1e-4  # the update really changed the weights


@pytest.mark.parametrize("sharding", [(), FSDP], ids=["ddp", "fsdp"])
def test_bf16_update_with_1_and_2_processes(tiny_run_inputs, tmp_path, sharding):
    """train.precision=bf16 under DDP and FSDP2: the weights stay float32 and the 2-process update is the
    1-process one up to bf16 rounding (the micro-batches' matmuls see other shapes)."""
    root = tiny_run_inputs
    common = [str(root / "model"), str(root / "train.jsonl"), "train.precision=bf16"]
    script = str(HERE / "dist" / "one_update.py")
    run(
        [
            sys.executable,
            script,
            str(tmp_path / "w1.pt"),
            str(tmp_path / "r1"),
            *common,
            "train.micro_batch_size=3",
        ]
    )
    run([*LAUNCH, script, str(tmp_path / "w2.pt"), str(tmp_path / "r2"), *common, *sharding], timeout=150)
    before = load_file(str(root / "model" / "model.safetensors"))
    w1, w2 = torch.load(tmp_path / "w1.pt"), torch.load(tmp_path / "w2.pt")
    assert "precision: bf16" in (tmp_path / "r2" / "config.yaml").read_text()
    steps1, steps2 = [], []
    for key, value in w1.items():
        assert value.dtype == w2[key].dtype == torch.float32, key
        if key in before:
            steps1.append((value - before[key]).flatten())
            steps2.append((w2[key] - before[key]).flatten())
    # AdamW's first step moves each weight by ~lr (1e-2) in its gradient's sign; bf16 rounding flips the
    # signs of gradients that are ~0 in exact arithmetic (the key projection's bias: a constant shift of
    # every score), so the steps are compared as one direction
    one, two = torch.cat(steps1), torch.cat(steps2)
    assert one.abs().max() > 1e-3
    assert torch.nn.functional.cosine_similarity(one.double(), two.double(), dim=0) > 0.95


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


def assert_same_checkpoint(one, other):
    """Whole weights and AdamW moments (keyed by parameter index, as one process writes them), to float
    tolerance: after 8-12 AdamW steps of lr 1e-3 the two summation orders differ by ~1e-6 (measured), a
    hundredth of one step's move."""
    weights = [load_file(str(path / "model.safetensors")) for path in (one, other)]
    assert weights[0].keys() == weights[1].keys()
    for key, value in weights[0].items():
        assert torch.allclose(weights[1][key], value, atol=1e-5, rtol=1e-5), key
    moments = [torch.load(path / "optimizer.pt")["state"] for path in (one, other)]
    assert moments[0].keys() == moments[1].keys() and moments[0]
    for index, state in moments[0].items():
        assert torch.allclose(moments[1][index]["exp_avg_sq"], state["exp_avg_sq"], atol=1e-9, rtol=1e-4)


@pytest.mark.slow  # four short runs
def test_fsdp_training_checkpoints_whole_weights_and_resumes_under_any_world_size(tiny_run_inputs, tmp_path):
    def train(out, *extra, launch=LAUNCH):
        run([*launch, "-m", "aspo", "train", *tiny_overrides(tiny_run_inputs, out, *extra)])

    ddp, fsdp = tmp_path / "ddp", tmp_path / "fsdp"
    train(ddp, "train.steps=3")  # checkpoints at steps 2 and 3
    train(fsdp, "train.steps=2", "train.fsdp=true")
    # sharded or not, the same run and the same checkpoint
    assert_same_checkpoint(ddp / "checkpoints" / "step-2", fsdp / "checkpoints" / "step-2")
    # resumed sharded (each rank loads its shards of the whole checkpoint), it continues as the unsharded run
    train(fsdp, "train.steps=3", "train.fsdp=true", "resume=true")
    assert_same_checkpoint(ddp / "checkpoints" / "step-3", fsdp / "checkpoints" / "step-3")
    # and in one process
    train(fsdp, "train.steps=4", "train.fsdp=true", "resume=true", launch=[sys.executable])
    assert [r["step"] for r in read_metrics(fsdp)] == [0, 1, 2, 3, 4]


SIGNAL_ARGS = ("train.steps=4", "train.eval_every=1", "train.save_every=1000", "train.plots=false")


def launch_signalled(inputs, out, rank, when, target, *extra):
    """`aspo train` under the launcher, rank ``rank`` sending SIGTERM at ``when`` (tests/dist/signal_at.py);
    returns (launcher exit status, stderr)."""
    cmd = [*LAUNCH, str(HERE / "dist" / "signal_at.py"), str(rank), when, target]
    code, stderr = finish([*cmd, *tiny_overrides(inputs, out, *SIGNAL_ARGS, *extra)], timeout=120)
    assert "Unable to shutdown process" not in stderr, stderr[-3000:]  # no rank had to be SIGKILLed
    return code, stderr


def stopped_lines(stderr):
    return [line for line in stderr.splitlines() if line.startswith("aspo train: stopped by SIGTERM")]


@pytest.fixture(scope="module")
def whole_two_process_run(tiny_run_inputs, tmp_path_factory):
    out = tmp_path_factory.mktemp("whole") / "run"
    run([*LAUNCH, "-m", "aspo", "train", *tiny_overrides(tiny_run_inputs, out, *SIGNAL_ARGS)])
    return out


@pytest.mark.slow  # three 2-process runs
def test_sigterm_to_the_launcher_stops_both_ranks_at_one_step_and_resumes_exactly(
    tiny_run_inputs, whole_two_process_run, tmp_path
):
    # rank 0 signals the launcher after step 1's update and waits for its own copy; the launcher passes it to
    # every rank (each at its own moment): both stop after step 1, rank 0 saves it
    out = tmp_path / "run"
    _, stderr = launch_signalled(tiny_run_inputs, out, 0, "step-1", "launcher")
    assert [s for s, _ in list_checkpoints(out)] == [1], stderr[-3000:]
    lines = stopped_lines(stderr)
    assert len(lines) == 1 and "after step 1 of 4" in lines[0], stderr[-3000:]  # rank 0 speaks for both
    assert [r["step"] for r in read_metrics(out)] == [0, 1]
    run([*LAUNCH, "-m", "aspo", "train", *tiny_overrides(tiny_run_inputs, out, *SIGNAL_ARGS, "resume=true")])
    assert comparable(read_metrics(out)) == comparable(read_metrics(whole_two_process_run))


@pytest.mark.slow  # a 2-process run each
@pytest.mark.parametrize(
    "when, status, line",
    [
        ("step-2", 1, "after step 2 of 4"),  # one rank signalled mid-run: both stop at the same step
        ("step-4", 1, "after step 4 of 4"),  # in the last step: the ranks still agree (they skipped that)
        ("finished", 0, None),  # after the last agreement: recorded, not fatal (a rank used to die here
        # and leave the other in the teardown's barrier)
    ],
)
def test_sigterm_to_one_rank_ends_every_rank_promptly_with_a_complete_checkpoint(
    tiny_run_inputs, whole_two_process_run, tmp_path, when, status, line
):
    out = tmp_path / "run"
    code, stderr = launch_signalled(tiny_run_inputs, out, 1, when, "self")
    assert code == status and "Connection closed by peer" not in stderr, stderr[-3000:]
    lines = stopped_lines(stderr)
    assert len(lines) == (line is not None) and all(line in s for s in lines), stderr[-3000:]
    last = 2 if when == "step-2" else 4
    assert [s for s, _ in list_checkpoints(out)] == [last]  # saved by the stop, or by the run's end
    assert (out / "checkpoints" / f"step-{last}" / "model.safetensors").is_file()
    assert comparable(read_metrics(out)) == comparable(read_metrics(whole_two_process_run))[: last + 1]


@pytest.mark.parametrize("sharding", ["ddp", "fsdp"])
def test_the_teardown_frees_the_process_group_before_it_returns(sharding):
    # the gloo group's destructor must run with the GIL released (a Python handle's), never in the DDP
    # reducer's release: see aspo.distributed.close; benchmarks/teardown_soak.py counts real runs' hangs
    code, stderr = finish([*LAUNCH, str(HERE / "dist" / "teardown.py"), sharding], timeout=150)
    assert code == 0, stderr[-3000:]
