"""Faults lose nothing: a stop signal mid-step, a failed checkpoint write, a corrupt newest checkpoint.

Each interrupted or damaged run is resumed and compared with one uninterrupted run of the same config:
every metric outside time/ and perf/ must be identical.
"""

import errno
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import tiny_overrides

from aspo.checkpoint import list_checkpoints, read_checkpoint
from aspo.config import load_config
from aspo.errors import CheckpointError, Interrupted, UserError
from aspo.report.metrics import read_metrics
from aspo.trainer import Trainer

ARGS = ("train.steps=4", "train.eval_every=1", "train.plots=false")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def comparable(rows):
    return [{k: v for k, v in r.items() if not k.startswith(("time/", "perf/"))} for r in rows]


def trainer(inputs, out, *extra):
    return Trainer(load_config(None, tiny_overrides(inputs, out, *ARGS, *extra)), progress=False)


@pytest.fixture(scope="module")
def whole_run(tiny_run_inputs, tmp_path_factory):
    """The uninterrupted reference: 4 steps, checkpoints at steps 2 and 4."""
    out = tmp_path_factory.mktemp("whole") / "run"
    trainer(tiny_run_inputs, out).run()
    return out


def resume_and_compare(inputs, out, whole, *extra):
    trainer(inputs, out, "resume=true", *extra).run()
    got = comparable(read_metrics(out))
    assert [r["step"] for r in got] == [0, 1, 2, 3, 4]
    assert got == comparable(read_metrics(whole))


def signal_at(trainer_, method, call, signum):
    """Make ``trainer_.<method>`` raise ``signum`` in this process right after its ``call``-th call."""
    original, calls = getattr(trainer_, method), []

    def wrapped(*args, **kwargs):
        result = original(*args, **kwargs)
        calls.append(1)
        if len(calls) == call:
            signal.raise_signal(signum)
        return result

    setattr(trainer_, method, wrapped)


def test_sigterm_before_the_first_optimizer_step_abandons_it_and_saves_the_last_step(
    tiny_run_inputs, whole_run, tmp_path
):
    # the case: checkpoints every 1000 steps, so without the signal nothing would be on disk
    out = tmp_path / "run"
    run = trainer(tiny_run_inputs, out, "train.save_every=1000")
    handler_before = signal.getsignal(signal.SIGTERM)
    signal_at(run, "collect", 3, signal.SIGTERM)  # step 3 sampled and scored, not yet updated
    with pytest.raises(Interrupted) as stop:
        run.run()
    assert stop.value.exit_code == 128 + signal.SIGTERM and "after step 2 of 4" in str(stop.value)
    assert [s for s, _ in list_checkpoints(out)] == [2]
    assert [r["step"] for r in read_metrics(out)] == [0, 1, 2]
    assert signal.getsignal(signal.SIGTERM) is handler_before  # the run's handler is gone with it
    resume_and_compare(tiny_run_inputs, out, whole_run, "train.save_every=1000")


def test_sigint_after_an_optimizer_step_finishes_the_step_and_saves_it(tiny_run_inputs, whole_run, tmp_path):
    out = tmp_path / "run"
    run = trainer(tiny_run_inputs, out)
    # 2 mini-batches x 2 epochs x 1 micro-batch: the 6th loss is step 2's second mini-batch, after its first
    # optimizer step -- the step must finish (eval and log included) and be saved
    signal_at(run.policy_update, "loss", 6, signal.SIGINT)  # the update stage's forward + objective
    with pytest.raises(Interrupted) as stop:
        run.run()
    assert stop.value.exit_code == 128 + signal.SIGINT and "after step 2 of 4" in str(stop.value)
    assert [r["step"] for r in read_metrics(out)] == [0, 1, 2]
    assert "eval/pass@1" in read_metrics(out)[-1]
    assert [s for s, _ in list_checkpoints(out)] == [2]
    resume_and_compare(tiny_run_inputs, out, whole_run)


@pytest.mark.slow  # two `aspo train` processes
def test_sigterm_from_outside_exits_143_with_one_line_and_resumes_exactly(
    tiny_run_inputs, whole_run, tmp_path
):
    out = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "aspo",
        "train",
        *tiny_overrides(tiny_run_inputs, out, *ARGS, "train.save_every=1000"),
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=ENV)
    deadline = time.time() + 240
    metrics = out / "metrics.jsonl"
    while not metrics.is_file() or metrics.read_text().count("\n") < 2:  # step 1 logged: step 2 under way
        assert proc.poll() is None and time.time() < deadline, "run ended before step 1"
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr
    lines = [line for line in stderr.splitlines() if line.startswith("aspo train: stopped")]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    steps = [s for s, _ in list_checkpoints(out)]
    assert len(steps) == 1 and f"after step {steps[0]} of 4" in lines[0] and "resume=true" in lines[0]
    assert [r["step"] for r in read_metrics(out)] == list(range(steps[0] + 1))
    resume_and_compare(tiny_run_inputs, out, whole_run, "train.save_every=1000")


def test_a_failed_checkpoint_write_keeps_the_previous_one(tiny_run_inputs, whole_run, tmp_path, monkeypatch):
    out = tmp_path / "run"
    real_save = torch.save

    def disk_full(obj, path, *args, **kwargs):
        if "step-4" in str(path) and str(path).endswith("optimizer.pt"):
            with open(path, "wb") as fh:  # half a file, then the disk is full
                fh.write(b"PK\x03\x04" * 64)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(UserError) as failed:
        trainer(tiny_run_inputs, out).run()
    message = str(failed.value)
    assert str(out / "checkpoints" / "step-4") in message and "No space left on device" in message
    assert str(out / "checkpoints" / "step-2") in message  # where the intact one is
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-2"]  # no half-written directory
    monkeypatch.undo()
    read_checkpoint(out / "checkpoints" / "step-2")
    resume_and_compare(tiny_run_inputs, out, whole_run)


@pytest.fixture
def small_disk(tmp_path):
    """A 16 MiB tmpfs of its own (needs root, or CAP_SYS_ADMIN), unmounted after the test."""
    mount = tmp_path / "disk"
    mount.mkdir()
    made = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount)], capture_output=True
    )
    if made.returncode:
        pytest.skip(f"cannot mount a tmpfs here to fill ({made.stderr.decode().strip()})")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=True)


def fill(disk, target):
    """Write a filler file until the kernel refuses: ENOSPC for real. ``target`` is first padded with blank
    lines (which readers skip) to a page boundary, so that its next row needs a page the disk lacks."""
    with open(target, "a") as fh:
        fh.write("\n" * (-fh.tell() % os.sysconf("SC_PAGE_SIZE")))
    with open(disk / "filler", "wb", buffering=0) as fh:
        try:
            while True:
                fh.write(b"\0" * 65536)
        except OSError as err:
            assert err.errno == errno.ENOSPC
    with open(disk / "filler", "ab", buffering=0) as fh:  # the last partial block too
        try:
            while True:
                fh.write(b"\0")
        except OSError as err:
            assert err.errno == errno.ENOSPC


@pytest.mark.parametrize("target", ["samples.jsonl", "metrics.jsonl"])
def test_a_full_disk_while_logging_is_one_clear_error_and_the_run_resumes(
    tiny_run_inputs, whole_run, small_disk, target
):
    out = small_disk / "run"
    run = trainer(tiny_run_inputs, out)
    # the disk fills after step 2's checkpoint: step 3's eval samples are the next write; or right after
    # them, so that step 3's metrics row is
    after = ("save", 1) if target == "samples.jsonl" else ("write_samples", 4)
    original, calls = getattr(run, after[0]), []

    def then_fill(*args, **kwargs):
        result = original(*args, **kwargs)
        calls.append(1)
        if len(calls) == after[1]:
            fill(small_disk, out / target)
        return result

    setattr(run, after[0], then_fill)
    with pytest.raises(UserError) as failed:
        run.run()
    message = str(failed.value)
    assert message.startswith(f"could not write {out / target}: no space left on device")
    assert "\n" not in message and "resume=true" in message
    assert [r["step"] for r in read_metrics(out)] == [0, 1, 2]  # whole rows, none of step 3
    assert {r["step"] for r in read_metrics(out / "samples.jsonl")} == (
        {0, 1, 2} if target == "samples.jsonl" else {0, 1, 2, 3}
    )
    read_checkpoint(out / "checkpoints" / "step-2")  # the last checkpoint is intact
    (small_disk / "filler").unlink()
    resume_and_compare(tiny_run_inputs, out, whole_run)


def test_a_truncated_newest_checkpoint_is_skipped_with_a_warning(tiny_run_inputs, whole_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(whole_run, out)
    weights = out / "checkpoints" / "step-4" / "model.safetensors"
    with open(weights, "r+b") as fh:
        fh.truncate(weights.stat().st_size // 2)
    with pytest.raises(CheckpointError, match="model.safetensors"):
        read_checkpoint(weights.parent)
    with pytest.warns(UserWarning, match=f"{weights.parent} is unreadable"):
        run = trainer(tiny_run_inputs, out, "resume=true")
    assert run.step == 2  # went back to the previous complete checkpoint
    run.run()
    got = comparable(read_metrics(out))
    assert got == comparable(read_metrics(whole_run))


def test_no_readable_checkpoint_is_one_clear_error(tiny_run_inputs, whole_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(whole_run, out)
    for _, path in list_checkpoints(out):
        (path / "optimizer.pt").write_bytes(b"")
    with (
        pytest.warns(UserWarning),
        pytest.raises(UserError, match="no checkpoint in .* can be read.*optimizer.pt"),
    ):
        trainer(tiny_run_inputs, out, "resume=true")


def test_weights_that_do_not_fit_the_model_are_refused_not_ignored(tiny_run_inputs, whole_run, tmp_path):
    from safetensors.torch import load_file, save_file

    out = tmp_path / "run"
    shutil.copytree(whole_run, out)
    for _, path in list_checkpoints(
        out
    ):  # what a model with other parameter names (or flat FSDP shards) sees
        weights = load_file(str(path / "model.safetensors"))
        save_file({f"renamed.{k}": v for k, v in weights.items()}, str(path / "model.safetensors"))
    with pytest.raises(UserError, match="do not fit the model.*renamed"):
        trainer(tiny_run_inputs, out, "resume=true")
