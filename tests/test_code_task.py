"""The ``code`` lab task: seeded generation, a held-out split by template, reference programs that pass
their own tests in the real sandbox, config rules, and training on a batch with hostile programs in it."""

import json
import os

import pytest
from conftest import tiny_overrides

from aspo.config import load_config
from aspo.errors import UserError
from aspo.lab.code_problems import ANSWER_FORMAT, HELD_OUT_NAMES, TEMPLATES, TRAIN_TEMPLATES
from aspo.lab.tasks import get_task
from aspo.report.metrics import read_metrics
from aspo.rewards.code import score_batch

CONFIG = os.path.join(os.path.dirname(__file__), "..", "configs", "smollm2-code.yaml")


def _every_problem(task, split):
    """All distinct problems of ``split`` (the stream draws templates uniformly: 2000 draws reach all)."""
    seen = {}
    stream = task.stream(split, seed=5)
    for _ in range(2000):
        record = next(stream)
        seen.setdefault(task.key(record), record)
    return list(seen.values())


def test_generation_is_deterministic_by_seed():
    task = get_task("code")
    first = task.make_split("train", 40, seed=0)
    assert first == task.make_split("train", 40, seed=0)
    assert first != task.make_split("train", 40, seed=1)  # other problems, or other test cases
    record = first[0]
    assert len(record["tests"]["inputs"]) == len(record["tests"]["outputs"]) == task.cases
    assert record["prompt"].endswith(ANSWER_FORMAT) and "Example input:" in record["prompt"]
    # a record carries exactly what the code reward takes
    assert set(record["tests"]) == {"inputs", "outputs"}


def test_held_out_templates_never_reach_training():
    task = get_task("code")
    train, test = _every_problem(task, "train"), _every_problem(task, "test")
    train_templates = {r["template"] for r in train}
    test_templates = {r["template"] for r in test}
    assert test_templates == set(HELD_OUT_NAMES) and not train_templates & test_templates
    assert train_templates == {t.name for t in TRAIN_TEMPLATES}
    # whatever the seed and size asked for
    for seed in (0, 3):
        assert not {r["template"] for r in task.make_split("train", 64, seed=seed)} & HELD_OUT_NAMES
        assert {r["template"] for r in task.make_split("test", 24, seed=seed)} <= HELD_OUT_NAMES
    with pytest.raises(UserError, match="too few distinct test problems"):
        task.make_split("test", len(test) + 1)


def test_level_keeps_the_easier_templates():
    for level in (1, 2, 3):
        task = get_task("code", level=level)
        problems = _every_problem(task, "train") + _every_problem(task, "test")
        levels = {TEMPLATES[r["template"]].level for r in problems}
        assert max(levels) == level and min(levels) == 1
    for bad in ({"level": 0}, {"level": 4}, {"cases": 0}):
        with pytest.raises(UserError, match="task 'code'"):
            get_task("code", **bad)


def test_every_reference_program_passes_its_tests_in_the_sandbox(trusted_code_sandbox):
    """Each template states its answer twice (``solve`` here, ``program`` in the sandbox): every generated
    case of every problem of both splits must agree, and the usual near misses must fail."""
    task = get_task("code")
    problems = _every_problem(task, "train") + _every_problem(task, "test")
    assert len(problems) == sum(len(t.params) for t in TEMPLATES.values())
    references = [dict(r, response=task.demonstration(r)) for r in problems]
    results = score_batch(references)
    failed = [
        (r["template"], r["param"], s.error) for r, s in zip(problems, results, strict=True) if s.reward != 1
    ]
    assert not failed
    # what SmolLM2 writes untrained (a prompt in input(), the answer in a sentence) breaks the contract
    record = next(r for r in problems if r["template"] == "add_const")
    k = record["param"]
    near_misses = [
        f"```python\nn = int(input('Enter a number: '))\nprint(n + {k})\n```",
        f"```python\nn = int(input())\nprint('The answer is', n + {k})\n```",
        f"```python\nprint(10 + {k})\n```",
    ]
    assert [s.reward for s in score_batch([dict(record, response=m) for m in near_misses])] == [0.0] * 3


def test_config_rules(tmp_path):
    import yaml

    recipe = yaml.safe_load(open(CONFIG))
    assert (recipe["task"], recipe["reward"], recipe["model"]) == ("code", "code", "smollm2-135m-instruct")
    # a local directory stands in for the bundled model (whose check needs its package)
    base = [f"model={os.path.dirname(__file__)}", f"output_dir={tmp_path / 'r'}"]
    cfg = load_config(CONFIG, base).validate()
    assert cfg.uses_lab_task and cfg.has_heldout_data
    assert cfg.response_cap == recipe["rollout"]["max_new_tokens"]  # the config's cap wins over the task's
    default_cap = load_config(None, [*base, "task=code"]).validate()
    assert default_cap.response_cap == get_task("code").max_new_tokens
    with pytest.raises(UserError, match="task='code' is for pretrained chat models"):
        load_config(None, ["task=code"]).validate()
    with pytest.raises(UserError, match="scored by reward='code'"):
        load_config(None, [*base, "task=code", "reward=math"]).validate()


# Programs a policy could write for "print n + 3", each scored in the training batch. Every one must score
# 0 as the candidate's own failure (never infra: that would drop its group), and training must go on.
def _hostile(data_file, host_dir):
    return {
        # the training data holds every test's expected output: look the answer up in it
        "reads_the_data": (
            "import json\nn = input().strip()\n"
            f"for line in open({str(data_file)!r}):\n"
            "    tests = json.loads(line)['tests']\n"
            "    for i, o in zip(tests['inputs'], tests['outputs']):\n"
            "        if i.strip() == n:\n            print(o)\n"
        ),
        # look for the expected outputs anywhere readable: other processes' memory, files
        "searches_for_outputs": (
            "import os, re\nn = input().strip()\nfound = None\n"
            "for pid in os.listdir('/proc'):\n"
            "    try:\n"
            "        found = found or re.search(rb'outputs', open(f'/proc/{pid}/environ', 'rb').read())\n"
            "    except OSError:\n        pass\n"
            "for top in ('/tmp', '/var/tmp', '/home', '/root', '/work'):\n"
            "    for root, _, files in os.walk(top):\n"
            "        for name in files:\n"
            "            try:\n"
            "                text = open(os.path.join(root, name)).read()\n"
            "            except (OSError, UnicodeDecodeError):\n                continue\n"
            "            if '\"outputs\"' in text:\n                found = text\n"
            "print(found)\n"
        ),
        "kills_its_parent": (
            "import os, signal\nfor pid in (os.getppid(), 1, -1):\n    try:\n"
            "        os.kill(pid, signal.SIGKILL)\n    except OSError:\n        pass\n"
            "print(int(input()) + 3)\n"
        ),
        "fork_bomb": "import os\nwhile True:\n    os.fork()\nprint(int(input()) + 3)\n",
        "writes_outside": f"open({str(host_dir / 'pwned')!r}, 'w').write('x')\nprint(int(input()) + 3)\n",
    }


CORRECT = "```python\nprint(int(input()) + 3)\n```"


def test_hostile_programs_in_the_training_batch_score_zero_and_training_goes_on(
    model_code_sandbox, tiny_run_inputs, tmp_path, monkeypatch
):
    from aspo.trainer import Trainer

    # "n + 3" problems with short prompts (the tiny model's context is 256 characters)
    template = TEMPLATES["add_const"]
    data = tmp_path / "train.jsonl"
    with open(data, "w") as fh:
        for i in range(4):
            inputs = [f"{i * 10 + j}\n" for j in range(3)]
            tests = {"inputs": inputs, "outputs": [template.solve(x, 3) for x in inputs]}
            fh.write(json.dumps({"prompt": f"{i}+3=", "answer": "", "tests": tests, "time_limit": 1}) + "\n")
    hostile = _hostile(data, tmp_path)
    out = tmp_path / "run"
    overrides = tiny_overrides(tiny_run_inputs, out, f"data.train={data}", f"data.test={data}", "reward=code")
    overrides += ["rollout.n=6", "train.steps=2", "train.plots=false", "train.save_every=0"]
    trainer = Trainer(load_config(None, overrides), progress=False)
    generate = trainer.engine.generate

    def with_hostile_responses(*args, **kwargs):
        rollout = generate(*args, **kwargs)  # the model's own tokens; the reward reads these texts
        n = kwargs["n"]
        programs = [CORRECT, *(f"```python\n{p}```" for p in hostile.values())][:n]
        rollout.responses = [programs[i % n] for i in range(len(rollout.responses))]
        return rollout

    monkeypatch.setattr(trainer.engine, "generate", with_hostile_responses)
    batch = trainer.collect(1)
    rewards = batch.rounds[0].raw_rewards.view(-1, 6)
    assert rewards[:, 0].tolist() == [1.0] * len(rewards)  # the honest program still scores
    assert rewards[:, 1:].sum() == 0, dict(zip(hostile, rewards[0, 1:].tolist(), strict=True))
    assert batch.infra_errors == 0 and batch.metrics()["groups/with_signal"] == len(rewards)
    assert batch.metrics()["perf/reward_checks_per_s"] > 0
    summary = trainer.run()
    assert summary["steps"] == 2
    rows = [r for r in read_metrics(out) if "reward/infra_errors" in r]
    assert [r["reward/infra_errors"] for r in rows] == [0.0, 0.0]
    assert all(0 < r["perf/reward_share"] < 1 for r in rows)
    assert not (tmp_path / "pwned").exists()
