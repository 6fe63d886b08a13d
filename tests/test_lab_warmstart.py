"""Warm start: cache keyed by settings, atomic builds, determinism, SFT batches that mask the prompt."""

import json

import pytest
import torch

from aspo.errors import UserError
from aspo.lab import warmstart
from aspo.lab.model import build_model, load_policy
from aspo.lab.tasks import get_task
from aspo.lab.tokenizer import build_tokenizer
from aspo.lab.warmstart import sft_batch, supervised_finetune, warm_start, warm_start_path

TINY = {
    "steps": 3,
    "batch_size": 4,
    "hidden_size": 32,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "eval_problems": 3,
    "eval_samples": 2,
    "warmup_steps": 1,
}


def test_build_writes_a_complete_checkpoint_and_second_call_hits_cache(tmp_path, monkeypatch):
    path = warm_start("arithmetic", cache_dir=tmp_path, progress=False, **TINY)
    assert path.parent == tmp_path and path.name.startswith("arithmetic-")
    assert path == warm_start_path("arithmetic", cache_dir=tmp_path, **dict(reversed(list(TINY.items()))))
    explicit = warmstart.TASK_DEFAULTS["arithmetic"]["flawed_fraction"]
    assert path == warm_start_path("arithmetic", cache_dir=tmp_path, **TINY, flawed_fraction=explicit)
    info = json.loads((path / "warmstart.json").read_text())
    assert info["settings"]["steps"] == 3 and info["settings"]["hidden_size"] == 32
    assert info["settings"]["flawed_fraction"] == warmstart.TASK_DEFAULTS["arithmetic"]["flawed_fraction"]
    assert set(info["heldout_temperature_1"]) == {"avg@2", "pass@1", "pass@2"}
    assert 0.0 <= info["heldout_greedy_pass@1"] <= 1.0 and info["parameters"] > 1000
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary directory left behind
    model, tokenizer = load_policy(path)
    assert model.config.hidden_size == 32 and tokenizer.padding_side == "left"

    def must_not_build(*args, **kwargs):
        raise AssertionError("cache miss: rebuilt a warm start that exists")

    monkeypatch.setattr(warmstart, "build_warm_start", must_not_build)
    assert warm_start("arithmetic", cache_dir=tmp_path, **TINY) == path
    different = [
        warm_start_path("arithmetic", cache_dir=tmp_path, **{**TINY, "seed": 1}),
        warm_start_path("arithmetic", cache_dir=tmp_path, **{**TINY, "lr": 1e-3}),
        warm_start_path("arithmetic", cache_dir=tmp_path, **{**TINY, "flawed_fraction": 0.1}),
        warm_start_path("countdown", cache_dir=tmp_path, **TINY),
        warm_start_path("arithmetic", cache_dir=tmp_path, **{**TINY, "task_params": {"digits": 2}}),
    ]
    assert len({path, *different}) == 6
    monkeypatch.setattr(warmstart, "CODE_VERSION", "changed")
    assert warm_start_path("arithmetic", cache_dir=tmp_path, **TINY) != path


def test_interrupted_build_leaves_no_cache_entry(tmp_path, monkeypatch):
    def interrupted(task_name, settings, out_dir, progress=True):
        (out_dir / "config.json").write_text("{}")  # half-written checkpoint
        raise KeyboardInterrupt

    monkeypatch.setattr(warmstart, "build_warm_start", interrupted)
    with pytest.raises(KeyboardInterrupt):
        warm_start("arithmetic", cache_dir=tmp_path, **TINY)
    assert list(tmp_path.iterdir()) == []


def test_broken_leftover_is_rebuilt_and_env_var_sets_the_root(tmp_path, monkeypatch):
    monkeypatch.setenv("ASPO_CACHE_DIR", str(tmp_path))
    expected = warm_start_path("arithmetic", **TINY)
    assert expected.parent == tmp_path / "warmstart"
    expected.mkdir(parents=True)
    (expected / "config.json").write_text("not a checkpoint")  # e.g. copied by hand, no warmstart.json
    assert warm_start("arithmetic", progress=False, **TINY) == expected
    assert (expected / "warmstart.json").is_file() and (expected / "model.safetensors").is_file()


def test_same_settings_give_identical_weights(tmp_path):
    a = warm_start("countdown", cache_dir=tmp_path / "a", progress=False, **TINY)
    b = warm_start("countdown", cache_dir=tmp_path / "b", progress=False, **TINY)
    weights_a, weights_b = load_policy(a)[0].state_dict(), load_policy(b)[0].state_dict()
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)
    untrained = build_model(
        build_tokenizer(),
        seed=0,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
    ).state_dict()
    assert not torch.equal(untrained["model.embed_tokens.weight"], weights_a["model.embed_tokens.weight"])


def test_bad_settings_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="unknown warm-start settings"):
        warm_start("arithmetic", cache_dir=tmp_path, stepz=3)
    with pytest.raises(UserError, match="unknown lab task"):
        warm_start("chess", cache_dir=tmp_path)
    with pytest.raises(UserError, match="flawed_fraction"):
        warm_start("arithmetic", cache_dir=tmp_path, flawed_fraction=1.0)
    with pytest.raises(UserError, match="bad parameters"):
        warm_start("arithmetic", cache_dir=tmp_path, task_params={"digitz": 2})
    assert list(tmp_path.iterdir()) == []


def test_sft_batch_supervises_only_response_and_eos():
    tokenizer, task = build_tokenizer(), get_task("arithmetic")
    records = task.make_split("train", 2, seed=0)
    batch = sft_batch(tokenizer, task, records, responses=["1|1", task.demonstration(records[1])])
    prompt_len = len(records[0]["prompt"]) + 1  # + BOS
    labels = batch["labels"][0]
    assert (labels[:prompt_len] == -100).all()
    assert tokenizer.decode(labels[prompt_len : prompt_len + 3]) == "1|1"
    assert labels[prompt_len + 3] == tokenizer.eos_token_id and (labels[prompt_len + 4 :] == -100).all()
    assert batch["attention_mask"][0].sum() == prompt_len + 4
    full = batch["input_ids"][1][batch["attention_mask"][1].bool()]
    assert tokenizer.decode(full) == "<bos>" + records[1]["prompt"] + task.demonstration(records[1]) + "<eos>"


def test_supervised_finetune_learns_the_format():
    tokenizer, task = build_tokenizer(), get_task("arithmetic")
    model = build_model(tokenizer, seed=0, hidden_size=64, num_hidden_layers=2, intermediate_size=128)
    losses = supervised_finetune(
        model, tokenizer, task, steps=40, batch_size=16, lr=3e-3, warmup_steps=5, progress=False
    )
    assert losses[0] > 3.0 and sum(losses[-5:]) / 5 < losses[0] - 1.0  # uniform over 31 tokens: ln 31 = 3.4
