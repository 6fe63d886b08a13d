"""End-to-end `aspo train` on a tiny local checkpoint: run directory, resume after SIGKILL, bad input."""

import json
import os
import signal
import subprocess
import sys
import time
import warnings

import pytest
from conftest import DATA, tiny_overrides

from aspo.config import load_config
from aspo.errors import SandboxUnavailable
from aspo.report.metrics import read_metrics
from aspo.trainer import Trainer

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def run_cli(*args, timeout=240):
    return subprocess.run(
        [sys.executable, "-m", "aspo", *args], capture_output=True, text=True, timeout=timeout, env=ENV
    )


def comparable(rows):
    """Every metric except wall-time / speed ones, which differ between runs."""
    return [{k: v for k, v in r.items() if not k.startswith(("time/", "perf/"))} for r in rows]


@pytest.fixture(scope="module")
def finished_run(tiny_run_inputs, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "r"
    summary = Trainer(load_config(None, tiny_overrides(tiny_run_inputs, out)), progress=False).run()
    return out, summary


def test_run_directory_is_complete(finished_run):
    out, summary = finished_run
    assert summary["steps"] == 3
    assert (out / "config.yaml").is_file()
    rows = read_metrics(out)
    assert [r["step"] for r in rows] == [0, 1, 2, 3]
    evals = [r for r in rows if "eval/pass@1" in r]
    assert [r["step"] for r in evals] == [0, 2, 3]  # before training, every 2 steps, at the end
    assert all(0 <= r["eval/pass@1"] <= r["eval/pass@k"] <= 1 for r in evals)
    train_rows = rows[1:]
    for key in (
        "reward/mean",
        "actor/entropy",
        "actor/clipfrac/pos",
        "actor/dualclip/neg",
        "actor/ppo_kl",
        "groups/valid",
        "groups/solve_all",
        "groups/solve_none",
        "response/length_mean",
        "time/step",
        "perf/tokens_per_s",
        "actor/grad_norm",
    ):
        assert all(key in r for r in train_rows), key
    # 2 mini-batches x 2 epochs = 4 optimizer steps per rollout
    assert all(r["actor/optimizer_steps"] == 4 for r in train_rows)
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    for name in ("reward", "eval_pass", "entropy", "clip_fraction", "dual_clip_fraction", "response_length"):
        assert (out / "plots" / f"{name}.png").stat().st_size > 1000
    samples = [json.loads(line) for line in open(out / "samples.jsonl")]
    assert {s["step"] for s in samples} == {0, 2, 3} and all(
        "response" in s and "reward" in s for s in samples
    )
    ckpts = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert ckpts == ["step-2", "step-3"]
    for f in (
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "optimizer.pt",
        "scheduler.pt",
        "rng.pt",
        "trainer_state.json",
    ):
        assert (out / "checkpoints" / "step-3" / f).is_file(), f


def test_a_run_with_signal_neither_warns_nor_writes_training_samples(tiny_run_inputs, tmp_path):
    out = tmp_path / "normal"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        Trainer(
            load_config(None, tiny_overrides(tiny_run_inputs, out, "train.eval_every=0")), progress=False
        ).run()
    assert not [w for w in caught if "learning signal" in str(w.message)]
    rows = [r for r in read_metrics(out) if "groups/with_signal" in r]
    assert len(rows) == 3 and all(0 < r["groups/with_signal"] <= r["groups/sampled"] == 4 for r in rows)
    samples = [json.loads(line) for line in open(out / "samples.jsonl")]
    assert {s["step"] for s in samples} == {0, 3} and not any(s.get("split") == "train" for s in samples)


def test_a_reward_that_never_scores_warns_with_the_responses_it_got(tiny_run_inputs, tmp_path):
    """The lab's arithmetic data scored by `number`: no response of the random policy states the sum, every
    group is all 0, and the third step warns once with responses, rewards, the format and the counts."""
    out = tmp_path / "mismatch"
    cfg = load_config(None, tiny_overrides(tiny_run_inputs, out, "reward=number", "train.steps=4"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        Trainer(cfg, progress=False).run()
    found = [str(w.message) for w in caught if "learning signal" in str(w.message)]
    assert len(found) == 1, found
    message = found[0]
    lines = message.splitlines()
    assert lines[0] == (
        "no group had a learning signal in steps 1-3 (every response scored 0: the reward may not read the "
        "answers in the format the model writes); nothing is being learned."
    )
    assert (
        lines[1] == "  groups: 12 sampled, 12 with equal rewards (groups/solve_none 12, groups/solve_all 0, "
        "groups/valid 0)"
    )
    assert lines[2].startswith(
        "  reward 'number' expects: 1.0 iff response states exactly one final number equal to answer"
    )
    samples = [json.loads(line) for line in open(out / "samples.jsonl")]
    train = [s for s in samples if s.get("split") == "train"]
    assert {s["step"] for s in train} == {1, 2, 3} and all(s["reward"] == 0.0 for s in train)
    quoted = [line for line in lines if line.startswith("  step ")]
    assert len(quoted) == 4
    for line in quoted:  # each quoted response is one written to samples.jsonl, with the reward it got
        assert any(repr(s["response"])[:100] in line and line.endswith("got reward 0") for s in train), line
    assert lines[-2] == f"  more responses in {out / 'samples.jsonl'} (split 'train')"
    assert lines[-1] == "  train.on_no_signal=stop stops the run here instead of warning"


def test_a_reward_that_always_scores_one_stops_with_on_no_signal_stop(tiny_run_inputs, tmp_path):
    out = tmp_path / "ones"
    args = tiny_overrides(tiny_run_inputs, out, f"reward={DATA / 'rewards.py'}:always_one", "train.steps=6")
    result = run_cli("train", *args, "train.on_no_signal=stop")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert (
        "aspo train: error: no group had a learning signal in steps 1-3 (every response scored 1: the reward "
        "accepts anything, or the task is already solved (a harder task or a stricter reward gives signal)); "
        "nothing is being learned." in result.stderr
    )
    assert (
        f"  reward '{DATA / 'rewards.py'}:always_one' expects: Accepts anything: every group is solved, "
        "so no group has a learning signal. [aspo_user_reward_rewards.always_one]\n" in result.stderr
    )
    assert "stopped at step 3 (train.on_no_signal=stop)" in result.stderr
    assert [r["step"] for r in read_metrics(out)] == [0, 1, 2, 3]  # it stopped there


def test_progress_line_says_when_a_step_has_no_signal():
    from aspo.report.signal import signal_note

    assert signal_note({"groups/sampled": 16, "groups/with_signal": 0, "groups/solve_none": 16}) == (
        "none (16/16 all 0)"
    )
    assert (
        signal_note({"groups/sampled": 4, "groups/with_signal": 0, "groups/solve_all": 4})
        == "none (4/4 all 1)"
    )
    assert (
        signal_note({"groups/sampled": 4, "groups/with_signal": 0, "groups/solve_all": 1})
        == "none (4/4 equal)"
    )
    assert signal_note({"groups/sampled": 4, "groups/with_signal": 1}) is None


def test_summary_prints_the_run_directory_on_one_line_and_what_it_holds(finished_run, capsys):
    from aspo.report.console import print_summary

    out = finished_run[0]
    capsys.readouterr()
    print_summary(out, 12.0)
    lines = capsys.readouterr().out.splitlines()
    assert any("held-out pass@2 " in line for line in lines)  # k = eval.n
    where = lines.index(f"run directory: {out}")  # whole, however long, for copying
    assert lines[where + 1 :] == [
        "  metrics:     metrics.jsonl",
        "  plots:       plots/*.png",
        "  samples:     samples.jsonl",
        "  checkpoints: checkpoints/step-2, checkpoints/step-3",
        f"  TensorBoard: tensorboard --logdir {out / 'tensorboard'}",
    ]


def test_checkpoint_is_a_loadable_model(finished_run):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = finished_run[0] / "checkpoints" / "step-3"
    AutoModelForCausalLM.from_pretrained(path)
    AutoTokenizer.from_pretrained(path)


def test_existing_run_is_never_overwritten(finished_run, tiny_run_inputs):
    out = finished_run[0]
    result = run_cli("train", *tiny_overrides(tiny_run_inputs, out))
    assert (
        result.returncode == 2 and "already holds a run" in result.stderr and "Traceback" not in result.stderr
    )


def test_resume_after_sigkill_reproduces_the_uninterrupted_run(tiny_run_inputs, tmp_path):
    args = ["train.steps=4", "train.eval_every=1", "train.threads=2"]  # several threads: still exact
    whole = tmp_path / "whole"
    assert run_cli("train", *tiny_overrides(tiny_run_inputs, whole, *args)).returncode == 0
    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "aspo", "train", *tiny_overrides(tiny_run_inputs, killed, *args)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=ENV,
    )
    deadline = time.time() + 240
    while not (killed / "checkpoints" / "step-2").exists():
        assert proc.poll() is None and time.time() < deadline, "run ended before its step-2 checkpoint"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "checkpoints" / "step-4").exists()
    resumed = run_cli("train", *tiny_overrides(tiny_run_inputs, killed, *args, "resume=true"))
    assert resumed.returncode == 0, resumed.stderr
    want, got = comparable(read_metrics(whole)), comparable(read_metrics(killed))
    assert [r["step"] for r in got] == [0, 1, 2, 3, 4]
    assert got == want


def test_a_raising_reward_scores_zero_and_training_goes_on(tiny_run_inputs, tmp_path):
    out = tmp_path / "flaky"
    cfg = load_config(
        None,
        tiny_overrides(
            tiny_run_inputs, out, f"reward={DATA / 'rewards.py'}:flaky", "train.steps=2", "train.plots=false"
        ),
    )
    Trainer(cfg, progress=False).run()
    assert not (out / "plots").exists()
    rows = [r for r in read_metrics(out) if "reward/errors" in r]
    assert len(rows) == 2 and sum(r["reward/errors"] for r in rows) > 0


@pytest.mark.parametrize(
    "args, needle",
    [
        (["model=/no/such/model"], "/no/such/model"),
        (["rollout.nn=4"], "did you mean 'rollout.n'"),
        (["algorithm.loss=apso"], "valid names"),
        (["rollout.n=0"], "rollout.n=0 must be >= 1"),
        (["reward=nosuch"], "unknown reward 'nosuch'"),
    ],
)
def test_bad_input_is_one_clear_message(args, needle, tiny_run_inputs, tmp_path):
    base = tiny_overrides(tiny_run_inputs, tmp_path / "bad")
    result = run_cli("train", *base, *args)
    assert result.returncode == 2, result.stderr
    assert needle in result.stderr and "Traceback" not in result.stderr


def test_malformed_data_line_names_file_and_line(tiny_run_inputs, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "1+1=", "answer": "2"}\n{"prompt": "2+2=", "answer": \n')
    result = run_cli("train", *tiny_overrides(tiny_run_inputs, tmp_path / "o", f"data.train={bad}"))
    assert result.returncode == 2 and f"{bad}:2" in result.stderr and "Traceback" not in result.stderr


def test_repeated_non_finite_loss_stops_with_a_message(tiny_run_inputs, tmp_path):
    result = run_cli(
        "train",
        *tiny_overrides(
            tiny_run_inputs,
            tmp_path / "nan",
            "train.lr=1e30",
            "train.grad_clip=0",
            "train.steps=8",
            "train.eval_every=0",
        ),
    )
    assert result.returncode == 2, result.stderr
    assert "non-finite" in result.stderr and "Traceback" not in result.stderr


def test_soft_overlong_penalty_matches_dapo():
    import torch

    from aspo.trainer import soft_overlong_penalty

    lengths = torch.tensor([10, 24, 28, 32])  # L = 32, B = 8: penalty starts after 24 tokens
    assert soft_overlong_penalty(lengths, 32, 8, 1.0).tolist() == [0.0, 0.0, -0.5, -1.0]
    assert soft_overlong_penalty(lengths, 32, 0, 1.0).tolist() == [0.0] * 4


def test_kl_to_reference_dynamic_sampling_and_overlong_penalty_run(tiny_run_inputs, tmp_path):
    out = tmp_path / "dapo-kl"
    cfg = load_config(
        None,
        tiny_overrides(
            tiny_run_inputs,
            out,
            "algorithm.kl_coef=0.01",
            "algorithm.loss=dapo",
            "algorithm.dynamic_sampling=true",
            "algorithm.overlong_buffer=4",
            "train.steps=2",
            "train.eval_every=0",
            "train.save_every=0",
        ),
    )
    Trainer(cfg, progress=False).run()
    assert not (out / "checkpoints").exists()  # save_every=0: checkpoints off
    rows = [r for r in read_metrics(out) if r["step"] > 0]
    assert all(r["actor/kl_loss"] >= 0 for r in rows)  # k3 is non-negative
    assert any(r["actor/kl_loss"] > 0 for r in rows)  # the policy moved away from the frozen reference
    assert all(r["groups/sampling_rounds"] >= 1 for r in rows)
    # overlong penalty: long responses lose reward against the raw verifier score
    assert any(r["reward/mean"] < r["reward/raw_mean"] for r in rows)


def test_a_hanging_or_dying_reward_function_is_bounded_and_training_goes_on(tiny_run_inputs, tmp_path):
    out = tmp_path / "hangs"
    cfg = load_config(
        None,
        tiny_overrides(
            tiny_run_inputs,
            out,
            f"reward={DATA / 'rewards.py'}:spins_on_some",
            "reward_timeout=0.5",
            "train.steps=2",
            "train.plots=false",
        ),
    )
    Trainer(cfg, progress=False).run()
    rows = [r for r in read_metrics(out) if "reward/errors" in r]
    assert len(rows) == 2 and sum(r["reward/errors"] for r in rows) > 0
    assert sum(r["reward/infra_errors"] for r in rows) == 0  # the reward's own failures: counted as errors


def test_code_reward_without_a_sandbox_stops_before_training(no_bwrap, tiny_run_inputs, tmp_path):
    cfg = load_config(None, tiny_overrides(tiny_run_inputs, tmp_path / "code", "reward=code"))
    with pytest.raises(SandboxUnavailable, match="ASPO_SANDBOX=unsafe"):
        Trainer(cfg, progress=False)
    assert not (tmp_path / "code").exists()  # nothing started: no run directory, no model loaded


def test_groups_with_checks_that_could_not_run_are_left_out_of_the_update(tiny_run_inputs, tmp_path):
    out = tmp_path / "infra"
    cfg = load_config(
        None,
        tiny_overrides(
            tiny_run_inputs,
            out,
            f"reward={DATA / 'verifier_service.py'}:digits",
            "reward_timeout=0",
            "train.steps=2",
            "train.plots=false",
            "algorithm.filter_groups=false",
        ),
    )
    trainer = Trainer(cfg, progress=False)
    records = [trainer.train_records[i] for i in trainer.prompt_indices(0)]
    batch = trainer.collect(0)  # a TrainingBatch: the kept rows and the step's metrics
    advantages, metrics = batch.advantages, batch.metrics()
    assert metrics["reward/infra_errors"] == len(records) * cfg.rollout.n / 8
    # every group is kept (filter_groups=false) except the two with a check that could not run
    assert (
        metrics["groups/valid"] == len(records) - 2 and len(advantages) == (len(records) - 2) * cfg.rollout.n
    )


def test_a_mini_batch_without_tokens_on_every_rank_takes_no_optimizer_step(tiny_run_inputs, tmp_path):
    """AdamW's momentum and weight decay move the weights even on a zero gradient: no step without data."""
    import torch

    from aspo.trainer import Trainer

    cfg = load_config(
        None,
        tiny_overrides(
            tiny_run_inputs,
            tmp_path / "run",
            "train.weight_decay=0.1",
            "train.mini_batches=4",
            "train.epochs=1",
            "train.warmup_steps=0",
        ),
    )
    trainer = Trainer(cfg, progress=False)
    rollout = trainer.engine.generate(["12+3=", "4+56="], n=2, max_new_tokens=8, seed=0)
    advantages = torch.tensor([1.0, -1.0, 0.5, -0.5])

    def weights():
        return {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}

    # 2 of 4 rows: two mini-batches hold them, two are empty -> two optimizer steps, not four
    first = trainer.update(1, rollout.select(torch.tensor([0, 1])), advantages[:2])
    assert first["actor/optimizer_steps"] == 2.0
    before = weights()
    empty = rollout.select(torch.arange(4))
    empty.response_mask = torch.zeros_like(empty.response_mask)  # rows, but not one valid token
    metrics = trainer.update(2, empty, advantages)
    assert metrics["actor/optimizer_steps"] == 0.0
    after = weights()
    assert all(torch.equal(before[k], after[k]) for k in before)
    trainer.close()


@pytest.mark.parametrize("unit, lrs", [("optimizer_steps", [0.75, 1.0]), ("rollouts", [0.25, 0.5])])
def test_warm_up_counts_optimizer_steps_or_rollouts(unit, lrs, tiny_run_inputs, tmp_path):
    from aspo.report.metrics import read_metrics

    cfg = load_config(
        None,
        tiny_overrides(
            tiny_run_inputs,
            tmp_path / "run",
            "train.steps=2",
            "train.warmup_steps=4",
            f"train.warmup_unit={unit}",
            "train.mini_batches=2",
            "train.epochs=1",
            "train.eval_every=0",
            "train.save_every=0",
            "train.plots=false",
            "algorithm.filter_groups=false",
        ),
    )
    Trainer(cfg, progress=False).run()
    rows = [r for r in read_metrics(tmp_path / "run") if r["step"] > 0]
    assert [r["actor/optimizer_steps"] for r in rows] == [2.0, 2.0]
    assert [round(r["actor/lr"] / 1e-3, 6) for r in rows] == lrs  # lr after the step's updates / train.lr


def test_baselines_resume_exactly_clip_cov_draws_and_adaptive_entropy_state(tiny_run_inputs, tmp_path):
    """clip_cov's random draw (seeded per step and mini-batch) and the adaptive entropy coefficient (in the
    checkpoint) make a resumed run repeat the uninterrupted one; the composable terms run alongside."""
    args = [
        "algorithm.loss=clip_cov",
        "algorithm.clip_cov_ratio=0.05",
        "algorithm.clip_cov_lb=0.0",
        "algorithm.entropy_adaptive=true",
        "algorithm.entropy_target=100.0",  # above any entropy here: the coefficient climbs every step
        "algorithm.entropy_coef_delta=0.01",
        "algorithm.top_entropy_quantile=0.5",
        "algorithm.off_policy_mask_threshold=0.0",
        "train.eval_every=0",
        "train.save_every=2",
    ]
    whole, split = tmp_path / "whole", tmp_path / "split"
    Trainer(
        load_config(None, tiny_overrides(tiny_run_inputs, whole, *args, "train.steps=4")), progress=False
    ).run()
    Trainer(
        load_config(None, tiny_overrides(tiny_run_inputs, split, *args, "train.steps=2")), progress=False
    ).run()
    resumed = tiny_overrides(tiny_run_inputs, split, *args, "train.steps=4", "resume=true")
    Trainer(load_config(None, resumed), progress=False).run()
    # the 2-step run evaluated at its last step; the training metrics must agree to the bit
    want, got = (
        [{k: v for k, v in r.items() if not k.startswith("eval/")} for r in comparable(read_metrics(d))]
        for d in (whole, split)
    )
    assert [r["step"] for r in got if r["step"] > 0] == [1, 2, 3, 4]
    assert [r for r in got if r["step"] > 0] == [r for r in want if r["step"] > 0]
    rows = [r for r in want if r["step"] > 0]
    coefs = [r["actor/entropy_coef"] for r in rows]
    assert coefs == sorted(coefs) and coefs[-1] > coefs[0] > 0  # applied from the second optimizer step on
    assert all(r["actor/cov_selected_frac"] > 0 and r["actor/top_entropy_frac"] > 0 for r in rows)
