"""One prompt rule: `aspo train` (and its held-out eval) and `aspo eval` see the same text for a record."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import DATA, tiny_overrides

from aspo.cli import main
from aspo.config import PromptConfig, load_config
from aspo.errors import UserError
from aspo.prompting import format_prompt
from aspo.trainer import Trainer

CHAT = (
    "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}</>{% endfor %}"
    "{% if add_generation_prompt %}<a>{% endif %}"
)
PROMPT_KEYS = [
    "prompt.chat_template=true",
    "prompt.system=Be brief.",
    "prompt.template=Q: {prompt}",
    "prompt.instruction=Answer with digits.",
]


@pytest.fixture(scope="module")
def chat_model(tiny_run_inputs, tmp_path_factory) -> Path:
    from transformers import AutoTokenizer

    path = tmp_path_factory.mktemp("chat") / "model"
    shutil.copytree(tiny_run_inputs / "model", path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.chat_template = CHAT
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def chat_run(tiny_run_inputs, chat_model, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run") / "r"
    overrides = tiny_overrides(
        tiny_run_inputs, out, f"model={chat_model}", "train.steps=1", "train.save_every=1", *PROMPT_KEYS
    )
    Trainer(load_config(None, overrides), progress=False).run()
    return out


def _eval(model: Path, data: Path, out: Path, *extra: str) -> list[dict]:
    assert (
        main(
            [
                "eval",
                "--model",
                str(model),
                "--data",
                str(data),
                "--reward",
                f"{DATA / 'rewards.py'}:digit_share",
                "--n",
                "1",
                "--max-new-tokens",
                "2",
                "--limit",
                "3",
                "--output",
                str(out),
                *extra,
            ]
        )
        == 0
    )
    return [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]


def test_train_and_eval_prompt_byte_identical(chat_run, tiny_run_inputs, tmp_path):
    trained = [json.loads(line) for line in (chat_run / "samples.jsonl").read_text().splitlines()]
    train_prompts = list(dict.fromkeys(r["prompt"] for r in trained if r["step"] == 0))
    test = [json.loads(line) for line in (tiny_run_inputs / "test.jsonl").read_text().splitlines()]
    assert train_prompts[0] == f"<system>Be brief.</><user>Q: {test[0]['prompt']}\nAnswer with digits.</><a>"
    # a checkpoint of the run: aspo eval formats exactly as the run trained
    rows = _eval(chat_run / "checkpoints" / "step-1", tiny_run_inputs / "test.jsonl", tmp_path / "ev")
    assert [r["prompt"] for r in rows] == train_prompts[:3]
    settings = json.loads((tmp_path / "ev" / "eval_config.json").read_text())
    assert settings["prompt"] == {
        "template": "Q: {prompt}",
        "chat_template": True,
        "system": "Be brief.",
        "instruction": "Answer with digits.",
    }
    # explicit flags override the run's settings, one by one
    rows = _eval(
        chat_run / "checkpoints" / "step-1",
        tiny_run_inputs / "test.jsonl",
        tmp_path / "ev2",
        "--instruction",
        "",
        "--system",
        "S",
    )
    assert rows[0]["prompt"] == f"<system>S</><user>Q: {test[0]['prompt']}</><a>"
    rows = _eval(
        chat_run / "checkpoints" / "step-1",
        tiny_run_inputs / "test.jsonl",
        tmp_path / "ev3",
        "--no-chat-template",
    )
    assert rows[0]["prompt"] == f"Be brief.\nQ: {test[0]['prompt']}\nAnswer with digits."


def test_plain_checkpoint_gets_the_eval_defaults(chat_model, tiny_run_inputs, tmp_path):
    rows = _eval(chat_model, tiny_run_inputs / "test.jsonl", tmp_path / "ev")
    test = json.loads((tiny_run_inputs / "test.jsonl").read_text().splitlines()[0])
    assert (
        rows[0]["prompt"] == f"<user>{test['prompt']}</><a>"
    )  # chat template, no instruction for this reward


def test_runs_saved_before_the_prompt_section_still_evaluate(chat_run, tiny_run_inputs, tmp_path):
    import yaml

    from aspo.commands.eval import run_prompt_config

    old = tmp_path / "old-run"
    (old / "checkpoints").mkdir(parents=True)
    shutil.copytree(chat_run / "checkpoints" / "step-1", old / "checkpoints" / "step-1")
    tree = yaml.safe_load((chat_run / "config.yaml").read_text())
    del tree["prompt"]
    tree["data"].update(prompt_template="{prompt} =", chat_template=False)
    (old / "config.yaml").write_text(yaml.safe_dump(tree))
    assert run_prompt_config(str(old / "checkpoints" / "step-1")) == PromptConfig(template="{prompt} =")
    rows = _eval(old / "checkpoints" / "step-1", tiny_run_inputs / "test.jsonl", tmp_path / "ev")
    test = json.loads((tiny_run_inputs / "test.jsonl").read_text().splitlines()[0])
    assert rows[0]["prompt"] == f"{test['prompt']} ="
    assert (
        load_config(None, ["data.chat_template=true"]).prompt.chat_template is True
    )  # the old key still works


def test_chat_message_list_prompts():
    from aspo.lab import build_tokenizer

    tokenizer = build_tokenizer()
    record = {
        "prompt": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "yes?"},
            {"role": "user", "content": "2+2"},
        ],
        "answer": "4",
    }
    with pytest.raises(UserError, match="prompt.chat_template=true"):
        format_prompt(record, PromptConfig(chat_template=True), tokenizer)  # this tokenizer has no template
    tokenizer.chat_template = CHAT
    with pytest.raises(UserError, match="prompt.chat_template=true"):
        format_prompt(record, PromptConfig(), tokenizer)
    cfg = PromptConfig(chat_template=True, system="S", template="Q: {prompt}", instruction="Be exact.")
    # template and instruction shape the last user turn; prompt.system is added when the data has none
    assert (
        format_prompt(record, cfg, tokenizer)
        == "<system>S</><user>hi</><assistant>yes?</><user>Q: 2+2\nBe exact.</><a>"
    )
    own = {**record, "prompt": [{"role": "system", "content": "mine"}, *record["prompt"]]}
    assert format_prompt(own, cfg, tokenizer).startswith("<system>mine</><user>hi</>")
