"""Prompt data: records with ``prompt`` and ``answer`` from JSONL, Parquet or a `datasets` directory.

A record is a plain dict. ``prompt`` and ``answer`` are required for training data; every other field is
kept and passed to the reward function as a keyword argument (``tests``, ``entry_point``, ...).

Files users already have are read as they are:

* JSONL, one object per line;
* Parquet (read with pyarrow), including verl's RLHF layout: ``prompt`` a chat message list
  ``[{role, content}, ...]``, ``reward_model.ground_truth`` the answer, ``data_source``, ``extra_info``;
* a directory written by ``datasets.Dataset.save_to_disk`` (one split; of a ``DatasetDict``, name the
  split's subdirectory).

In verl's layout ``answer`` is taken from ``reward_model.ground_truth``; all fields stay in the record. A
chat-message-list prompt is formatted through the tokenizer's chat template (see ``aspo.prompting``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

from aspo.errors import UserError


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Read a JSONL file; a missing file or a malformed line raises UserError naming ``file:line``."""
    if not os.path.isfile(path):
        raise UserError(f"data file {str(path)!r} does not exist")
    records = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise UserError(f"{path}:{lineno}: not valid JSON ({err.msg})") from err
            if not isinstance(record, dict):
                raise UserError(f"{path}:{lineno}: expected a JSON object, got {type(record).__name__}")
            records.append(record)
    return records


def _read_parquet(path: str) -> list[dict[str, Any]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path).to_pylist()
    except (pa.ArrowException, OSError) as err:
        raise UserError(f"{path}: not a readable Parquet file ({type(err).__name__}: {err})") from err


def _read_saved_dataset(path: str) -> list[dict[str, Any]]:
    import datasets

    try:
        loaded = datasets.load_from_disk(path)
    except (FileNotFoundError, ValueError, OSError) as err:
        raise UserError(
            f"{path}: a directory, but not one written by datasets' save_to_disk ({err})"
        ) from err
    if isinstance(loaded, datasets.DatasetDict):
        splits = ", ".join(os.path.join(path, s) for s in loaded)
        raise UserError(f"{path} holds a DatasetDict; name one split's directory: {splits}")
    return [dict(row) for row in loaded]


def read_records(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Records of a JSONL file, a Parquet file (``.parquet``) or a `datasets` save_to_disk directory."""
    path = str(path)
    if os.path.isdir(path):
        return [_from_verl(r) for r in _read_saved_dataset(path)]
    if not os.path.isfile(path):
        raise UserError(f"data file {path!r} does not exist")
    if path.endswith(".parquet"):
        return [_from_verl(r) for r in _read_parquet(path)]
    return read_jsonl(path)


def _from_verl(record: dict[str, Any]) -> dict[str, Any]:
    """verl's RLHF layout: the answer lives in ``reward_model.ground_truth``."""
    reward_model = record.get("reward_model")
    if (
        "answer" not in record
        and isinstance(reward_model, dict)
        and reward_model.get("ground_truth") is not None
    ):
        return {**record, "answer": reward_model["ground_truth"]}
    return record


def _where(source: str, index: int) -> str:
    return f"{source}:{index}" if source.endswith((".jsonl", ".json")) else f"{source}, row {index}"


def require_fields(records: Sequence[dict[str, Any]], fields: Sequence[str], source: str) -> None:
    """Every record must carry ``fields``, and a chat prompt must be a list of {role, content}; the first
    offender is named by file and row (``file:N`` for JSONL)."""
    if not records:
        raise UserError(f"{source}: no records")
    for i, record in enumerate(records, start=1):
        missing = [f for f in fields if record.get(f) is None]
        if missing:
            named = [
                "reward_model.ground_truth" if m == "answer" and "reward_model" in record else m
                for m in missing
            ]
            raise UserError(f"{_where(source, i)}: record has no {', '.join(repr(m) for m in named)} field")
        prompt = record.get("prompt")
        if isinstance(prompt, (list, tuple)):
            bad = (
                next(
                    (
                        m
                        for m in prompt
                        if not isinstance(m, dict)
                        or not isinstance(m.get("role"), str)
                        or not isinstance(m.get("content"), str)
                    ),
                    None,
                )
                if prompt
                else "an empty list"
            )
            if bad is not None:
                raise UserError(
                    f"{_where(source, i)}: 'prompt' is a chat message list, but {bad!r:.120} is not "
                    "a {role, content} message"
                )
        elif "prompt" in fields and not isinstance(prompt, str):
            raise UserError(
                f"{_where(source, i)}: 'prompt' must be text or a chat message list, "
                f"got {type(prompt).__name__}"
            )


def load_prompt_data(path: str, fields: Sequence[str] = ("prompt", "answer")) -> list[dict[str, Any]]:
    records = read_records(path)
    require_fields(records, fields, path)
    return records
