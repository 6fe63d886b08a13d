"""The short-answer `add` task for pretrained chat models: splits, config rules, `aspo eval --data lab:add`,
and `aspo train model=<file>.gguf task=add` end to end on the tiny GGUF of test_pretrained."""

import json
from pathlib import Path

import pytest
from test_pretrained import reference_model, tiny_vocab, write_tiny_gguf

from aspo.config import load_config
from aspo.errors import UserError
from aspo.evalsets import lab_reward, load_benchmark
from aspo.lab import get_task
from aspo.report.metrics import read_metrics


def test_problems_answers_and_disjoint_splits():
    task = get_task("add")
    assert task.reward == "number" and not task.lab_model and get_task("arithmetic").reward == "arithmetic"
    train, test = task.make_split("train", 300), task.make_split("test", 64)
    for r in train + test:
        assert r["prompt"] == f"What is {r['a']} + {r['b']}?" and r["answer"] == str(r["a"] + r["b"])
        assert 2 <= r["a"] <= 30 and 2 <= r["b"] <= 30
    pairs = lambda rs: {frozenset((r["a"], r["b"])) for r in rs}  # noqa: E731
    assert not pairs(train) & pairs(test)  # a + b held out means b + a is held out too
    every = [{"a": a, "b": b} for a in range(2, 31) for b in range(2, 31)]
    assert all(task.split_of(r) == task.split_of({"a": r["b"], "b": r["a"]}) for r in every)
    assert task.verify(prompt="", response="21 + 10 = 31", answer="31") == 1.0
    assert task.verify(prompt="", response="21 + 10", answer="31") == 0.0


@pytest.mark.parametrize(
    "overrides, needle",
    [
        (["task=add"], "task='add' is for pretrained chat models"),
        # a local checkpoint directory (this one: the test's own folder), so no optional package is needed
        (
            [f"model={Path(__file__).parent}", "task=add", "reward=math"],
            "data.train is required with reward='math'",
        ),
        (["model=no/such/dir", "task=add"], "model path 'no/such/dir' does not exist"),
        (["task=nope"], "unknown lab task 'nope'"),
    ],
)
def test_config_rules(overrides, needle):
    with pytest.raises(UserError, match=needle):
        load_config(None, overrides).validate()


def test_eval_data_is_the_held_out_split_training_uses():
    records = load_benchmark("lab:add:16")
    assert [r["prompt"] for r in records] == [r["prompt"] for r in get_task("add").make_split("test", 16)]
    assert len({r["id"] for r in records}) == 16 and lab_reward("lab:add:16") == "number"
    assert lab_reward("gsm8k") is None
    with pytest.raises(UserError, match="lab:TASK:N"):
        load_benchmark("lab:add:x")


def test_train_on_a_gguf_file_with_the_add_task(tmp_path, monkeypatch):
    from aspo.trainer import Trainer

    monkeypatch.setenv("ASPO_CACHE_DIR", str(tmp_path / "cache"))
    tokens, types, merges = tiny_vocab()
    gguf_file = tmp_path / "tiny.gguf"
    write_tiny_gguf(gguf_file, reference_model(len(tokens)), tokens, types, merges)
    out = tmp_path / "run"
    cfg = load_config(
        None,
        [
            f"model={gguf_file}",
            "task=add",
            "prompt.chat_template=true",
            "data.num_train=16",
            "data.num_test=4",
            "rollout.n=2",
            "rollout.max_new_tokens=4",
            "eval.n=2",
            "train.prompts_per_step=2",
            "train.mini_batches=1",
            "train.epochs=1",
            "train.steps=1",
            "train.device=cpu",
            "train.threads=1",
            "train.plots=false",
            f"output_dir={out}",
        ],
    )
    Trainer(cfg, progress=False).run()
    assert len(list((tmp_path / "cache" / "gguf").iterdir())) == 1  # converted once, into the cache
    samples = [json.loads(line) for line in open(out / "samples.jsonl")]
    assert samples and all(s["prompt"].startswith("<|im_start|>user\nWhat is ") for s in samples)
    assert [r["step"] for r in read_metrics(out)] == [0, 1]
