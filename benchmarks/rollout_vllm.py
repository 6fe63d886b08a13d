"""Rollout speed: aspo's own sampler (``rollout.engine=hf``, the lean decode path) against vLLM's CPU build
(``rollout.engine=vllm``, colocated), on the real-model job's prompts, in one process, on one machine.

The job is the SmolLM2 config's rollout: 8 "What is a + b?" prompts (benchmarks/_common.py's pairs, in the
model's chat template) x 8 samples = 64 rows, up to 64 new tokens, temperature 0.7, float32 weights for both.
Both engines wrap the same model object, as in training. The calls alternate (aspo, vLLM, vLLM, aspo, ...)
after one warm-up call each, so a neighbour's load falls on both; each call has its own seed. Tokens per
second counts generated tokens (EOS included) over the call's wall time; CPU seconds beside it.

Run in vLLM's environment (make test-vllm builds it):

    flock /tmp/aspo-heavy.lock nice -n 5 .venv-vllm/bin/python benchmarks/rollout_vllm.py --reps 3
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import cpu_description  # noqa: E402  (the sibling module, after the path line)

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")


def prompts_of_the_job(tokenizer, count: int) -> list[str]:
    from aspo.config import PromptConfig
    from aspo.prompting import format_prompt

    pairs = [(a, b) for a in range(2, 31) for b in range(2, 31)]
    random.Random(0).shuffle(pairs)  # benchmarks/_common.py's build_chat_job order
    cfg = PromptConfig(chat_template=True)
    return [format_prompt({"prompt": f"What is {a} + {b}?"}, cfg, tokenizer) for a, b in pairs[:count]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--reps", type=int, default=3, help="timed calls per engine, interleaved")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from aspo.pretrained import resolve_model
    from aspo.rollout import make_engine

    torch.set_num_threads(args.threads)
    path = resolve_model(args.model)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    prompts = prompts_of_the_job(tokenizer, args.prompts)
    t0 = time.perf_counter()
    engines = {
        "aspo": make_engine("hf", model, tokenizer, add_special_tokens=False),
        "vllm": make_engine("vllm", model, tokenizer, add_special_tokens=False, seed=0),
    }
    vllm_start = time.perf_counter() - t0
    for engine in engines.values():
        engine.sync_weights(model, version=0)
    print(f"CPU: {cpu_description()}; torch threads {torch.get_num_threads()}; load {os.getloadavg()[0]:.2f}")
    print(
        f"job: {args.prompts} prompts x {args.n} = {args.prompts * args.n} rows, "
        f"<= {args.max_new_tokens} new tokens, T={args.temperature}, float32; "
        f"vLLM engine start {vllm_start:.1f} s; "
        f"weight push {engines['vllm'].last_sync_seconds * 1e3:.0f} ms"  # type: ignore[attr-defined]
    )

    def call(name: str, seed: int, rows: int = args.prompts, n: int = args.n, new: int = args.max_new_tokens):
        w0, c0 = time.perf_counter(), time.process_time()
        r = engines[name].generate(
            prompts[:rows], n=n, max_new_tokens=new, temperature=args.temperature, seed=seed
        )
        wall, cpu = time.perf_counter() - w0, time.process_time() - c0
        tokens = float(r.response_mask.sum())
        return {"tokens": tokens, "wall_s": wall, "cpu_s": cpu, "tok_per_s": tokens / wall}

    for name in engines:  # a small warm-up call: first-call allocations, vLLM's first scheduling
        call(name, 10_000, rows=2, n=2, new=8)
    results: dict[str, list[dict[str, float]]] = {name: [] for name in engines}
    order = ["aspo", "vllm"]
    for rep in range(args.reps):
        for name in order if rep % 2 == 0 else order[::-1]:
            row = call(name, rep)
            results[name].append(row)
            print(json.dumps({"engine": name, "rep": rep, **{k: round(v, 3) for k, v in row.items()}}))
    med = {n: statistics.median(r["tok_per_s"] for r in rows) for n, rows in results.items()}
    cpu = {n: sum(r["tokens"] for r in rows) / sum(r["cpu_s"] for r in rows) for n, rows in results.items()}
    print(
        f"median tokens/s (wall): aspo {med['aspo']:.0f}, vLLM {med['vllm']:.0f}; aspo/vLLM "
        f"{med['aspo'] / med['vllm']:.2f}x; tokens per CPU second: aspo {cpu['aspo']:.0f}, vLLM "
        f"{cpu['vllm']:.0f}; load after {os.getloadavg()[0]:.2f}"
    )
    engines["vllm"].close()  # type: ignore[attr-defined]


if __name__ == "__main__":  # vLLM may spawn processes: nothing runs at import
    main()
