"""`aspo score` end to end through the CLI dispatcher, on real benchmark records."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from aspo.cli import main
from aspo.evalsets import load_benchmark

pytestmark = pytest.mark.usefixtures("trusted_code_sandbox")


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
    assert (
        main(
            [
                "score",
                "--reward",
                "math",
                "--input",
                str(_write(tmp_path / "in.jsonl", records)),
                "--output",
                str(out),
            ]
        )
        == 0
    )
    scored = _read(out)
    assert [r["id"] for r in scored] == [r["id"] for r in records]
    assert [r["reward"] for r in scored] == [1.0] * 3 + [0.0, 0.0] + [1.0] * 15
    assert "error" in scored[4] and "error" not in scored[3]
    summary = capsys.readouterr().out
    assert "20 records" in summary and "18/20" in summary and "errors: 1" in summary


def test_score_code_with_both_test_formats(tmp_path, capsys):
    he = load_benchmark("humaneval")[:3]
    records = [
        {
            "prompt": p["prompt"],
            "response": p["canonical_solution"],
            "test": p["test"],
            "entry_point": p["entry_point"],
        }
        for p in he
    ]
    records.append(
        {
            "response": "```python\nprint(int(input()) * 2)\n```",
            "tests": {"inputs": ["4\n"], "outputs": ["8\n"]},
        }
    )
    records.append(
        {"response": "while True: pass", "tests": {"inputs": ["4\n"], "outputs": ["8\n"]}, "time_limit": 1}
    )
    out = tmp_path / "out.jsonl"
    assert (
        main(
            [
                "score",
                "--reward",
                "code",
                "--input",
                str(_write(tmp_path / "in.jsonl", records)),
                "--output",
                str(out),
                "--workers",
                "2",
            ]
        )
        == 0
    )
    scored = _read(out)
    assert [r["reward"] for r in scored] == [1.0, 1.0, 1.0, 1.0, 0.0]
    assert "timeout" in scored[4]["error"]


def test_score_user_reward_file(tmp_path):
    reward_file = tmp_path / "my_reward.py"
    reward_file.write_text("def length(prompt, response, answer, **kw):\n    return len(response)\n")
    out = tmp_path / "out.jsonl"
    src = _write(tmp_path / "in.jsonl", [{"response": "abc"}, {"response": ""}])
    assert (
        main(["score", "--reward", f"{reward_file}:length", "--input", str(src), "--output", str(out)]) == 0
    )
    assert [r["reward"] for r in _read(out)] == [3.0, 0.0]


def test_bad_input_is_a_clear_error(tmp_path, capsys):
    src = tmp_path / "in.jsonl"
    src.write_text('{"response": "x", "answer": "1"}\n{"answer": "2"}\n')
    assert (
        main(["score", "--reward", "math", "--input", str(src), "--output", str(tmp_path / "o.jsonl")]) == 2
    )
    assert "in.jsonl:2" in capsys.readouterr().err
    src.write_text('{"response": "x"\n')
    assert (
        main(["score", "--reward", "math", "--input", str(src), "--output", str(tmp_path / "o.jsonl")]) == 2
    )
    assert "not valid JSON" in capsys.readouterr().err
    assert (
        main(["score", "--reward", "nope", "--input", str(src), "--output", str(tmp_path / "o.jsonl")]) == 2
    )
    assert "unknown reward 'nope'" in capsys.readouterr().err
    assert main(["score", "--reward", "math"]) == 2
    assert "--input" in capsys.readouterr().err


def test_user_reward_that_hangs_or_crashes_is_bounded_and_counted(tmp_path, capsys):
    spec = f"{Path(__file__).parent / 'data' / 'rewards.py'}:hangs_or_dies"
    responses = ["spin", "ok", "sleep", "die", "raise", "ok"]
    out = tmp_path / "out.jsonl"
    src = _write(tmp_path / "in.jsonl", [{"response": r} for r in responses])
    assert (
        main(["score", "--reward", spec, "--input", str(src), "--output", str(out), "--reward-timeout", "1"])
        == 0
    )
    scored = _read(out)
    assert [r["reward"] for r in scored] == [0.0, 1.0, 0.0, 0.0, 0.0, 1.0]  # the run went on after each
    errors = [r.get("error") for r in scored]
    assert "did not return within 1s" in errors[0] and "did not return within 1s" in errors[2]
    assert "ended its process (exit status 3)" in errors[3] and errors[4] == "ValueError: bad response"
    assert errors[1] is None and errors[5] is None
    assert "errors: 4 (of which could not run: 0)" in capsys.readouterr().out


def test_code_without_a_sandbox_is_refused_not_scored(no_bwrap, tmp_path, capsys):
    out = tmp_path / "out.jsonl"
    src = _write(
        tmp_path / "in.jsonl", [{"response": "print(1)", "tests": {"inputs": [""], "outputs": ["1"]}}]
    )
    assert main(["score", "--reward", "code", "--input", str(src), "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert "refusing to run model-written programs" in err and "ASPO_SANDBOX=unsafe" in err
    assert not out.exists()  # nothing scored as wrong: nothing written


def test_checks_that_could_not_run_are_marked_and_stop(tmp_path, capsys, monkeypatch):
    # the sandbox's interpreter missing: every check fails before the harness starts
    from aspo.rewards.sandbox import host

    host.isolation()  # chosen (and probed) with the working interpreter: the failure comes mid-run
    monkeypatch.setenv("ASPO_SANDBOX_PYTHON", "/nonexistent/python3")
    monkeypatch.setenv("ASPO_SANDBOX_REUSE", "0")
    host.sandbox_python.cache_clear()
    out = tmp_path / "out.jsonl"
    src = _write(
        tmp_path / "in.jsonl", [{"response": "print(1)", "tests": {"inputs": [""], "outputs": ["1"]}}] * 2
    )
    try:
        assert main(["score", "--reward", "code", "--input", str(src), "--output", str(out)]) == 2
    finally:
        host.sandbox_python.cache_clear()
    scored = _read(out)  # written first: the error field says what happened to each record
    assert [r["reward"] for r in scored] == [0.0, 0.0]
    assert all(r["error"].startswith("infrastructure: ") for r in scored)
    captured = capsys.readouterr()
    assert (
        "(of which could not run: 2)" in captured.out and "2 of 2 reward checks could not run" in captured.err
    )
