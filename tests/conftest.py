import functools
from pathlib import Path

import pytest
import torch

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="session")
def tiny_policy():
    """A random-init lab-sized Qwen2 (smaller than the default) and the lab's char tokenizer."""
    from aspo.lab import build_model, build_tokenizer

    tokenizer = build_tokenizer()
    model = build_model(
        tokenizer, seed=0, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128
    )
    model.eval()
    return model, tokenizer


@pytest.fixture(autouse=True)
def _torch_threads():
    torch.set_num_threads(1)  # tests run beside other work on 2 cores; keep them predictable
    yield


@pytest.fixture(scope="session")
def tiny_run_inputs(tmp_path_factory):
    """A local checkpoint (random tiny Qwen2 + lab tokenizer, saved with save_pretrained) and JSONL data
    from the lab's arithmetic task: the `model=DIR data.train=FILE reward=NAME` path of `aspo train`."""
    import json

    from aspo.lab import build_model, build_tokenizer, get_task

    root = tmp_path_factory.mktemp("tiny_inputs")
    tokenizer = build_tokenizer()
    model = build_model(
        tokenizer, seed=0, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64
    )
    model.save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    task = get_task("arithmetic")
    for split, n in (("train", 64), ("test", 8)):
        with open(root / f"{split}.jsonl", "w") as fh:
            for record in task.make_split(split, n, seed=0):
                fh.write(json.dumps(record) + "\n")
    return root


def tiny_overrides(root, out_dir, *extra):
    """A few-second training config on ``tiny_run_inputs``."""
    return [
        f"model={root / 'model'}",
        f"data.train={root / 'train.jsonl'}",
        f"data.test={root / 'test.jsonl'}",
        f"reward={DATA / 'rewards.py'}:digit_share",
        "rollout.n=4",
        "rollout.max_new_tokens=12",
        "train.prompts_per_step=4",
        "train.mini_batches=2",
        "train.epochs=2",
        "train.steps=3",
        "train.eval_every=2",
        "train.save_every=2",
        "data.num_test=4",
        "eval.n=2",
        "train.lr=1e-3",
        "train.device=cpu",
        "train.threads=1",
        f"output_dir={out_dir}",
        *extra,
    ]


@functools.lru_cache(maxsize=1)
def _sandbox_state() -> tuple[bool, str]:
    """(an isolating backend works, one line for the pytest header naming which sandbox tests run here)."""
    import os

    from aspo.rewards.sandbox.host import bwrap_problem, unshare_problem

    problems = {"bwrap": bwrap_problem(), "unshare": unshare_problem()}
    runs = [name for name, problem in problems.items() if problem is None]
    runs += ["zygote"] if "bwrap" in runs else []
    runs += ["unsafe (as root, throw-away uid)"] if os.geteuid() == 0 else []
    missing = "; ".join(f"{name}: {problem}" for name, problem in problems.items() if problem is not None)
    line = f"code sandbox: hostile-program tests run on {', '.join(runs) or 'nothing'}"
    if missing:
        line += f"; SKIPPED for {missing}"
    if problems["bwrap"] is not None and problems["unshare"] is not None:
        line += (
            "; code-reward tests run this repository's own programs with ASPO_SANDBOX=unsafe. Install "
            "bubblewrap (`make sandbox`) to test the isolated path"
        )
    return problems["bwrap"] is None or problems["unshare"] is None, line


def pytest_report_header(config):
    return _sandbox_state()[1]


@pytest.fixture
def trusted_code_sandbox(monkeypatch):
    """For tests whose programs are this repository's own (benign): without bubblewrap they run with the
    explicit unisolated opt-in instead of being refused; with it, in the real sandbox."""
    from aspo.rewards.sandbox import host

    if not _sandbox_state()[0]:
        monkeypatch.setenv("ASPO_SANDBOX", "unsafe")
    yield
    host._isolation.cache_clear()


@pytest.fixture
def no_bwrap(monkeypatch, tmp_path):
    """This machine as one without bubblewrap (an empty PATH hides it), nothing opted into unsafe."""
    from aspo.rewards.sandbox import host

    bindir = tmp_path / "bin"
    bindir.mkdir()
    monkeypatch.setenv("PATH", str(bindir))
    monkeypatch.delenv("ASPO_SANDBOX", raising=False)
    host._isolation.cache_clear()
    yield
    host._isolation.cache_clear()


@pytest.fixture
def model_code_sandbox(monkeypatch):
    """For tests that run model-written programs: the real sandbox, else (as root) the unsafe mode's
    throw-away uid; as a normal user without bubblewrap they are skipped, never run as the user."""
    import os

    from aspo.rewards.sandbox import host

    if not _sandbox_state()[0]:
        if os.geteuid() != 0:
            pytest.skip("model-written programs need bubblewrap (or root for a throw-away uid)")
        monkeypatch.setenv("ASPO_SANDBOX", "unsafe")
    yield
    host._isolation.cache_clear()


def load_benchmark_module(filename: str, name: str):
    """A script of benchmarks/ imported as module ``name`` (registered in sys.modules: dataclasses look
    their module up there)."""
    import importlib.util
    import sys

    path = Path(__file__).resolve().parent.parent / "benchmarks" / filename
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
