"""`train.keep_checkpoints`: older complete checkpoints go only once a newer one is complete; resume works."""

import os
import shutil

import pytest
from conftest import tiny_overrides

from aspo.checkpoint import list_checkpoints, save_checkpoint
from aspo.config import load_config
from aspo.errors import UserError
from aspo.report.metrics import read_metrics
from aspo.trainer import Trainer


def run(inputs, out, *extra):
    return Trainer(load_config(None, tiny_overrides(inputs, out, *extra)), progress=False).run()


def comparable(rows):
    """Training metrics without wall-clock numbers and held-out evals (a run that ends at step 2 evaluates
    there, the uninterrupted one does not)."""
    return [{k: v for k, v in r.items() if not k.startswith(("time/", "perf/", "eval/"))} for r in rows]


def test_keep_one_leaves_only_the_newest_and_resume_continues_from_it(tiny_run_inputs, tmp_path):
    args = ["train.save_every=1", "train.keep_checkpoints=1", "train.eval_every=0"]
    whole = tmp_path / "whole"
    run(tiny_run_inputs, whole, "train.steps=4", *args)
    assert [step for step, _ in list_checkpoints(whole)] == [4]
    assert sorted(p.name for p in (whole / "checkpoints").iterdir()) == ["step-4"]  # no temp dirs either

    part = tmp_path / "part"
    run(tiny_run_inputs, part, "train.steps=2", *args)
    assert [step for step, _ in list_checkpoints(part)] == [2]
    run(tiny_run_inputs, part, "train.steps=4", "resume=true", *args)
    assert [step for step, _ in list_checkpoints(part)] == [4]
    # the resumed run repeats the uninterrupted one
    assert comparable(read_metrics(part)) == comparable(read_metrics(whole))


def test_a_failed_save_removes_nothing(tiny_run_inputs, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_run_inputs / "model")
    tokenizer = AutoTokenizer.from_pretrained(tiny_run_inputs / "model")
    optimizer = torch.optim.AdamW(model.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    for step in (1, 2):
        save_checkpoint(tmp_path, step, model, tokenizer, optimizer, scheduler, {}, keep=1)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [2]

    class BrokenTokenizer:
        def save_pretrained(self, path):
            raise OSError("No space left on device")

    with pytest.raises(UserError, match="previous checkpoint .*step-2 is intact"):
        save_checkpoint(tmp_path, 3, model, BrokenTokenizer(), optimizer, scheduler, {}, keep=1)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [2]  # the last complete checkpoint survives


@pytest.fixture(scope="module")
def kept_one(tiny_run_inputs, tmp_path_factory):
    """A 2-step run that kept only its newest checkpoint (step-2)."""
    out = tmp_path_factory.mktemp("kept") / "run"
    run(tiny_run_inputs, out, "train.steps=2", "train.save_every=1", "train.keep_checkpoints=1")
    assert [s for s, _ in list_checkpoints(out)] == [2]
    return out


def resume(inputs, out):
    return run(inputs, out, "train.steps=3", "train.save_every=1", "train.keep_checkpoints=1", "resume=true")


@pytest.mark.parametrize("damage", ["truncated weights", "lost trainer_state.json"])
def test_a_corrupt_only_checkpoint_is_a_clear_error_never_a_restart(
    tiny_run_inputs, kept_one, tmp_path, damage
):
    out = tmp_path / "run"
    shutil.copytree(kept_one, out)
    step = out / "checkpoints" / "step-2"
    if damage == "truncated weights":
        name = "model.safetensors"
        with open(step / name, "r+b") as fh:
            fh.truncate((step / name).stat().st_size // 2)
    else:  # before, a checkpoint without it was not counted: the run silently started over from step 0
        name = "trainer_state.json"
        (step / name).unlink()
    metrics = (out / "metrics.jsonl").read_text()
    with pytest.warns(UserWarning), pytest.raises(UserError) as failed:
        resume(tiny_run_inputs, out)
    assert "can be read" in str(failed.value) and str(step / name) in str(failed.value)
    assert (out / "metrics.jsonl").read_text() == metrics  # nothing was truncated or rewritten


def test_a_run_whose_checkpoints_are_gone_does_not_restart_from_step_0(tiny_run_inputs, kept_one, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(kept_one, out)
    shutil.rmtree(out / "checkpoints")
    with pytest.raises(UserError, match="no checkpoint, while its metrics.jsonl records steps up to 2"):
        resume(tiny_run_inputs, out)


def test_a_resave_stopped_between_its_renames_resumes_from_the_previous_copy(
    tiny_run_inputs, kept_one, tmp_path
):
    # save_checkpoint renames step-N away before putting the new copy in place: killed in between, only
    # .old-step-N-PID is left, and with keep_checkpoints=1 it is the run's one checkpoint
    out = tmp_path / "run"
    shutil.copytree(kept_one, out)
    os.rename(out / "checkpoints" / "step-2", out / "checkpoints" / ".old-step-2-12345")
    resume(tiny_run_inputs, out)
    assert [r["step"] for r in read_metrics(out)] == [0, 1, 2, 3]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-3"]  # the old copy went too
