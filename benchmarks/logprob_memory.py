"""Peak memory and time of one training forward + backward through ``token_logprobs``: the LM head chunked
over tokens (the default) against the whole batch's full-vocabulary logits at once (``chunk=0``, the path
before chunking), and the chunked head with each decoder layer checkpointed
(``train.activation_checkpointing``).

    .venv/bin/python benchmarks/logprob_memory.py --model DIR [--prompts 8 --n 8 --tokens 64 --repeats 3]
        [--modes full,chunked,checkpointed]

DIR is a local transformers checkpoint of a Llama-style model (e.g. SmolLM2-135M-Instruct). The batch is
what one sampling round of the real-model job gives the update: ``prompts`` chat-templated arithmetic
questions (about 40 tokens each) x ``n`` responses of ``tokens`` tokens (random ids, every one valid).
Each measurement is a fresh process on one thread, modes interleaved round by round; a child reports its
baseline resident memory (model and batch loaded), its peak after one forward + backward (gradients
included), and the median wall and CPU time of ``--passes`` further forward + backward passes. The
ratios (chunked / full) are the result; absolute times depend on the machine and its load (printed with
them; on a shared machine the CPU time is the steadier measure).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODES = {"full": 0, "chunked": None, "checkpointed": None}  # token_logprobs(chunk=...)


def child(args: argparse.Namespace) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from aspo.models import enable_activation_checkpointing, token_logprobs

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).train()
    if args.child == "checkpointed":
        enable_activation_checkpointing(model)
    questions = [
        f"What is {17 * i + 3} plus {29 * i + 11}? Answer with the number only." for i in range(args.prompts)
    ]
    texts = [
        tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
        for q in questions
    ]
    tok.padding_side = "left"
    enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    prompt_ids = enc["input_ids"].repeat_interleave(args.n, 0)
    prompt_mask = enc["attention_mask"].bool().repeat_interleave(args.n, 0)
    rows = prompt_ids.shape[0]
    response_ids = torch.randint(len(tok), (rows, args.tokens))
    response_mask = torch.ones(rows, args.tokens, dtype=torch.bool)
    advantages = torch.randn(rows, 1)

    size = args.micro_batch or rows

    def step() -> tuple[float, float]:
        """One forward + backward over the batch (micro-batch by micro-batch, as train.micro_batch_size)."""
        start, cpu = time.perf_counter(), time.process_time()
        for i in range(0, rows, size):
            part = slice(i, i + size)
            logp, ent = token_logprobs(
                model,
                prompt_ids[part],
                prompt_mask[part],
                response_ids[part],
                response_mask[part],
                temperature=0.7,
                chunk=MODES[args.child],
            )
            ((logp * advantages[part]).sum() + 0.01 * ent.sum()).backward()
        return time.perf_counter() - start, time.process_time() - cpu

    base_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    first = step()
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    times = [step() for _ in range(args.passes)] or [first]
    print(
        json.dumps(
            {
                "base_mb": base_mb,
                "peak_mb": peak_mb,
                "time_s": statistics.median(t[0] for t in times),
                "cpu_s": statistics.median(t[1] for t in times),
                "prompt_tokens": int(enc["attention_mask"].sum(-1).float().mean()),
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="local transformers checkpoint directory")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--n", type=int, default=8, help="responses per prompt")
    parser.add_argument("--tokens", type=int, default=64, help="tokens per response")
    parser.add_argument("--repeats", type=int, default=3, help="fresh processes per mode (interleaved)")
    parser.add_argument(
        "--passes",
        type=int,
        default=1,
        help="timed forward + backward passes per process after the first (0: time the first)",
    )
    parser.add_argument(
        "--micro-batch", type=int, default=0, help="rows per forward + backward (0: all at once)"
    )
    parser.add_argument(
        "--modes", default=",".join(MODES), help=f"comma-separated, of {', '.join(MODES)} (default: all)"
    )
    parser.add_argument("--child", choices=sorted(MODES), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    env = dict(
        os.environ,
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        TOKENIZERS_PARALLELISM="false",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        PYTHONWARNINGS="ignore",
    )
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT / "src"), env.get("PYTHONPATH")) if p)
    modes = [m for m in args.modes.split(",") if m]
    if not modes or any(m not in MODES for m in modes):
        parser.error(f"--modes: choose from {', '.join(MODES)}")
    results: dict[str, list[dict]] = {mode: [] for mode in modes}
    for _ in range(args.repeats):
        for mode in modes:
            cmd = [
                sys.executable,
                __file__,
                "--child",
                mode,
                "--model",
                args.model,
                "--prompts",
                str(args.prompts),
                "--n",
                str(args.n),
                "--tokens",
                str(args.tokens),
                "--passes",
                str(args.passes),
                "--micro-batch",
                str(args.micro_batch),
            ]
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
            results[mode].append(json.loads(out.stdout.strip().splitlines()[-1]))
    med = {
        mode: {key: statistics.median(r[key] for r in rs) for key in rs[0]} for mode, rs in results.items()
    }
    one, five, _ = os.getloadavg()
    print(
        f"{args.prompts} prompts (~{med[modes[0]]['prompt_tokens']:.0f} tokens) x {args.n} responses x "
        f"{args.tokens} tokens, micro-batch {args.micro_batch or 'all'}, one thread, "
        f"medians of {args.repeats} processes per mode; "
        f"load {one:.2f}/{five:.2f} on {os.cpu_count()} cores"
    )
    print(
        f"{'mode':12} {'baseline MB':>12} {'peak MB':>9} {'peak - baseline':>16} "
        f"{'fwd+bwd s':>10} {'CPU s':>8}"
    )
    for mode, m in med.items():
        print(
            f"{mode:12} {m['base_mb']:12.0f} {m['peak_mb']:9.0f} {m['peak_mb'] - m['base_mb']:16.0f} "
            f"{m['time_s']:10.2f} {m['cpu_s']:8.2f}"
        )
    for new, old in (("chunked", "full"), ("checkpointed", "chunked")):
        if new in med and old in med:
            a, b = med[new], med[old]
            print(
                f"{new} / {old}: peak RSS {a['peak_mb'] / b['peak_mb']:.2f}x, peak above baseline "
                f"{(a['peak_mb'] - a['base_mb']) / (b['peak_mb'] - b['base_mb']):.2f}x, "
                f"wall time {a['time_s'] / b['time_s']:.2f}x, CPU time {a['cpu_s'] / b['cpu_s']:.2f}x"
            )


if __name__ == "__main__":
    main()
