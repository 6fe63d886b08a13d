"""Prompt data: JSONL / Parquet records with ``prompt`` and ``answer``, or the lab's generated tasks.

A record is a plain dict. ``prompt`` and ``answer`` are required for training data; every other field is
kept and passed to the reward function as a keyword argument (``tests``, ``entry_point``, ...).
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


def read_records(path: str) -> list[dict[str, Any]]:
    """JSONL (``.jsonl``/``.json`` lines) or Parquet (``.parquet``, read with `datasets`)."""
    if not os.path.isfile(path):
        raise UserError(f"data file {path!r} does not exist")
    if path.endswith(".parquet"):
        import datasets

        return [dict(row) for row in datasets.Dataset.from_parquet(path)]
    return read_jsonl(path)


def require_fields(records: Sequence[dict[str, Any]], fields: Sequence[str], source: str) -> None:
    """Every record must carry ``fields``; name the first offender as ``source:line``."""
    if not records:
        raise UserError(f"{source}: no records")
    for i, record in enumerate(records, start=1):
        missing = [f for f in fields if f not in record]
        if missing:
            raise UserError(f"{source}:{i}: record has no {', '.join(repr(m) for m in missing)} field")


def load_prompt_data(path: str, fields: Sequence[str] = ("prompt", "answer")) -> list[dict[str, Any]]:
    records = read_records(path)
    require_fields(records, fields, path)
    return records


def format_prompt(record: dict[str, Any], template: str = "{prompt}", tokenizer: Any = None,
                  chat_template: bool = False) -> str:
    """The text the policy sees. With ``chat_template`` the prompt becomes one user turn."""
    if chat_template and tokenizer is not None and getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template([{"role": "user", "content": str(record["prompt"])}],
                                             tokenize=False, add_generation_prompt=True)
    try:
        return template.format(**record)
    except KeyError as err:
        raise UserError(f"data.prompt_template names field {err} which a record does not have") from err


def write_jsonl(path: str, rows: Sequence[dict[str, Any]], mode: str = "a") -> None:
    with open(path, mode, encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
