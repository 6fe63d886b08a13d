"""`aspo score`: score responses offline with a reward, write them back as JSONL with ``reward``/``error``.

The input is JSONL, Parquet (verl's layout too: ``reward_model.ground_truth`` is the answer) or a `datasets`
save_to_disk directory (``aspo.data.read_records``).

Each input record has ``response`` plus what its reward needs (``answer`` for math; ``tests`` or ``test`` +
``entry_point`` for code; anything for a ``file.py:function`` reward). Scoring goes through
``aspo.rewards.score_records``, so ``code`` runs its sandboxes in parallel on all cores.
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

from aspo.commands.parser import CommandParser
from aspo.errors import UserError


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(
        prog="aspo score",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=textwrap.fill(
            "Score the responses of a JSONL file with a reward and write each record back with `reward` "
            "(float) and `error` (when one occurred; `infrastructure: ...` when the check could not run, "
            "which is not a wrong answer); print a summary.",
            100,
        ),
        epilog="record fields:\n"
        "  math: response, answer (number, text, `#### N` or a solution with \\boxed{})\n"
        "  code: response and tests {inputs, outputs[, fn_name]}, or test + entry_point (HumanEval)\n\n"
        "example:\n  aspo score --reward math --input samples.jsonl --output scored.jsonl",
    )
    parser.add_argument(
        "--reward", required=True, help="math, number, code, arithmetic, countdown, or path/file.py:fn"
    )
    parser.add_argument(
        "--input",
        required=True,
        type=Path,
        help="JSONL with one record per line, a Parquet file or a datasets save_to_disk directory",
    )
    parser.add_argument(
        "--output", required=True, type=Path, help="JSONL to write (records + reward [+ error])"
    )
    parser.add_argument(
        "--workers", type=int, default=None, help="parallel checks (default: cores; code, math)"
    )
    parser.add_argument(
        "--reward-timeout",
        type=float,
        default=None,
        metavar="S",
        help="seconds a path/file.py:fn reward may take per record (default 60; 0: no bound)",
    )
    return parser


def main(argv: list[str]) -> int:
    from aspo.data import read_records
    from aspo.rewards import check_infra, get_reward, score_records

    args = build_parser().parse_args(argv)
    if args.workers is not None and args.workers < 1:
        raise UserError(f"--workers must be >= 1, got {args.workers}")
    fn = get_reward(
        args.reward, timeout=args.reward_timeout
    )  # a bad name or no sandbox fails before any work
    records = read_records(args.input)
    for lineno, record in enumerate(records, 1):
        if not isinstance(record.get("response"), str):
            where = (
                f"{args.input}:{lineno}"
                if args.input.suffix in (".jsonl", ".json")
                else f"{args.input}, row {lineno}"
            )
            raise UserError(f"{where}: record has no 'response' string")
    if args.output.resolve() == args.input.resolve():
        raise UserError("--output must differ from --input (the input would be overwritten while read)")
    start = time.monotonic()
    results = score_records(fn, records, workers=args.workers, stop_on_infra=False)
    elapsed = time.monotonic() - start
    args.output.parent.mkdir(parents=True, exist_ok=True)
    with args.output.open("w", encoding="utf-8") as f:
        for record, result in zip(records, results, strict=True):
            out = {k: v for k, v in record.items() if k not in ("reward", "error")}
            out["reward"] = result.reward
            if result.error is not None:
                out["error"] = result.error
            f.write(json.dumps(out, ensure_ascii=False, default=str) + "\n")
    print(_summary(args.reward, results, elapsed, args.output))
    check_infra(results)  # after writing: the records that did score are kept
    return 0


def _summary(reward: str, results: list, elapsed: float, output: Path) -> str:
    n = len(results)
    if n == 0:
        return f"aspo score: no records; wrote an empty {output}"
    mean = sum(r.reward for r in results) / n
    full = sum(r.reward >= 1.0 for r in results)
    errors = Counter(r.error.split(":")[0] for r in results if r.error)
    lines = [
        f"aspo score ({reward}): {n} records in {elapsed:.1f}s ({n / max(elapsed, 1e-9):.1f}/s)",
        f"  mean reward {mean:.4f}; reward >= 1: {full}/{n} ({full / n:.1%}); errors: {sum(errors.values())} "
        f"(of which could not run: {sum(r.infra for r in results)})",
    ]
    lines += [f"    {count:>6}  {kind}" for kind, count in errors.most_common(5)]
    lines.append(f"  wrote {output}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
