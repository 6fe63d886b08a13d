"""`aspo eval`: sample K responses per problem, score them, report avg@K, pass@1, pass@K (and maj@K).

Writes into ``--output``: ``samples.jsonl`` (one row per sample: problem ``id``, ``sample``, ``response``,
``reward`` [, ``error``, ``answer``], and on sample 0 the ``prompt`` text the model saw), ``summary.json`` and
``eval_config.json`` (the settings, the resolved prompt formatting included). Problems are processed in
fixed batches, each seeded from ``--seed`` and its position, and a batch is appended only once it is fully
scored; rerunning the same command resumes after the last complete batch and gives the same samples as an
uninterrupted run.

Prompts follow the one rule of ``aspo.prompting`` (the same function `aspo train` uses). The formatting
settings come from, in order: the explicit flags (``--prompt-template``, ``--chat-template`` /
``--no-chat-template``, ``--system``, ``--instruction``); else, for a checkpoint inside a run directory
(``<run>/checkpoints/step-N``), the ``prompt`` section of ``<run>/config.yaml`` -- the formatting that run
trained with; else ``aspo.prompting.eval_defaults`` (chat template with the reward's standard instruction
when the tokenizer has one, else the bare ``{prompt}``).

For math, each sample's ``answer`` is the final answer that earned its reward (the reward's own
extraction, None when it stated none) and maj@K votes over classes of answers equal under the reward's
equivalence (math-verify), so a reward-1 sample always has an answer and maj@K <= pass@K.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import re
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

from aspo.commands.eval_checks import (
    mismatch_notes,
    require_answers,
    run_prompt_config,
    run_tree,
    scoring_errors,
)
from aspo.commands.parser import CommandParser
from aspo.config import PromptConfig
from aspo.errors import UserError
from aspo.prompting import eval_defaults

SAMPLES, SUMMARY, SETTINGS = "samples.jsonl", "summary.json", "eval_config.json"
# settings that change the samples: a resumed run must match them
_SAMPLE_SETTINGS = (
    "model",
    "data",
    "reward",
    "n",
    "temperature",
    "top_p",
    "max_new_tokens",
    "seed",
    "batch_size",
    "limit",
    "prompt",
)
_PROMPT_FLAGS = {
    "prompt_template": "template",
    "chat_template": "chat_template",
    "system": "system",
    "instruction": "instruction",
}


def build_parser() -> argparse.ArgumentParser:
    from aspo.evalsets import BENCHMARKS

    parser = CommandParser(
        prog="aspo eval",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=textwrap.fill(
            "Sample K responses per problem from a local checkpoint, score them with a reward and write "
            "summary.json (avg@K, pass@1, pass@K with the unbiased estimator of Chen et al. 2021, maj@K for "
            "math) and samples.jsonl. Rerun the same command to resume an interrupted evaluation.",
            100,
        ),
        epilog=f"benchmarks: {', '.join(BENCHMARKS)};\n"
        "  lab:TASK[:N] (the held-out split `aspo train` evaluates);\n"
        "  or a JSONL / Parquet file or datasets directory with prompt/answer fields\n\n"
        "example:\n"
        "  aspo eval --model runs/x/checkpoints/step-60 --data gsm8k --n 8 --output runs/eval-gsm8k",
    )
    parser.add_argument(
        "--model",
        required=True,
        help="checkpoint directory (save_pretrained: model + tokenizer), "
        "a .gguf file, or smollm2-135m-instruct",
    )
    parser.add_argument(
        "--data",
        required=True,
        help="benchmark name, lab:TASK[:N], or a JSONL / Parquet file or datasets directory",
    )
    parser.add_argument(
        "--reward",
        default=None,
        help="math, number, code, a lab task reward, or path/file.py:fn (default: the benchmark's own)",
    )
    parser.add_argument("--n", type=int, default=1, help="samples per problem K (default 1)")
    parser.add_argument("--temperature", type=float, default=0.6, help="sampling temperature (default 0.6)")
    parser.add_argument("--top-p", type=float, default=0.95, help="nucleus sampling mass (default 0.95)")
    parser.add_argument("--max-new-tokens", type=int, default=1024, help="response length cap (default 1024)")
    parser.add_argument(
        "--output", type=Path, default=None, help="output directory (default runs/eval-<data>)"
    )
    parser.add_argument("--batch-size", type=int, default=8, help="problems per generation batch (default 8)")
    parser.add_argument("--limit", type=int, default=0, help="evaluate only the first N problems (0: all)")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    parser.add_argument(
        "--precision",
        choices=("auto", "fp32", "bf16"),
        default="auto",
        help="matmul precision of sampling, as train.precision (default auto: bf16 on CUDA, and on a CPU "
        "with AMX for a model of >= 50M parameters; else fp32)",
    )
    parser.add_argument(
        "--prompt-template",
        default=None,
        help="user-message template, {prompt} and record fields (default: the run's, else {prompt})",
    )
    parser.add_argument(
        "--chat-template",
        dest="chat_template",
        action="store_true",
        default=None,
        help="wrap prompts in the tokenizer's chat template (default: the run's setting, else "
        "whether the tokenizer has one)",
    )
    parser.add_argument(
        "--no-chat-template",
        dest="chat_template",
        action="store_false",
        help="format prompts as plain text even if the tokenizer has a chat template",
    )
    parser.add_argument("--system", default=None, help="system message (default: the run's, else none)")
    parser.add_argument(
        "--instruction",
        default=None,
        help="text appended to the user message (default: the run's, else the reward's standard "
        "instruction with a chat template)",
    )
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
    from aspo.pretrained import model_source

    model_source(args.model)  # a checkpoint directory, a .gguf file or a model name; else a UserError


def _load_tokenizer(path: str) -> Any:
    from transformers import AutoTokenizer

    from aspo.pretrained import resolve_model

    path = resolve_model(path)  # a model name or .gguf file: its cached checkpoint (converted on first use)
    try:
        return AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as err:
        raise UserError(f"cannot load a tokenizer from {path!r}: {err}") from err


def _load_model(path: str, device: str | None) -> tuple[Any, Any, str]:
    import torch

    from aspo.pretrained import load_checkpoint, resolve_model
    from aspo.threads import apply_threads

    apply_threads()
    path = resolve_model(path)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model, tokenizer = load_checkpoint(path, torch.bfloat16 if device.startswith("cuda") else torch.float32)
    return model.to(device).eval(), tokenizer, device


def resolve_prompt_config(
    args: argparse.Namespace, reward: str, problems: list[dict], tokenizer: Any
) -> PromptConfig:
    """Explicit flags over the run's own formatting over the eval defaults (see the module docstring)."""
    base = run_prompt_config(args.model) or eval_defaults(reward, problems, tokenizer)
    explicit = {
        field: getattr(args, flag) for flag, field in _PROMPT_FLAGS.items() if getattr(args, flag) is not None
    }
    return dataclasses.replace(base, **explicit)


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
            raise UserError(
                f"{output} holds an evaluation with different settings ({', '.join(diff)}); "
                "use another --output or the same settings to resume"
            )
    else:
        output.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(settings, indent=2) + "\n")


def main(argv: list[str]) -> int:
    from aspo.evalsets import DEFAULT_REWARD, lab_reward, load_benchmark
    from aspo.evaluate import summarize
    from aspo.rewards import check_reward_spec, get_reward

    args = build_parser().parse_args(argv)
    _validate(args)
    if args.reward:  # a misspelt reward is named before the data it would score
        check_reward_spec(args.reward)
    problems = load_benchmark(args.data)
    reward = args.reward or DEFAULT_REWARD.get(args.data) or lab_reward(args.data)
    if reward is None:
        raise UserError(
            f"--reward is required for data {args.data!r} (math, number, code, or path/file.py:fn)"
        )
    reward_fn = get_reward(reward)
    if args.limit:
        problems = problems[: args.limit]
    if not problems:
        raise UserError(f"no problems in {args.data!r}")
    require_answers(problems, reward, args.data)
    output = args.output or Path("runs") / f"eval-{re.sub(r'[^A-Za-z0-9._-]+', '-', Path(args.data).stem)}"
    tokenizer = _load_tokenizer(args.model)
    prompt_cfg = resolve_prompt_config(args, reward, problems, tokenizer)
    for note in mismatch_notes(run_tree(args.model), args.data, reward, prompt_cfg, tokenizer):
        print(f"aspo eval: warning: {note}", file=sys.stderr)
    settings = {k: getattr(args, k) for k in _SAMPLE_SETTINGS if k not in ("reward", "prompt")} | {
        "reward": reward,
        "prompt": dataclasses.asdict(prompt_cfg),
    }
    _check_settings(output, settings)

    samples_path = output / SAMPLES
    batches = [problems[i : i + args.batch_size] for i in range(0, len(problems), args.batch_size)]
    rows = _read_done(samples_path)
    done_batches, kept = 0, 0
    for batch in batches:  # only whole batches count as done
        if len(rows) < kept + len(batch) * args.n:
            break
        done_batches, kept = done_batches + 1, kept + len(batch) * args.n
    rows = rows[:kept]
    # rewrite what is kept: drops a partly written batch or a torn line
    samples_path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    # a reward that extracts answers says how to compare them (math: math-verify); maj@K needs it
    answer_classes = getattr(inspect.getmodule(reward_fn), "answer_classes", None)
    if done_batches < len(batches):
        _generate(
            args, prompt_cfg, reward_fn, batches, done_batches, samples_path, answer_classes is not None
        )
    rows = _read_done(samples_path)
    summary = _summarize(rows, problems, args, reward, answer_classes, summarize, output)
    (output / SUMMARY).write_text(json.dumps(summary, indent=2) + "\n")
    errors = scoring_errors(rows, samples_path)  # most samples unscored: an error, after the summary is kept
    metrics = ", ".join(f"{k} {summary[k]:.4f}" for k in summary if "@" in k)
    print(
        f"aspo eval: {args.data} ({len(problems)} problems x {args.n}): {metrics}\n  wrote {output / SUMMARY}"
    )
    if errors:
        print(f"aspo eval: warning: {errors}", file=sys.stderr)
    return 0


def _generate(
    args: argparse.Namespace,
    prompt_cfg: PromptConfig,
    reward_fn: Any,
    batches: list[list[dict]],
    start_batch: int,
    samples_path: Path,
    with_answers: bool,
) -> None:
    from tqdm.auto import tqdm

    from aspo.evaluate import sample_policy
    from aspo.precision import resolve_precision
    from aspo.prompting import format_prompt, uses_chat_template
    from aspo.rollout import HFEngine

    model, tokenizer, device = _load_model(args.model, args.device)
    engine = HFEngine(model, tokenizer, add_special_tokens=not uses_chat_template(prompt_cfg, tokenizer))
    engine.precision = resolve_precision(args.precision, device, model)
    print(f"aspo eval: {engine.precision.describe()}", file=sys.stderr)
    total = sum(len(b) for b in batches)
    done = sum(len(b) for b in batches[:start_batch])
    bar = tqdm(
        total=total, initial=done, desc="aspo eval", unit="problem", dynamic_ncols=True, file=sys.stderr
    )
    try:
        for index in range(start_batch, len(batches)):
            batch = batches[index]
            prompts = [format_prompt(p, prompt_cfg, tokenizer) for p in batch]
            started = time.monotonic()
            _, sampled = sample_policy(
                engine,
                batch,
                prompts,
                reward_fn,
                n=args.n,
                max_new_tokens=args.max_new_tokens,
                temperature=args.temperature,
                top_p=args.top_p,
                seed=args.seed * 1_000_003 + index,
            )
            lines = []
            for sample in sampled:
                row = {
                    "id": batch[sample["index"]]["id"],
                    "sample": sample["sample"],
                    "response": sample["response"],
                    "reward": sample["reward"],
                    "truncated": sample["truncated"],
                    "length": sample["length"],
                }
                if sample["error"]:
                    row["error"] = sample["error"]
                if sample["unscored"]:  # the reward failed: no verdict on this response
                    row["unscored"] = True
                if with_answers:  # the answer that earned the reward, from the reward itself
                    row["answer"] = sample["answer"]
                if sample["sample"] == 0:  # what the model saw, once per problem
                    row["prompt"] = prompts[sample["index"]]
                lines.append(json.dumps(row, ensure_ascii=False) + "\n")
            with samples_path.open("a", encoding="utf-8") as f:  # whole batch at once: resumable
                f.write("".join(lines))
            bar.update(len(batch))
            bar.set_postfix(
                reward=f"{sum(r['reward'] for r in sampled) / len(sampled):.3f}",
                s_per_batch=f"{time.monotonic() - started:.1f}",
            )
    finally:
        bar.close()


def _summarize(
    rows: list[dict],
    problems: list[dict],
    args: argparse.Namespace,
    reward: str,
    answer_classes: Any,
    summarize: Any,
    output: Path,
) -> dict[str, Any]:
    by_id: dict[str, list[dict]] = {}
    for row in rows:
        by_id.setdefault(str(row["id"]), []).append(row)
    per_problem = [sorted(by_id.get(str(p["id"]), []), key=lambda r: r["sample"]) for p in problems]
    if any(len(samples) != args.n for samples in per_problem):
        raise UserError(
            f"{output / SAMPLES} is inconsistent with this evaluation (wrong sample counts); "
            "delete it or use another --output"
        )
    votes = None
    if answer_classes is not None:  # maj@K votes over the first K samples, on classes of equivalent answers
        votes = [answer_classes([r.get("answer") for r in s[: args.n]]) for s in per_problem]
    stats = summarize([[r["reward"] for r in s] for s in per_problem], args.n, answers_per_problem=votes)
    return {
        "data": args.data,
        "model": str(args.model),
        "reward": reward,
        "problems": len(problems),
        "n": args.n,
        **stats,
        "truncated_frac": sum(r.get("truncated", False) for r in rows) / len(rows),
        "errors": sum("error" in r for r in rows),
        "unscored": sum(bool(r.get("unscored")) for r in rows),
        "temperature": args.temperature,
        "top_p": args.top_p,
        "max_new_tokens": args.max_new_tokens,
        "seed": args.seed,
    }


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
