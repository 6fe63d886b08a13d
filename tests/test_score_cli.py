"""`aspo score` end to end through the CLI dispatcher, on real benchmark records."""

from __future__ import annotations

import json

from aspo.benchmarks import load_benchmark
from aspo.cli import main


def _write(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def _read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_score_math(tmp_path, capsys):
    gsm = load_benchmark("gsm8k")[:20]
    records = [{"id": r["id"], "response": r["solution"], "answer": r["answer"]} for r in gsm]
    records[3]["response"] = "I think it is \\boxed{-1}"
    records[4]["answer"] = None  # unusable gold: reward 0 with an error, the run goes on
    out = tmp_path / "out.jsonl"
    assert main(["score", "--reward", "math", "--input", str(_write(tmp_path / "in.jsonl", records)),
                 "--output", str(out)]) == 0
    scored = _read(out)
    assert [r["id"] for r in scored] == [r["id"] for r in records]
    assert [r["reward"] for r in scored] == [1.0] * 3 + [0.0, 0.0] + [1.0] * 15
    assert "error" in scored[4] and "error" not in scored[3]
    summary = capsys.readouterr().out
    assert "20 records" in summary and "18/20" in summary and "errors: 1" in summary


def test_score_code_with_both_test_formats(tmp_path, capsys):
    he = load_benchmark("humaneval")[:3]
    records = [{"prompt": p["prompt"], "response": p["canonical_solution"], "test": p["test"],
                "entry_point": p["entry_point"]} for p in he]
    records.append({"response": "```python\nprint(int(input()) * 2)\n```",
                    "tests": {"inputs": ["4\n"], "outputs": ["8\n"]}})
    records.append({"response": "while True: pass", "tests": {"inputs": ["4\n"], "outputs": ["8\n"]},
                    "time_limit": 1})
    out = tmp_path / "out.jsonl"
    assert main(["score", "--reward", "code", "--input", str(_write(tmp_path / "in.jsonl", records)),
                 "--output", str(out), "--workers", "2"]) == 0
    scored = _read(out)
    assert [r["reward"] for r in scored] == [1.0, 1.0, 1.0, 1.0, 0.0]
    assert "timeout" in scored[4]["error"]


def test_score_user_reward_file(tmp_path):
    reward_file = tmp_path / "my_reward.py"
    reward_file.write_text("def length(prompt, response, answer, **kw):\n    return len(response)\n")
    out = tmp_path / "out.jsonl"
    src = _write(tmp_path / "in.jsonl", [{"response": "abc"}, {"response": ""}])
    assert main(["score", "--reward", f"{reward_file}:length", "--input", str(src), "--output", str(out)]) == 0
    assert [r["reward"] for r in _read(out)] == [3.0, 0.0]


def test_bad_input_is_a_clear_error(tmp_path, capsys):
    src = tmp_path / "in.jsonl"
    src.write_text('{"response": "x", "answer": "1"}\n{"answer": "2"}\n')
    assert main(["score", "--reward", "math", "--input", str(src), "--output", str(tmp_path / "o.jsonl")]) == 2
    assert "in.jsonl:2" in capsys.readouterr().err
    src.write_text('{"response": "x"\n')
    assert main(["score", "--reward", "math", "--input", str(src), "--output", str(tmp_path / "o.jsonl")]) == 2
    assert "not valid JSON" in capsys.readouterr().err
    assert main(["score", "--reward", "nope", "--input", str(src), "--output", str(tmp_path / "o.jsonl")]) == 2
    assert "unknown reward 'nope'" in capsys.readouterr().err
    assert main(["score", "--reward", "math"]) == 2
    assert "--input" in capsys.readouterr().err
