import os
import subprocess
import sys
import time

import pytest
import torch

from aspo.threads import (
    ENV_DEFAULTS,
    LoadFollower,
    apply_threads,
    child_environment,
    configure_environment,
    default_threads,
    threads_beside,
    usable_cores,
)


def test_environment_defaults_fill_only_what_the_user_left_unset():
    env = {"TOKENIZERS_PARALLELISM": "true"}
    added = configure_environment(env)
    assert env["GOMP_SPINCOUNT"] == ENV_DEFAULTS["GOMP_SPINCOUNT"]
    assert env["TOKENIZERS_PARALLELISM"] == "true" and "TOKENIZERS_PARALLELISM" not in added
    assert set(added) == set(ENV_DEFAULTS) - {"TOKENIZERS_PARALLELISM"}

    user_spin = {"GOMP_SPINCOUNT": "300000"}
    configure_environment(user_spin)
    assert user_spin["GOMP_SPINCOUNT"] == "300000"

    # an explicit wait policy is the user's choice: a spin count would override it, so we add none
    user_wait = {"OMP_WAIT_POLICY": "PASSIVE"}
    configure_environment(user_wait)
    assert user_wait["OMP_WAIT_POLICY"] == "PASSIVE" and "GOMP_SPINCOUNT" not in user_wait


def test_default_threads_follow_omp_num_threads_else_every_usable_core():
    assert default_threads({"OMP_NUM_THREADS": "3"}) == 3
    assert default_threads({"OMP_NUM_THREADS": "4,2"}) == 4  # nested levels: the outer one
    assert default_threads({}) == usable_cores() == len(os.sched_getaffinity(0))
    assert default_threads({"OMP_NUM_THREADS": "many"}) == usable_cores()
    assert default_threads({"OMP_NUM_THREADS": "0"}) == usable_cores()


def test_requested_threads_win_over_the_default(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert apply_threads(0) == 1 and torch.get_num_threads() == 1
    assert apply_threads(2) == 2 and torch.get_num_threads() == 2
    assert apply_threads(1) == 1 and torch.get_num_threads() == 1


def test_worker_environment_carries_the_count_and_the_policy():
    env = child_environment(3, {"PATH": "/bin", "GOMP_SPINCOUNT": "100"})
    assert env["OMP_NUM_THREADS"] == env["MKL_NUM_THREADS"] == "3"
    assert env["GOMP_SPINCOUNT"] == "100" and env["PATH"] == "/bin"
    assert env["OPENBLAS_NUM_THREADS"] == ENV_DEFAULTS["OPENBLAS_NUM_THREADS"]


def _cli_environment(env):
    """Run the CLI's entry in a fresh interpreter; what OpenMP sees once torch has loaded after it."""
    code = (
        "from aspo.cli import main\n"
        "assert main(['train', '--help']) == 0\n"
        "import os, torch\n"
        "print('RESULT', os.environ.get('GOMP_SPINCOUNT'), torch.get_num_threads())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return out.stdout.split("RESULT")[-1].split()


def test_cli_sets_the_spin_count_before_torch_loads_and_keeps_the_users():
    base = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    base["OMP_NUM_THREADS"] = "1"
    assert _cli_environment(base) == [ENV_DEFAULTS["GOMP_SPINCOUNT"], "1"]
    assert _cli_environment({**base, "GOMP_SPINCOUNT": "300000"}) == ["300000", "1"]


def test_threads_beside_leave_every_mostly_busy_core_to_its_owner():
    assert threads_beside(0.0, 2) == 2
    assert threads_beside(0.4, 2) == 2  # a core busy 40 % of the time: ours still gains from it
    assert threads_beside(0.6, 2) == 1
    assert threads_beside(1.0, 2) == 1
    assert threads_beside(5.0, 2) == 1  # never fewer than one
    assert threads_beside(2.5, 8) == 5


def _busy_loop():
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (/proc/PID/stat, fields 14 and 15)."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.mark.skipif(usable_cores() < 2, reason="needs 2 usable cores")
def test_follower_sees_another_process_busy_and_not_its_own_work():
    follower = LoadFollower(min_window_s=0.0)
    loop = _busy_loop()
    try:
        time.sleep(0.2)  # the loop is up
        follower.others_busy()  # open a window with the loop running
        loop_cpu, start = _cpu_seconds(loop.pid), time.monotonic()
        time.sleep(1.5)
        others_while_we_sleep = follower.others_busy()
        # what the loop really got: on a machine busy with other jobs it may be well under a core
        loop_cores = (_cpu_seconds(loop.pid) - loop_cpu) / (time.monotonic() - start)
        # now we compute on every core ourselves for as long: our own CPU time must not count as others'
        torch.set_num_threads(usable_cores())
        x = torch.randn(256, 256)
        t_end = time.monotonic() + 1.5
        while time.monotonic() < t_end:
            x = torch.tanh(x @ x)
        others_while_we_work = follower.others_busy()
    finally:
        loop.kill()
        loop.wait()
    assert loop_cores > 0.3, f"the busy loop got {loop_cores:.2f} of a core: too loaded to tell"
    assert others_while_we_sleep is not None and others_while_we_sleep >= loop_cores - 0.15  # the loop counts
    if loop_cores >= 0.7:  # it holds a core: the follower leaves that core to it
        assert threads_beside(others_while_we_sleep, usable_cores()) <= usable_cores() - 1
    assert others_while_we_work is not None
    assert others_while_we_work <= others_while_we_sleep + 0.5  # not ~usable_cores() more


def test_follower_is_off_when_the_count_is_fixed():
    assert LoadFollower.if_enabled(2, {}) is None
    assert LoadFollower.if_enabled(0, {"OMP_NUM_THREADS": "1"}) is None
    if usable_cores() >= 2:
        assert isinstance(LoadFollower.if_enabled(0, {}), LoadFollower)
        # a value default_threads ignores does not fix the count either: one rule for both
        assert isinstance(LoadFollower.if_enabled(0, {"OMP_NUM_THREADS": "many"}), LoadFollower)


@pytest.mark.skipif(usable_cores() < 2, reason="needs 2 usable cores")
def test_a_changing_thread_count_does_not_change_training(tiny_run_inputs, tmp_path, monkeypatch):
    """The follower may move the count every step; the run's numbers must be those of a run at a fixed
    count, up to float rounding (a reduction split over more threads sums in another order)."""
    from conftest import tiny_overrides

    from aspo.config import load_config
    from aspo.report.metrics import read_metrics
    from aspo.trainer import Trainer

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    fixed = tmp_path / "fixed"
    Trainer(
        load_config(None, tiny_overrides(tiny_run_inputs, fixed, "train.threads=2")), progress=False
    ).run()

    others = iter([1.0, 0.0, 1.0, 0.0, 1.0, 0.0])  # a neighbour that comes and goes: 1, 2, 1 threads
    monkeypatch.setattr(LoadFollower, "others_busy", lambda self: next(others))
    moving = tmp_path / "moving"
    Trainer(
        load_config(None, tiny_overrides(tiny_run_inputs, moving, "train.threads=0")), progress=False
    ).run()

    def numbers(rows):
        return [{k: v for k, v in r.items() if not k.startswith(("time/", "perf/"))} for r in rows]

    fixed_rows, moving_rows = read_metrics(fixed), read_metrics(moving)
    assert [r["perf/threads"] for r in moving_rows if "perf/threads" in r] == [1.0, 2.0, 1.0]
    moving_numbers, fixed_numbers = numbers(moving_rows), numbers(fixed_rows)
    assert [sorted(r) for r in moving_numbers] == [sorted(r) for r in fixed_numbers]
    for got, want in zip(moving_numbers, fixed_numbers, strict=True):
        for key, value in want.items():  # the same samples (rewards, lengths); losses and KLs to rounding
            assert got[key] == pytest.approx(value, rel=1e-5, abs=1e-7), key
