"""Data users already have: Parquet in verl's RLHF layout and `datasets` save_to_disk directories, written
here with pyarrow / datasets themselves, read by `aspo train`, `aspo eval` and `aspo score`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import DATA, tiny_overrides

from aspo.cli import main
from aspo.config import load_config
from aspo.data import load_prompt_data, read_records
from aspo.errors import UserError

CHAT = (
    "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}</>{% endfor %}"
    "{% if add_generation_prompt %}<a>{% endif %}"
)


def verl_rows(n: int = 6) -> list[dict]:
    """Rows as verl's data preprocessing scripts (examples/data_preprocess/gsm8k.py) write them."""
    return [
        {
            "data_source": "openai/gsm8k",
            "prompt": [{"role": "user", "content": f"{i}+{i}="}],
            "ability": "math",
            "reward_model": {"style": "rule", "ground_truth": str(2 * i)},
            "extra_info": {"split": "train", "index": i},
        }
        for i in range(n)
    ]


def write_parquet(path: Path, rows: list[dict]) -> Path:
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def test_verl_parquet_reads_as_records(tmp_path):
    records = load_prompt_data(str(write_parquet(tmp_path / "train.parquet", verl_rows())))
    assert len(records) == 6
    assert records[2]["prompt"] == [{"role": "user", "content": "2+2="}]
    assert records[2]["answer"] == "4"  # from reward_model.ground_truth
    assert records[2]["data_source"] == "openai/gsm8k" and records[2]["extra_info"] == {
        "split": "train",
        "index": 2,
    }


def test_save_to_disk_directories(tmp_path):
    import datasets

    rows = [{"prompt": f"{i}*2=", "answer": str(2 * i)} for i in range(4)]
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "ds"))
    assert read_records(tmp_path / "ds") == rows
    datasets.Dataset.from_list(verl_rows(3)).save_to_disk(str(tmp_path / "verl_ds"))
    assert [r["answer"] for r in load_prompt_data(str(tmp_path / "verl_ds"))] == ["0", "2", "4"]
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows)}).save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(UserError, match=r"DatasetDict; name one split's directory: .*dd/train"):
        read_records(tmp_path / "dd")
    assert read_records(tmp_path / "dd" / "train") == rows
    (tmp_path / "plain").mkdir()
    with pytest.raises(UserError, match="plain: a directory, but not one written by datasets' save_to_disk"):
        read_records(tmp_path / "plain")


@pytest.mark.parametrize(
    "change, message",
    [
        (
            lambda rows: rows[2]["reward_model"].update(ground_truth=None),
            r"bad.parquet, row 3: record has no 'reward_model.ground_truth' field",
        ),
        (
            lambda rows: rows[1].update(prompt=[{"content": "1+1="}]),
            r"bad.parquet, row 2: 'prompt' is a chat message list, but .* is not a \{role, content\} message",
        ),
        (lambda rows: rows[4].update(prompt=[]), r"bad.parquet, row 5: 'prompt' is a chat message list, but"),
    ],
)
def test_bad_rows_name_file_row_and_field(tmp_path, change, message):
    rows = verl_rows()
    change(rows)
    path = write_parquet(tmp_path / "bad.parquet", rows)
    with pytest.raises(UserError, match=message):
        load_prompt_data(str(path))


def test_bad_files_are_clear_errors(tmp_path):
    no_prompt = write_parquet(tmp_path / "np.parquet", [{"question": "1+1", "answer": "2"}])
    with pytest.raises(UserError, match=r"np.parquet, row 1: record has no 'prompt' field"):
        load_prompt_data(str(no_prompt))
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(UserError, match="broken.parquet: not a readable Parquet file"):
        read_records(broken)


def test_train_eval_and_score_on_verl_parquet(tiny_run_inputs, tmp_path, capsys):
    from transformers import AutoTokenizer

    from aspo.trainer import Trainer

    model = tmp_path / "model"
    shutil.copytree(tiny_run_inputs / "model", model)
    tokenizer = AutoTokenizer.from_pretrained(model)
    tokenizer.chat_template = CHAT
    tokenizer.save_pretrained(model)
    train = write_parquet(tmp_path / "train.parquet", verl_rows(8))
    import datasets

    datasets.Dataset.from_list(verl_rows(4)).save_to_disk(str(tmp_path / "test_ds"))
    out = tmp_path / "run"
    overrides = tiny_overrides(
        tiny_run_inputs,
        out,
        f"model={model}",
        f"data.train={train}",
        f"data.test={tmp_path / 'test_ds'}",
        "train.steps=1",
        "train.save_every=1",
        "prompt.chat_template=true",
        "prompt.instruction=Digits only.",
    )
    Trainer(load_config(None, overrides), progress=False).run()
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert samples[0]["prompt"] == "<user>0+0=\nDigits only.</><a>"  # the message list through the template
    # without the chat template a message list cannot become text: one clear error, before any work
    overrides = tiny_overrides(tiny_run_inputs, tmp_path / "run2", f"model={model}", f"data.train={train}")
    with pytest.raises(UserError, match="prompt.chat_template=true"):
        Trainer(load_config(None, overrides), progress=False)
    assert not (tmp_path / "run2").exists()
    # aspo eval reads the same file, formatted as the run trained
    assert (
        main(
            [
                "eval",
                "--model",
                str(out / "checkpoints" / "step-1"),
                "--data",
                str(train),
                "--reward",
                f"{DATA / 'rewards.py'}:digit_share",
                "--n",
                "1",
                "--max-new-tokens",
                "2",
                "--limit",
                "2",
                "--output",
                str(tmp_path / "ev"),
            ]
        )
        == 0
    )
    rows = [json.loads(line) for line in (tmp_path / "ev" / "samples.jsonl").read_text().splitlines()]
    assert rows[1]["prompt"] == "<user>1+1=\nDigits only.</><a>"
    # aspo score on Parquet responses
    scored_in = write_parquet(
        tmp_path / "responses.parquet",
        [{**r, "response": f"\\boxed{{{r['reward_model']['ground_truth']}}}"} for r in verl_rows(3)]
        + [{**verl_rows(1)[0], "response": "\\boxed{}"}],
    )
    assert (
        main(["score", "--reward", "math", "--input", str(scored_in), "--output", str(tmp_path / "s.jsonl")])
        == 0
    )
    scored = [json.loads(line) for line in (tmp_path / "s.jsonl").read_text().splitlines()]
    assert [r["reward"] for r in scored] == [1.0, 1.0, 1.0, 0.0]
