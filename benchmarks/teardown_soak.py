"""Two-process runs that must end: N consecutive `aspo train` runs beside a busy core, counting hangs.

usage: python benchmarks/teardown_soak.py --runs N [--kinds K,...] [--bound S] [--out DIR] [--spinners 1]

Each run is a whole 2-process `aspo train` (1 step of the tiny random Qwen2 of the tests, a checkpoint and
the final eval, then the teardown), started by ``torchrun`` or ``accelerate launch``, data parallel (DDP) or
sharded (``train.fsdp=true``); ``--kinds`` cycles through them (default: all four). ``sigterm-*`` kinds run
the SIGTERM cases of tests/test_distributed.py instead (tests/dist/signal_at.py: rank 1 signals itself
mid-run or after training, or signals the launcher). A run still alive after ``--bound`` seconds is a hang:
each rank's threads are dumped with gdb (when installed) into DIR/hang-I-PID.txt, then every process of the
run is killed. Meanwhile ``--spinners`` processes each keep a core busy (a busy core is what made the gloo
teardown deadlock show up: 1 in ~8-25 runs before it was fixed).

Writes DIR/runs.jsonl (one line a run) and prints the counts, the per-run wall time (median, max) and the
CPU. Exit status 1 when any run hung or ended other than expected.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import cpu_description  # noqa: E402  (the sibling module, after the path line)

PY = sys.executable
ACCELERATE = [PY, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
ACCELERATE += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
ACCELERATE += ["--main_process_port", "0"]
TORCHRUN = [PY, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
TRAIN_KINDS = ("torchrun-ddp", "accelerate-ddp", "torchrun-fsdp", "accelerate-fsdp")
# (signal_at.py arguments, the launcher's expected exit status): as in tests/test_distributed.py
SIGTERM_KINDS = {
    "sigterm-rank-mid-run": (["1", "step-1", "self"], 1),
    "sigterm-rank-finished": (["1", "finished", "self"], 0),
    "sigterm-launcher": (["0", "step-1", "launcher"], None),  # passed on by accelerate: 1, 143 or -15
}
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def tiny_inputs(root: Path) -> Path:
    """The tests' tiny run inputs (tests/conftest.py tiny_run_inputs), built once."""
    if (root / "model" / "config.json").is_file():
        return root
    from aspo.lab import build_model, build_tokenizer, get_task

    tokenizer = build_tokenizer()
    model = build_model(
        tokenizer, seed=0, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64
    )
    model.save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    for split, n in (("train", 16), ("test", 4)):
        with open(root / f"{split}.jsonl", "w") as fh:
            for record in get_task("arithmetic").make_split(split, n, seed=0):
                fh.write(json.dumps(record) + "\n")
    return root


def overrides(inputs: Path, out: Path, *extra: str) -> list[str]:
    return [
        f"model={inputs / 'model'}",
        f"data.train={inputs / 'train.jsonl'}",
        f"data.test={inputs / 'test.jsonl'}",
        f"reward={ROOT / 'tests' / 'data' / 'rewards.py'}:digit_share",
        "rollout.n=2",
        "rollout.max_new_tokens=4",
        "train.prompts_per_step=2",
        "train.mini_batches=1",
        "train.epochs=1",
        "train.save_every=1",
        "train.eval_every=0",
        "data.num_test=2",
        "eval.n=1",
        "train.device=cpu",
        "train.threads=1",
        "train.plots=false",
        "train.report_to=none",
        f"output_dir={out}",
        *extra,
    ]


def command(kind: str, inputs: Path, out: Path) -> tuple[list[str], int | None]:
    """(command line, expected exit status; None: 1, 143 or -15)."""
    if kind in SIGTERM_KINDS:
        args, status = SIGTERM_KINDS[kind]
        script = str(ROOT / "tests" / "dist" / "signal_at.py")
        return [*ACCELERATE, script, *args, *overrides(inputs, out, "train.steps=2")], status
    launcher, sharding = kind.split("-")
    extra = ["train.steps=1"] + (["train.fsdp=true"] if sharding == "fsdp" else [])
    launch = TORCHRUN if launcher == "torchrun" else ACCELERATE
    return [*launch, "-m", "aspo", "train", *overrides(inputs, out, *extra)], 0


def descendants(pid: int) -> list[int]:
    import psutil

    try:
        return [p.pid for p in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def dump_stacks(pids: list[int], out: Path, index: int) -> None:
    for pid in pids:
        try:
            trace = subprocess.run(
                ["gdb", "-p", str(pid), "-batch", "-ex", "thread apply all bt 12"],
                capture_output=True,
                text=True,
                timeout=60,
            ).stdout
        except (OSError, subprocess.TimeoutExpired) as err:
            trace = f"gdb failed: {err}"
        (out / f"hang-{index}-{pid}.txt").write_text(trace)


def one_run(index: int, kind: str, inputs: Path, out: Path, bound: float) -> dict:
    with tempfile.TemporaryDirectory(prefix="soak-run-") as tmp:
        cmd, expected = command(kind, inputs, Path(tmp) / "run")
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=ENV)
        hung = False
        try:
            _, stderr = proc.communicate(timeout=bound)
        except subprocess.TimeoutExpired:
            hung = True
            pids = descendants(proc.pid)
            dump_stacks(pids, out, index)
            for pid in [*pids, proc.pid]:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            _, stderr = proc.communicate()
        wall = time.perf_counter() - start
    ok = not hung and (proc.returncode in (1, 143, -15) if expected is None else proc.returncode == expected)
    row = {"run": index, "kind": kind, "status": proc.returncode, "wall_s": round(wall, 2), "hung": hung}
    row["ok"] = ok
    if not ok:
        row["stderr_tail"] = stderr[-2000:]
    return row


def spread(rows: list[dict]) -> str:
    walls = [r["wall_s"] for r in rows if not r["hung"]]
    if not walls:
        return "no run ended"
    return f"wall median {statistics.median(walls):.1f} s, max {max(walls):.1f} s"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--kinds", default=",".join(TRAIN_KINDS), help="comma-separated, cycled")
    parser.add_argument("--bound", type=float, default=120.0, help="seconds before a run counts as hung")
    parser.add_argument("--spinners", type=int, default=1, help="processes keeping a core busy each")
    parser.add_argument("--out", type=Path, default=Path("runs/teardown_soak"))
    args = parser.parse_args()
    kinds = args.kinds.split(",")
    unknown = [k for k in kinds if k not in TRAIN_KINDS and k not in SIGTERM_KINDS]
    if unknown:
        sys.exit(f"teardown_soak: unknown kind(s) {unknown}; known: {[*TRAIN_KINDS, *SIGTERM_KINDS]}")
    args.out.mkdir(parents=True, exist_ok=True)
    inputs = tiny_inputs(args.out / "inputs")
    spin = "while True: pass"
    spinners = [subprocess.Popen([PY, "-c", spin]) for _ in range(args.spinners)]
    rows = []
    try:
        with open(args.out / "runs.jsonl", "a") as log:
            for index in range(args.runs):
                row = one_run(index, kinds[index % len(kinds)], inputs, args.out, args.bound)
                row["load1"] = round(os.getloadavg()[0], 2)
                rows.append(row)
                log.write(json.dumps(row) + "\n")
                log.flush()
                flag = "HUNG" if row["hung"] else ("ok" if row["ok"] else f"FAILED ({row['status']})")
                print(f"run {index} {row['kind']}: {row['wall_s']} s {flag}", flush=True)
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()
    print(f"CPU: {cpu_description()}; {args.spinners} spinner(s); bound {args.bound} s")
    for kind in dict.fromkeys(r["kind"] for r in rows):
        mine = [r for r in rows if r["kind"] == kind]
        hangs = sum(r["hung"] for r in mine)
        failed = sum(not r["ok"] and not r["hung"] for r in mine)
        print(f"{kind}: {len(mine)} runs, {hangs} hung, {failed} failed otherwise; {spread(mine)}")
    hangs = sum(r["hung"] for r in rows)
    failed = sum(not r["ok"] for r in rows)
    print(f"all: {len(rows)} runs, {hangs} hung; {spread(rows)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
