import subprocess
import sys

import pytest

from aspo.cli import main


def test_help_lists_every_command(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in ("train", "eval", "score", "compare"):
        assert name in out


def test_unknown_command_is_a_clear_error(capsys):
    assert main(["trian"]) == 2
    err = capsys.readouterr().err
    assert "unknown command 'trian'" in err and "train" in err


def test_module_entry_point_runs():
    out = subprocess.run(
        [sys.executable, "-m", "aspo", "--version"], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip()


VALID_REWARDS = "arithmetic, code, countdown, math, number, or path/file.py:function"


def _train_error(capsys, *args):
    """`aspo train ARGS` in this process: the exit status must be 2; returns stderr."""
    capsys.readouterr()
    assert main(["train", *args]) == 2
    return capsys.readouterr().err


@pytest.mark.parametrize(
    "args, message",
    [
        # the unknown reward, not the data.train it would otherwise need
        (["reward=numbr"], f"unknown reward 'numbr' (did you mean 'number'?); valid names: {VALID_REWARDS}"),
        # the unknown reward before the missing data file
        (
            ["reward=numbr", "data.train=no.jsonl"],
            f"unknown reward 'numbr' (did you mean 'number'?); valid names: {VALID_REWARDS}",
        ),
        (
            ["reward=./no_such.py:score"],
            "reward file './no_such.py' does not exist (reward spec "
            "'./no_such.py:score', expected path/file.py:function)",
        ),
        (["task=ad", "reward=number"], "unknown lab task 'ad'; valid: add, arithmetic, code, countdown"),
        (
            ["algorithm.loss=grop", "data.train=no.jsonl"],
            "algorithm.loss='grop' is unknown (did you mean "
            "'grpo'?); valid names: aspo, aspo_flip_only, cispo, clip_cov, dapo, grpo, gspo, kl_cov, no_is, "
            "ppo, sapo",
        ),
        (
            ["algorithm.advantage=rlo", "rollout.n=0"],
            "algorithm.advantage='rlo' is unknown (did you mean "
            "'rloo'?); valid names: dr_grpo, grpo, reinforce_plus_plus_baseline, rloo",
        ),
        (
            ["model=./no/such/ckpt", "data.train=no.jsonl"],
            "model path './no/such/ckpt' does not exist "
            "(expected a local Hugging Face checkpoint directory, a .gguf file, or a known model name: "
            "smollm2-135m-instruct)",
        ),
        (["reward=number", "data.train=no.jsonl"], "data.train file 'no.jsonl' does not exist"),
        (["train.on_no_signal=quiet"], "train.on_no_signal='quiet' must be warn, stop or ignore"),
    ],
)
def test_train_names_the_real_problem_first(args, message, capsys):
    assert _train_error(capsys, *args) == f"aspo train: error: {message}\n"


def test_train_checks_the_data_before_loading_the_model(tmp_path, capsys):
    # the model directory cannot load; the record without an answer is the first thing said
    (tmp_path / "model").mkdir()
    data = tmp_path / "train.jsonl"
    data.write_text('{"prompt": "1+1=", "answer": "2"}\n{"prompt": "2+2="}\n')
    err = _train_error(
        capsys,
        f"model={tmp_path / 'model'}",
        f"data.train={data}",
        "reward=number",
        f"output_dir={tmp_path / 'o'}",
    )
    assert err.endswith(f"aspo train: error: {data}:2: record has no 'answer' field\n")
    assert "cannot load" not in err


def test_a_transposed_objective_name_is_suggested(capsys):
    assert _train_error(capsys, "algorithm.loss=apso") == (
        "aspo train: error: algorithm.loss='apso' is unknown (did you mean 'aspo'?); valid names: aspo, "
        "aspo_flip_only, cispo, clip_cov, dapo, grpo, gspo, kl_cov, no_is, ppo, sapo\n"
    )
