"""`aspo eval` end to end with a tiny random Qwen2 over the lab's character tokenizer (no download)."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

from aspo.cli import main

TINY = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    from aspo.lab import build_model, build_tokenizer

    tokenizer = build_tokenizer()
    model = build_model(tokenizer, seed=0, **TINY)
    path = tmp_path_factory.mktemp("tiny-model")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def problems(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "problems.jsonl"
    path.write_text(
        "".join(
            json.dumps({"id": f"p{i}", "prompt": f"{i}+{i}=", "answer": str(2 * i)}) + "\n" for i in range(5)
        )
    )
    return path


@pytest.fixture(scope="module")
def reward_file(tmp_path_factory) -> Path:
    # a reward the random model sometimes earns, so pass@k is not trivially 0
    path = tmp_path_factory.mktemp("reward") / "has_digit.py"
    path.write_text(
        "def has_digit(prompt, response, answer, **kw):\n"
        "    return float(any(c.isdigit() for c in response[:2]))\n"
    )
    return path


def _eval(model_dir, data, out, *extra) -> int:
    return main(
        [
            "eval",
            "--model",
            str(model_dir),
            "--data",
            str(data),
            "--n",
            "3",
            "--max-new-tokens",
            "4",
            "--temperature",
            "1.0",
            "--batch-size",
            "2",
            "--output",
            str(out),
            *extra,
        ]
    )


def _rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]


def _pass_at_k_brute(rewards: list[float], k: int) -> float:
    """Fraction of k-subsets with a correct sample (the definition the estimator is unbiased for)."""
    subsets = list(itertools.combinations(rewards, k))
    return sum(any(r >= 1.0 for r in s) for s in subsets) / len(subsets)


def test_eval_writes_samples_and_unbiased_summary(model_dir, problems, reward_file, tmp_path):
    out = tmp_path / "ev"
    assert _eval(model_dir, problems, out, "--reward", f"{reward_file}:has_digit") == 0
    rows = _rows(out)
    assert [(r["id"], r["sample"]) for r in rows] == [(f"p{i}", s) for i in range(5) for s in range(3)]
    for row in rows:
        assert row["reward"] == float(any(c.isdigit() for c in row["response"][:2]))
    summary = json.loads((out / "summary.json").read_text())
    per_problem = [[r["reward"] for r in rows if r["id"] == f"p{i}"] for i in range(5)]
    assert summary["avg@3"] == pytest.approx(sum(map(sum, per_problem)) / 15)
    assert summary["pass@1"] == pytest.approx(sum(_pass_at_k_brute(p, 1) for p in per_problem) / 5)
    assert summary["pass@3"] == pytest.approx(sum(_pass_at_k_brute(p, 3) for p in per_problem) / 5)
    assert 0 < summary["avg@3"] < 1, "the test reward should separate samples"
    assert "maj@3" not in summary  # answers of a custom reward are not comparable


@pytest.mark.parametrize("precision", ["bf16", "fp32", "auto"])
def test_eval_samples_in_the_precision_asked(model_dir, problems, reward_file, tmp_path, capsys, precision):
    out = tmp_path / "ev"
    extra = ("--reward", f"{reward_file}:has_digit", "--limit", "2", "--precision", precision)
    assert _eval(model_dir, problems, out, *extra) == 0
    err = capsys.readouterr().err
    if precision == "auto":  # this machine's flags decide; the choice and why are printed
        assert "aspo eval: precision fp32 (auto:" in err or "aspo eval: precision bf16 (auto:" in err
    else:
        assert f"aspo eval: precision {precision} (requested)" in err
    assert len(_rows(out)) == 6


def test_eval_resumes_to_the_same_samples(model_dir, problems, reward_file, tmp_path):
    out = tmp_path / "ev"
    args = ("--reward", f"{reward_file}:has_digit")
    assert _eval(model_dir, problems, out, *args) == 0
    full = (out / "samples.jsonl").read_text()
    # interrupted after one batch (2 problems x 3 samples) and in the middle of writing the next
    lines = full.splitlines(keepends=True)
    (out / "samples.jsonl").write_text("".join(lines[:8]) + lines[8][:10])
    (out / "summary.json").unlink()
    assert _eval(model_dir, problems, out, *args) == 0
    assert (out / "samples.jsonl").read_text() == full
    # finished: a rerun generates nothing and rewrites the same summary
    summary = (out / "summary.json").read_text()
    assert _eval(model_dir, problems, out, *args) == 0
    assert (out / "summary.json").read_text() == summary
    # other settings into the same directory are refused
    assert _eval(model_dir, problems, out, *args, "--seed", "1") == 2


def test_eval_math_records_answers_for_maj(model_dir, tmp_path):
    out = tmp_path / "ev"
    assert (
        main(
            [
                "eval",
                "--model",
                str(model_dir),
                "--data",
                "gsm8k",
                "--limit",
                "2",
                "--n",
                "2",
                "--max-new-tokens",
                "4",
                "--output",
                str(out),
            ]
        )
        == 0
    )
    summary = json.loads((out / "summary.json").read_text())
    assert summary["reward"] == "math" and "maj@2" in summary and summary["problems"] == 2
    assert all("answer" in row for row in _rows(out))


def test_eval_humaneval_through_the_sandbox(model_dir, tmp_path, model_code_sandbox):
    out = tmp_path / "ev"
    assert (
        main(
            [
                "eval",
                "--model",
                str(model_dir),
                "--data",
                "humaneval",
                "--limit",
                "2",
                "--n",
                "2",
                "--max-new-tokens",
                "4",
                "--output",
                str(out),
            ]
        )
        == 0
    )
    rows = _rows(out)
    assert len(rows) == 4 and all(r["reward"] == 0.0 for r in rows)  # 4 random characters are no program
    assert [r["id"] for r in rows[::2]] == ["HumanEval/0", "HumanEval/1"]


def test_eval_default_prompts_for_a_plain_checkpoint():
    from aspo.config import PromptConfig
    from aspo.lab import build_tokenizer
    from aspo.prompting import MATH_INSTRUCTION, eval_defaults, format_prompt

    tokenizer = build_tokenizer()
    record = {"prompt": "1+1=", "answer": "2", "a": 1}
    # no chat template: the bare prompt (a completion model), whatever the reward
    assert eval_defaults("math", [record], tokenizer) == PromptConfig()
    assert format_prompt(record, PromptConfig(template="Q {a}: {prompt}"), tokenizer) == "Q 1: 1+1="
    tokenizer.chat_template = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}</>{% endfor %}<a>"
    math_cfg = eval_defaults("math", [record], tokenizer)
    assert format_prompt(record, math_cfg, tokenizer) == f"<user>1+1=\n{MATH_INSTRUCTION}</><a>"
    assert format_prompt(record, PromptConfig(chat_template=False), tokenizer) == "1+1="
    code_cfg = eval_defaults("code", [{"prompt": "def f():", "entry_point": "f"}], tokenizer)
    assert format_prompt({"prompt": "def f():"}, code_cfg, tokenizer).startswith(
        "<user>Complete the following"
    )


def test_bad_arguments_are_clear_errors(model_dir, problems, tmp_path, capsys):
    assert main(["eval", "--model", str(tmp_path / "missing"), "--data", "gsm8k"]) == 2
    assert f"model path '{tmp_path / 'missing'}' does not exist" in capsys.readouterr().err
    assert main(["eval", "--model", str(model_dir), "--data", "nope"]) == 2
    assert "unknown benchmark 'nope'" in capsys.readouterr().err
    assert main(["eval", "--model", str(model_dir), "--data", str(problems)]) == 2
    assert "--reward is required" in capsys.readouterr().err
    assert main(["eval", "--model", str(model_dir), "--data", "gsm8k", "--n", "0"]) == 2
    assert "--n must be >= 1" in capsys.readouterr().err
    assert (
        main(
            [
                "eval",
                "--model",
                str(model_dir),
                "--data",
                str(problems),
                "--reward",
                "math",
                "--prompt-template",
                "{question}",
                "--output",
                str(tmp_path / "o"),
            ]
        )
        == 2
    )
    assert "names field 'question'" in capsys.readouterr().err


def test_math_answers_and_maj_use_the_rewards_extraction_and_equivalence(model_dir, tmp_path):
    from aspo.rewards.math import check_math

    data = tmp_path / "math.jsonl"
    data.write_text(
        json.dumps({"id": "a", "prompt": "3/4=", "answer": "0.75"})
        + "\n"
        + json.dumps({"id": "b", "prompt": "21+10=", "answer": "31"})
        + "\n"
    )
    out = tmp_path / "ev"
    args = [
        "eval",
        "--model",
        str(model_dir),
        "--data",
        str(data),
        "--reward",
        "math",
        "--n",
        "3",
        "--max-new-tokens",
        "4",
        "--output",
        str(out),
    ]
    assert main(args) == 0
    rows = _rows(out)
    gold = {"a": "0.75", "b": "31"}
    for row in rows:  # each written answer is the one the reward extracted
        assert row["answer"] == check_math(row["response"], gold[row["id"]]).answer
    # the same evaluation, as if the model had answered these (rewards from the real reward): rerunning
    # the finished evaluation recomputes the summary from samples.jsonl
    responses = {
        "a": ["\\boxed{0.5}", "so \\boxed{3/4}", "The answer is 0.75."],
        "b": ["21 + 10 = \\boxed{}", "#### 31", "\\boxed{31.0} dollars"],
    }
    for row in rows:
        result = check_math(responses[row["id"]][row["sample"]], gold[row["id"]])
        row.update(response=responses[row["id"]][row["sample"]], reward=result.reward, answer=result.answer)
    (out / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(args) == 0
    assert [r["reward"] for r in rows] == [0.0, 1.0, 1.0, 0.0, 1.0, 1.0]
    assert all(r["answer"] is not None for r in rows if r["reward"] == 1.0)
    summary = json.loads((out / "summary.json").read_text())
    # "\frac{3}{4}" and "0.75" are one answer for the reward, so they outvote "0.5" (by text they would tie,
    # and the first, wrong, answer would win); the empty box is no vote
    assert summary["maj@3"] == 1.0 and summary["pass@3"] == 1.0


def _err(capsys, *args) -> str:
    """`aspo eval ARGS` must exit 2; its stderr."""
    capsys.readouterr()
    assert main(["eval", *map(str, args)]) == 2
    return capsys.readouterr().err


def test_a_missing_data_file_or_benchmark_is_named(model_dir, tmp_path, capsys):
    missing = tmp_path / "test.jsonl"
    err = _err(capsys, "--model", model_dir, "--data", missing, "--reward", "number")
    assert err == f"aspo eval: error: data file '{missing}' does not exist\n"
    err = _err(capsys, "--model", model_dir, "--data", missing, "--reward", "numbr")  # the name first
    assert err.startswith("aspo eval: error: unknown reward 'numbr' (did you mean 'number'?)")
    err = _err(capsys, "--model", model_dir, "--data", "gsm8kk")
    assert err == (
        "aspo eval: error: unknown benchmark 'gsm8kk' (did you mean 'gsm8k'?): valid names are aime24, "
        "amc23, "
        "gsm8k, minerva_math, humaneval, lab:TASK[:N], or a path to a .jsonl / .parquet file or a datasets "
        "directory\n"
    )


def test_a_record_without_an_answer_is_rejected_before_the_model_loads(tmp_path, capsys):
    data = tmp_path / "p.jsonl"
    data.write_text('{"id": "a", "prompt": "1+1=", "answer": "2"}\n{"id": "b", "prompt": "2+2="}\n')
    (tmp_path / "not-a-model").mkdir()  # would fail to load: the data is named first
    err = _err(capsys, "--model", tmp_path / "not-a-model", "--data", data, "--reward", "number")
    assert err == (
        f"aspo eval: error: {data}:2: record has no 'answer' field (reward 'number' compares the response "
        "with it)\n"
    )


@pytest.fixture(scope="module")
def raising_reward(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("reward") / "needs_solution.py"
    path.write_text(
        "def some(prompt, response, answer, **kw):\n"
        "    if answer == '0':\n"
        "        raise KeyError('solution')\n"
        "    return 0.0\n\n"
        "def every(prompt, response, answer, **kw):\n"
        "    raise KeyError('solution')\n"
    )
    return path


def test_unscored_samples_are_counted_and_most_unscored_is_an_error(
    model_dir, problems, raising_reward, tmp_path, capsys
):
    # one problem of five cannot be scored: a warning line, exit 0
    capsys.readouterr()
    assert _eval(model_dir, problems, tmp_path / "some", "--reward", f"{raising_reward}:some") == 0
    err = capsys.readouterr().err
    assert (
        "aspo eval: warning: 3 of 15 samples could not be scored and count as 0 (first: problem p0 sample 0: "
        "KeyError: 'solution')\n" in err
    )
    # none can: exit 2 with the first error, the summary still written
    out = tmp_path / "every"
    capsys.readouterr()
    assert _eval(model_dir, problems, out, "--reward", f"{raising_reward}:every") == 2
    assert capsys.readouterr().err.endswith(
        "aspo eval: error: 15 of 15 samples could not be scored (they count as 0, so the figures say "
        "nothing); "
        f"first: problem p0 sample 0: KeyError: 'solution'. Samples in {out / 'samples.jsonl'}\n"
    )
    assert json.loads((out / "summary.json").read_text())["errors"] == 15


def _run_checkpoint(model_dir: Path, root: Path, tree: dict) -> Path:
    """``model_dir`` as checkpoint step-1 of a run whose config.yaml is ``tree``."""
    import shutil

    import yaml

    ckpt = root / "checkpoints" / "step-1"
    shutil.copytree(model_dir, ckpt)
    (root / "config.yaml").write_text(yaml.safe_dump(tree))
    return ckpt


LAB_PROMPT = {"template": "{prompt}", "chat_template": False, "system": None, "instruction": ""}


def test_a_lab_checkpoint_on_another_lab_task_is_named(model_dir, tmp_path, capsys, monkeypatch):
    tree = {
        "model": "tiny",
        "task": "arithmetic",
        "reward": None,
        "data": {"train": None},
        "prompt": LAB_PROMPT,
    }
    ckpt = _run_checkpoint(model_dir, tmp_path / "run", tree)
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert main(["eval", "--model", str(ckpt), "--data", "lab:add:2", "--max-new-tokens", "4"]) == 0
    out, err = capsys.readouterr()
    assert (
        "aspo eval: warning: the checkpoint was trained on task='arithmetic'; --data lab:add:2 is task "
        "'add', "
        "which it never saw (--data lab:arithmetic evaluates what it learned)\n" in err
    )
    assert err.count("warning") == 1  # its other reward (add's `number`) follows from the other task
    assert (tmp_path / "runs" / "eval-lab-add-2" / "summary.json").is_file()  # no colons in the folder name
    capsys.readouterr()
    assert main(["eval", "--model", str(ckpt), "--data", "lab:arithmetic:2", "--max-new-tokens", "4"]) == 0
    assert "warning" not in capsys.readouterr().err  # the task it trained on: nothing to say


def test_a_chat_checkpoint_without_its_template_is_named(model_dir, problems, reward_file, tmp_path, capsys):
    from transformers import AutoTokenizer

    chat = tmp_path / "chat"
    import shutil

    shutil.copytree(model_dir, chat)
    tokenizer = AutoTokenizer.from_pretrained(chat)
    tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}="
    tokenizer.save_pretrained(chat)
    capsys.readouterr()
    assert (
        _eval(
            chat, problems, tmp_path / "plain", "--reward", f"{reward_file}:has_digit", "--no-chat-template"
        )
        == 0
    )
    assert (
        "aspo eval: warning: the tokenizer has a chat template, but prompts are plain text "
        "(--no-chat-template); "
        "a chat model answers its own template's prompts\n" in capsys.readouterr().err
    )
    # a run that trained with the template, evaluated without it
    tree = {"model": "x", "task": "arithmetic", "reward": "number", "data": {"train": "t.jsonl"}}
    ckpt = _run_checkpoint(chat, tmp_path / "run", {**tree, "prompt": {**LAB_PROMPT, "chat_template": True}})
    capsys.readouterr()
    assert _eval(ckpt, problems, tmp_path / "run-plain", "--reward", "math", "--no-chat-template") == 0
    err = capsys.readouterr().err
    assert "aspo eval: warning: prompts are formatted unlike the run's: chat_template True -> False\n" in err
    assert "aspo eval: warning: the run was scored with reward='number'; this evaluation uses 'math'\n" in err
