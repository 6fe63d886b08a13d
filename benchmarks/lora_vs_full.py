"""LoRA vs full fine-tuning on a real chat model: peak memory, seconds per step, checkpoint size, pass@1.

    .venv/bin/python benchmarks/lora_vs_full.py --model DIR [--steps 2] [--rank 16] [--alpha 32]
        [--lr-full 1e-5] [--lr-lora 1e-4] [--num-test 16] [--eval-n 2]

Both runs are `aspo train` processes on the same job, one after the other: short arithmetic questions
("What is a + b?", a, b in 2..30, 64 held out) through the model's chat template, 8 prompts x 8 samples,
64 new tokens, temperature 0.7, one pass of 2 mini-batches per rollout, one torch thread, held-out pass@1
before and after (temperature 0.7); the reward is 1 when the last integer of the response is the sum.
Only the LoRA keys and the learning rate differ (LoRA usually wants ~10x the full fine-tuning rate).
Prints, per run: peak RSS and CPU time of the process (``os.wait4``), median ``time/step``, the size of
the final checkpoint directory, and pass@1 before -> after. Timings on a shared machine are noisy: the load
average is printed before and after each run.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import PYTHON, child_env, load_average, median, run_timed  # noqa: E402  (sibling module)

REWARD = '''import re


def last_number(prompt, response, answer, **fields):
    """1.0 when the last integer in the response is the answer."""
    numbers = re.findall(r"-?\\d+", response.replace(",", ""))
    return float(bool(numbers) and numbers[-1] == str(answer))
'''


def write_job(root: Path) -> None:
    pairs = [(a, b) for a in range(2, 31) for b in range(2, 31)]
    random.Random(0).shuffle(pairs)
    for name, rows in (("test", pairs[:64]), ("train", pairs[64:])):
        with open(root / f"{name}.jsonl", "w") as fh:
            for a, b in rows:
                fh.write(json.dumps({"prompt": f"What is {a} + {b}?", "answer": str(a + b)}) + "\n")
    (root / "reward.py").write_text(REWARD)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model", required=True, help="local HF checkpoint directory (e.g. SmolLM2-135M-Instruct)"
    )
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--alpha", type=float, default=32.0)
    parser.add_argument("--lr-full", type=float, default=1e-5)
    parser.add_argument("--lr-lora", type=float, default=1e-4)
    parser.add_argument("--num-test", type=int, default=16)
    parser.add_argument("--eval-n", type=int, default=2)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="aspo-lora-bench-"))
    try:
        write_job(root)
        common = [
            f"model={args.model}",
            f"data.train={root / 'train.jsonl'}",
            f"data.test={root / 'test.jsonl'}",
            f"reward={root / 'reward.py'}:last_number",
            "prompt.chat_template=true",
            "rollout.n=8",
            "train.prompts_per_step=8",
            "rollout.max_new_tokens=64",
            "rollout.temperature=0.7",
            "eval.temperature=0.7",
            f"eval.n={args.eval_n}",
            f"data.num_test={args.num_test}",
            "train.mini_batches=2",
            "train.epochs=1",
            "train.threads=1",
            "train.device=cpu",
            "train.eval_every=0",
            f"train.save_every={args.steps}",
            "train.keep_checkpoints=1",
            f"train.steps={args.steps}",
            "train.plots=false",
        ]
        runs = {
            "full": [f"train.lr={args.lr_full}"],
            "lora": [f"train.lr={args.lr_lora}", f"lora.rank={args.rank}", f"lora.alpha={args.alpha}"],
        }
        print(
            "| run | peak RSS | CPU time | median s/step | checkpoint "
            "| pass@1 before -> after | load before / after |"
        )
        print("|---|---|---|---|---|---|---|")
        for name, extra in runs.items():
            out = root / name
            before = load_average()
            timed = run_timed(
                [PYTHON, "-m", "aspo", "train", *common, *extra, f"output_dir={out}"],
                child_env(1),
                root / f"{name}.log",
            )
            rows = [json.loads(line) for line in open(out / "metrics.jsonl")]
            evals = [r["eval/pass@1"] for r in rows if "eval/pass@1" in r]
            step_s = median([r["time/step"] for r in rows if "time/step" in r])
            ckpt = out / "checkpoints" / f"step-{args.steps}"
            size_mb = sum(f.stat().st_size for f in ckpt.iterdir()) / 1e6
            print(
                f"| {name} | {timed.max_rss_mb:.0f} MB | {timed.cpu_s:.0f} s | {step_s:.0f} s "
                f"| {size_mb:.0f} MB | "
                f"{evals[0]:.3f} -> {evals[-1]:.3f} | {before} / {load_average()} |",
                flush=True,
            )
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
