import os
import subprocess
import sys

import torch

from aspo.threads import (
    ENV_DEFAULTS,
    apply_threads,
    child_environment,
    configure_environment,
    default_threads,
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
