"""`aspo eval`: sample K responses per problem, score them, report avg@K, pass@1, pass@K (and maj@K).

Writes into ``--output``: ``samples.jsonl`` (one row per sample: problem ``id``, ``sample``, ``response``,
``reward`` [, ``error``, ``answer``]), ``summary.json`` and ``eval_config.json``. Problems are processed in
fixed batches, each seeded from ``--seed`` and its position, and a batch is appended only once it is fully
scored; rerunning the same command resumes after the last complete batch and gives the same samples as an
uninterrupted run.

Prompts: the tokenizer's chat template when it has one (one user turn; for the math reward the standard
"reason step by step ... \\boxed{}" instruction is appended), else ``--prompt-template`` (default
``{prompt}``) filled from the record's fields.
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

from aspo.errors import UserError

MATH_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
CODE_INSTRUCTION = "Complete the following Python function. Answer with the whole function in a ```python block."
SAMPLES, SUMMARY, SETTINGS = "samples.jsonl", "summary.json", "eval_config.json"
# settings that change the samples: a resumed run must match them
_SAMPLE_SETTINGS = ("model", "data", "reward", "n", "temperature", "top_p", "max_new_tokens", "seed",
                    "batch_size", "limit", "prompt_template", "chat_template")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # bad input is a UserError (one paragraph, exit 2), as everywhere
        raise UserError(f"{message} (`aspo eval --help` shows the usage)")


def build_parser() -> argparse.ArgumentParser:
    from aspo.benchmarks import BENCHMARKS

    parser = _Parser(
        prog="aspo eval", formatter_class=argparse.RawDescriptionHelpFormatter,
        description=textwrap.fill(
            "Sample K responses per problem from a local checkpoint, score them with a reward and write "
            "summary.json (avg@K, pass@1, pass@K with the unbiased estimator of Chen et al. 2021, maj@K for "
            "math) and samples.jsonl. Rerun the same command to resume an interrupted evaluation.", 100),
        epilog=f"benchmarks: {', '.join(BENCHMARKS)} (or a .jsonl file with prompt/answer fields)\n\n"
               "example:\n  aspo eval --model runs/aspo/final --data gsm8k --n 8 --output runs/eval-gsm8k")
    parser.add_argument("--model", required=True, help="checkpoint directory (save_pretrained: model + tokenizer)")
    parser.add_argument("--data", required=True, help="benchmark name or JSONL file")
    parser.add_argument("--reward", default=None,
                        help="math, code, a lab task reward, or path/file.py:fn (default: the benchmark's own)")
    parser.add_argument("--n", type=int, default=1, help="samples per problem K (default 1)")
    parser.add_argument("--temperature", type=float, default=0.6, help="sampling temperature (default 0.6)")
    parser.add_argument("--top-p", type=float, default=0.95, help="nucleus sampling mass (default 0.95)")
    parser.add_argument("--max-new-tokens", type=int, default=1024, help="response length cap (default 1024)")
    parser.add_argument("--output", type=Path, default=None, help="output directory (default runs/eval-<data>)")
    parser.add_argument("--batch-size", type=int, default=8, help="problems per generation batch (default 8)")
    parser.add_argument("--limit", type=int, default=0, help="evaluate only the first N problems (0: all)")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    parser.add_argument("--prompt-template", default="{prompt}",
                        help="plain template when the tokenizer has no chat template (default: {prompt})")
    parser.add_argument("--no-chat-template", dest="chat_template", action="store_false",
                        help="use --prompt-template even if the tokenizer has a chat template")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    return parser


def _validate(args: argparse.Namespace) -> None:
    for name, low in (("n", 1), ("max_new_tokens", 1), ("batch_size", 1), ("limit", 0)):
        if getattr(args, name) < low:
            raise UserError(f"--{name.replace('_', '-')} must be >= {low}, got {getattr(args, name)}")
    if not args.temperature > 0:
        raise UserError(f"--temperature must be > 0, got {args.temperature}")
    if not 0 < args.top_p <= 1:
        raise UserError(f"--top-p must be in (0, 1], got {args.top_p}")
    if not Path(args.model).is_dir():
        raise UserError(f"--model {args.model!r} is not a directory (expected a save_pretrained checkpoint)")


def _load_model(path: str, device: str | None) -> tuple[Any, Any, str]:
    import torch

    from aspo.run_setup import load_checkpoint

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model, tokenizer = load_checkpoint(path, torch.bfloat16 if device.startswith("cuda") else torch.float32)
    return model.to(device).eval(), tokenizer, device


def format_prompt(record: dict[str, Any], tokenizer: Any, *, reward: str, template: str,
                  chat_template: bool) -> str:
    """The text the model continues: a chat turn when the tokenizer has a template, else ``template``."""
    if chat_template and getattr(tokenizer, "chat_template", None):
        content = str(record["prompt"])
        if reward == "math":
            content = f"{content}\n{MATH_INSTRUCTION}"
        elif reward == "code" and record.get("entry_point"):
            content = f"{CODE_INSTRUCTION}\n```python\n{content}\n```"
        return tokenizer.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                             add_generation_prompt=True)
    try:
        return template.format(**record)
    except (KeyError, IndexError) as err:
        raise UserError(f"--prompt-template names field {err} which a record does not have") from err


def _read_done(path: Path) -> list[dict[str, Any]]:
    """Complete rows of a previous run (a torn last line from a crash is dropped)."""
    rows = []
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                break
    return rows


def _check_settings(output: Path, settings: dict[str, Any]) -> None:
    path = output / SETTINGS
    if path.exists():
        old = json.loads(path.read_text())
        diff = [k for k in _SAMPLE_SETTINGS if old.get(k) != settings.get(k)]
        if diff:
            raise UserError(f"{output} holds an evaluation with different settings ({', '.join(diff)}); "
                            "use another --output or the same settings to resume")
    else:
        output.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(settings, indent=2) + "\n")


def main(argv: list[str]) -> int:
    from aspo.benchmarks import DEFAULT_REWARD, load_benchmark
    from aspo.evaluate import summarize
    from aspo.rewards import get_reward

    args = build_parser().parse_args(argv)
    _validate(args)
    problems = load_benchmark(args.data)
    reward = args.reward or DEFAULT_REWARD.get(args.data)
    if reward is None:
        raise UserError(f"--reward is required for data {args.data!r} (math, code, or path/file.py:fn)")
    reward_fn = get_reward(reward)
    if args.limit:
        problems = problems[: args.limit]
    if not problems:
        raise UserError(f"no problems in {args.data!r}")
    output = args.output or Path("runs") / f"eval-{Path(args.data).stem}"
    settings = {k: getattr(args, k) for k in _SAMPLE_SETTINGS if k != "reward"} | {"reward": reward}
    _check_settings(output, settings)

    samples_path = output / SAMPLES
    batches = [problems[i:i + args.batch_size] for i in range(0, len(problems), args.batch_size)]
    rows = _read_done(samples_path)
    done_batches, kept = 0, 0
    for batch in batches:  # only whole batches count as done
        if len(rows) < kept + len(batch) * args.n:
            break
        done_batches, kept = done_batches + 1, kept + len(batch) * args.n
    rows = rows[:kept]
    # rewrite what is kept: drops a partly written batch or a torn line
    samples_path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    comparable = reward == "math"
    if done_batches < len(batches):
        _generate(args, reward, reward_fn, batches, done_batches, samples_path, comparable)
    rows = _read_done(samples_path)
    summary = _summarize(rows, problems, args, reward, comparable, summarize, output)
    (output / SUMMARY).write_text(json.dumps(summary, indent=2) + "\n")
    metrics = ", ".join(f"{k} {summary[k]:.4f}" for k in summary if "@" in k)
    print(f"aspo eval: {args.data} ({len(problems)} problems x {args.n}): {metrics}\n  wrote {output / SUMMARY}")
    return 0


def _generate(args: argparse.Namespace, reward: str, reward_fn: Any, batches: list[list[dict]],
              start_batch: int, samples_path: Path, comparable: bool) -> None:
    from tqdm.auto import tqdm

    from aspo.evaluate import sample_policy
    from aspo.rewards.math import extract_answer, normalize_answer
    from aspo.rollout import HFEngine

    model, tokenizer, _ = _load_model(args.model, args.device)
    chat = bool(args.chat_template and getattr(tokenizer, "chat_template", None))
    engine = HFEngine(model, tokenizer, add_special_tokens=not chat)
    total = sum(len(b) for b in batches)
    done = sum(len(b) for b in batches[:start_batch])
    bar = tqdm(total=total, initial=done, desc="aspo eval", unit="problem", dynamic_ncols=True, file=sys.stderr)
    try:
        for index in range(start_batch, len(batches)):
            batch = batches[index]
            prompts = [format_prompt(p, tokenizer, reward=reward, template=args.prompt_template,
                                     chat_template=args.chat_template) for p in batch]
            started = time.monotonic()
            _, sampled = sample_policy(engine, batch, prompts, reward_fn, n=args.n,
                                       max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                                       top_p=args.top_p, seed=args.seed * 1_000_003 + index)
            lines = []
            for sample in sampled:
                row = {"id": batch[sample["index"]]["id"], "sample": sample["sample"],
                       "response": sample["response"], "reward": sample["reward"],
                       "truncated": sample["truncated"], "length": sample["length"]}
                if sample["error"]:
                    row["error"] = sample["error"]
                if comparable:
                    row["answer"] = normalize_answer(extract_answer(sample["response"]))
                lines.append(json.dumps(row, ensure_ascii=False) + "\n")
            with samples_path.open("a", encoding="utf-8") as f:  # whole batch at once: resumable
                f.write("".join(lines))
            bar.update(len(batch))
            bar.set_postfix(reward=f"{sum(r['reward'] for r in sampled) / len(sampled):.3f}",
                            s_per_batch=f"{time.monotonic() - started:.1f}")
    finally:
        bar.close()


def _summarize(rows: list[dict], problems: list[dict], args: argparse.Namespace, reward: str,
               comparable: bool, summarize: Any, output: Path) -> dict[str, Any]:
    by_id: dict[str, list[dict]] = {}
    for row in rows:
        by_id.setdefault(str(row["id"]), []).append(row)
    per_problem = [sorted(by_id.get(str(p["id"]), []), key=lambda r: r["sample"]) for p in problems]
    if any(len(samples) != args.n for samples in per_problem):
        raise UserError(f"{output / SAMPLES} is inconsistent with this evaluation (wrong sample counts); "
                        "delete it or use another --output")
    stats = summarize([[r["reward"] for r in s] for s in per_problem], args.n,
                      answers_per_problem=[[r.get("answer") for r in s] for s in per_problem] if comparable else None)
    return {"data": args.data, "model": str(args.model), "reward": reward, "problems": len(problems),
            "n": args.n, **stats, "truncated_frac": sum(r.get("truncated", False) for r in rows) / len(rows),
            "errors": sum("error" in r for r in rows), "temperature": args.temperature, "top_p": args.top_p,
            "max_new_tokens": args.max_new_tokens, "seed": args.seed}


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
