"""`train.report_to=...,wandb` in W&B's offline mode (no network): the local run holds every metrics.jsonl row
under the same names and steps, the resolved config and the run name; resume continues the same W&B run; a
missing wandb package is a one-line error naming the extra."""

import json
import os
import struct
import subprocess
import sys

import pytest
from conftest import tiny_overrides

from aspo.config import load_config
from aspo.errors import UserError
from aspo.report.metrics import read_metrics
from aspo.trainer import Trainer

wandb = pytest.importorskip("wandb")


def read_wandb_file(path):
    """The records of an offline ``run-*.wandb`` file, parsed with wandb's own protobuf definitions.

    The file is a LevelDB-style log (what ``wandb sync`` replays): a 7-byte W&B header, then records in
    32 KiB blocks, each chunk with a 7-byte header (crc32c, length, type: 1 full, 2 first, 3 middle, 4 last).
    """
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    block, pos, records, parts = 32768, 7, [], b""
    while pos + 7 <= len(data):
        left = block - pos % block
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7]) if left >= 7 else (0, 0, 0)
        if kind == 0:  # the rest of a block is padding
            pos += left
            continue
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        parts = chunk if kind in (1, 2) else parts + chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(parts)
            records.append(record)
    return records


def history(records):
    """{step: {metric: value}} from the history records."""
    out = {}
    for r in records:
        if r.WhichOneof("record_type") == "history":
            items = {"/".join(i.nested_key) or i.key: json.loads(i.value_json) for i in r.history.item}
            out[r.history.step.num] = {k: v for k, v in items.items() if not k.startswith("_")}
    return out


@pytest.fixture
def offline(monkeypatch, tmp_path):
    for key, value in {
        "WANDB_MODE": "offline",
        "WANDB_CONSOLE": "off",
        "WANDB_X_DISABLE_STATS": "true",
        "WANDB_X_DISABLE_MACHINE_INFO": "true",
        "WANDB_CONFIG_DIR": str(tmp_path / "wandb-config"),
        "WANDB_CACHE_DIR": str(tmp_path / "wandb-cache"),
        "WANDB_DATA_DIR": str(tmp_path / "wandb-data"),
        "WANDB_DIR": str(tmp_path),
    }.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("WANDB_PROJECT", raising=False)
    yield tmp_path
    wandb.teardown()  # stop the wandb-core service this process started


def test_offline_run_holds_metrics_config_and_name_and_resume_continues_it(
    offline, tiny_run_inputs, monkeypatch
):
    out = offline / "run-a"
    args = ["train.report_to=tensorboard,wandb", "train.steps=3", "train.eval_every=1", "train.plots=false"]
    Trainer(
        load_config(None, tiny_overrides(tiny_run_inputs, out, *args, "train.steps=2")), progress=False
    ).run()
    monkeypatch.delenv("WANDB_DIR")  # the resumed part: W&B files default to the run directory
    Trainer(
        load_config(None, tiny_overrides(tiny_run_inputs, out, *args, "resume=true")), progress=False
    ).run()

    wandb.teardown()  # run.finish() may return before wandb-core has written a process's second run to disk
    first = list((offline / "wandb").glob("offline-run-*/run-*.wandb"))
    second = list((out / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(first) == 1 and len(second) == 1
    runs = [
        [r.run for r in read_wandb_file(f) if r.WhichOneof("record_type") == "run"][0] for f in first + second
    ]
    run_id = (out / "wandb_run_id").read_text().strip()
    assert [r.run_id for r in runs] == [run_id, run_id]  # the resumed part continues the same W&B run
    assert all(r.display_name == "run-a" and r.project == "aspo" for r in runs)
    config = {item.key: json.loads(item.value_json) for item in runs[1].config.update}
    assert config["model"] == str(tiny_run_inputs / "model") and config["output_dir"] == str(out)
    assert config["train"]["report_to"] == "tensorboard,wandb" and config["rollout"]["n"] == 4
    assert config["resume"] is True and config["lora"]["rank"] == 0  # the resolved tree, every section

    logged = {**history(read_wandb_file(first[0])), **history(read_wandb_file(second[0]))}
    rows = read_metrics(out)
    assert sorted(logged) == [r["step"] for r in rows] == [0, 1, 2, 3]
    for row in rows:
        want = {k: v for k, v in row.items() if k != "step" and v is not None}
        assert logged[row["step"]] == pytest.approx(want, rel=1e-12), row["step"]


def test_missing_wandb_is_a_one_line_error_naming_the_extra(monkeypatch, tiny_run_inputs, tmp_path):
    monkeypatch.setitem(sys.modules, "wandb", None)  # what `import wandb` sees when it is not installed
    cfg = load_config(
        None, tiny_overrides(tiny_run_inputs, tmp_path / "o", "train.report_to=tensorboard,wandb")
    )
    with pytest.raises(UserError, match=r'pip install "aspo\[wandb\]"'):
        cfg.validate()
    code = (
        "import sys; sys.modules['wandb'] = None; sys.modules['peft'] = None; from aspo.cli import main; "
        "sys.exit(main(sys.argv[1:]))"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for extra, key in (("wandb", "train.report_to=wandb"), ("peft", "lora.rank=8")):
        result = subprocess.run(
            [sys.executable, "-c", code, "train", *tiny_overrides(tiny_run_inputs, tmp_path / extra), key],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
        )
        assert result.returncode == 2
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and f'pip install "aspo[{extra}]"' in lines[0], result.stderr
        assert not (tmp_path / extra).exists()  # refused before anything was written
