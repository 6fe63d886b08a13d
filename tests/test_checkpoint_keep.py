"""`train.keep_checkpoints`: older complete checkpoints go only once a newer one is complete; resume works."""

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
