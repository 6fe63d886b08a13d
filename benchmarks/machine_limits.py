"""The machine's limits and the real-model job's distance to them: matmul peak, memory bandwidth, update
MFU, decode tokens/s against its bound.

    .venv/bin/python benchmarks/machine_limits.py [--threads 1] [--model DIR] [--steps 1] [--profile]
        [key=value ...]

1. Measures, at ``--threads`` torch threads, the sustained float32 and bfloat16 matmul throughput at the
   model's own shapes (the CPU's bf16 flags printed: without amx_bf16 / avx512_bf16 bf16 is emulated): every
   GEMM of the update (forward ``x @ W.T``, input gradient ``g @ W``, weight gradient ``g.T @ x``) for each
   projection of a decoder layer at ``--rows`` tokens and for the tied LM head at the chunked head's chunk
   of tokens; and the decode step's GEMMs at ``--decode-rows`` rows (the head's forward also as
   ``aspo.models.head.head_logits`` computes it, in vocabulary blocks). Each is timed for about
   ``--seconds`` of CPU; the "mix" figure is what the machine attains on the job's FLOP mix (sum of FLOPs /
   sum of FLOPs / rate, weighted by parameters x layers, each GEMM the faster way measured), the reference
   for the targets. Also a STREAM-like copy and triad on 256 MB arrays (the L3 is tens of MB).
2. Runs the SmolLM2 config's job in this process (in the precision ``train.precision`` resolves to: pass
   ``train.precision=bf16`` to run it in bf16; MFU is against that precision's peaks, and also the other's)
   (``configs/smollm2-arithmetic.yaml`` with one update on all responses, groups without signal kept: 8 chat
   prompts x 8 samples, 64 new tokens, T=0.7) for ``--steps`` steps, and reports
   - update: model FLOPs / forward + backward CPU seconds as a fraction of the mix peak (MFU), with model
     FLOPs = 6 x (matmul parameters) x (tokens computed) + attention over the real (causal) query-key pairs,
     and separately the hardware FLOPs: what the kernels run, padding of attention and the recompute of
     activation checkpointing and of the chunked head's backward included (``_flops.update_flops``);
   - decode: generated tokens/s against the bound of each decode step, the slower of reading the weights
     (and the KV cache) once at the measured bandwidth and computing its FLOPs at the decode-rows peak,
     summed over the steps the sampler really took with the rows it really had (``_flops.decode_bound``).
Rates and fractions are per CPU second of this process (with one thread, the time it held a core: a
neighbour's time slices are not counted, its share of caches and memory bus is); wall seconds, the load
and the busiest processes are printed beside them. ``--profile`` adds torch.profiler's per-op table of
one more step (sample + update).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "configs" / "smollm2-arithmetic.yaml"
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import cpu_description  # noqa: E402  (the sibling modules)
from _flops import Shape, decode_bound, decode_flops, update_flops  # noqa: E402

# -- the machine ------------------------------------------------------------------------------------


def _rate(fn: Any, flops: float, seconds: float) -> float:
    """Sustained FLOP per CPU second of fn(): the median of 3 timed batches of about seconds / 3 each."""
    fn()
    start = time.process_time()
    fn()
    once = max(time.process_time() - start, 1e-6)
    reps = max(1, int(seconds / 3 / once))
    rates = []
    for _ in range(3):
        start = time.process_time()
        for _ in range(reps):
            fn()
        rates.append(flops * reps / (time.process_time() - start))
    return statistics.median(rates)


def matmul_rates(
    shape: Shape, rows: int, chunk: int, decode_rows: int, seconds: float, dtype: str = "float32"
) -> dict[str, Any]:
    """FLOP/s of each GEMM of the update (``rows`` tokens through the layers, ``chunk`` through the head)
    and of the decode step (``decode_rows``), in ``dtype`` (float32 or bfloat16: the operands in that
    dtype, as autocast hands them to the kernels); and the mix each job phase attains."""
    import torch

    from aspo.models.head import VOCAB_BLOCK, head_logits

    kind_of = getattr(torch, dtype)

    def gemms(m: int, k: int, n: int, backward: bool) -> list[tuple[str, float]]:
        x, w = torch.randn(m, k).to(kind_of), torch.randn(n, k).to(kind_of)
        out = [("fwd", _rate(lambda: x @ w.t(), 2.0 * m * k * n, seconds))]
        if n > 2 * VOCAB_BLOCK:  # the LM head: also as aspo computes it; the mix takes the faster
            out.append(("fwd, blocks", _rate(lambda: head_logits(x, w, None), 2.0 * m * k * n, seconds)))
        if backward:
            g = torch.randn(m, n).to(kind_of)
            out.append(("dx", _rate(lambda: g @ w, 2.0 * m * k * n, seconds)))
            out.append(("dw", _rate(lambda: g.t() @ x, 2.0 * m * k * n, seconds)))
        return out

    matrices = [(name, k, n, shape.layers) for name, k, n in shape.layer_matrices()]
    matrices.append(("lm_head", shape.hidden, shape.vocab, 1))
    table: list[tuple[str, int, int, int, str, float]] = []
    cache: dict[tuple[int, int, int, bool], list[tuple[str, float]]] = {}
    mix: dict[str, float] = {}
    for phase, backward in (("update", True), ("decode", False)):
        flops = seconds_at_rate = 0.0
        for name, k, n, count in matrices:
            m = decode_rows if phase == "decode" else (chunk if name == "lm_head" else rows)
            key = (m, k, n, backward)
            if key not in cache:  # k and v share a shape
                cache[key] = gemms(m, k, n, backward)
            for kind, rate in cache[key]:
                table.append((name, m, k, n, kind, rate))
            best: dict[str, float] = {}  # per pass (fwd, dx, dw): the fastest way measured
            for kind, rate in cache[key]:
                best[kind.split(",")[0]] = max(rate, best.get(kind.split(",")[0], 0.0))
            for rate in best.values():
                flops += count * k * n
                seconds_at_rate += count * k * n / rate
        mix[phase] = flops / seconds_at_rate
    return {"table": table, **mix}


def bandwidth(mb: int = 256, reps: int = 5) -> dict[str, float]:
    """STREAM-like copy (a = b: 2 x size bytes) and triad (a = b + s c: 3 x size), bytes per CPU second,
    medians."""
    import torch

    n = mb * (1 << 20) // 4
    a, b, c = torch.empty(n), torch.randn(n), torch.randn(n)
    out = {}
    for name, fn, moved in (
        ("copy", lambda: a.copy_(b), 2),
        ("triad", lambda: torch.add(b, c, alpha=3.0, out=a), 3),
    ):
        fn()
        times = []
        for _ in range(reps):
            start = time.process_time()
            fn()
            times.append(time.process_time() - start)
        out[name] = moved * n * 4 / statistics.median(times)
    return out


# -- the job ----------------------------------------------------------------------------------------


@dataclass
class JobRecord:
    """What the instrumented trainer did: per sampling call (seconds, rows per decode step, prompt width,
    distinct prompts, generated tokens), per forward + backward (seconds, checkpointing, the batch's
    prompt ids and masks), per optimizer step (seconds); the model's shape and weight bytes."""

    decodes: list[dict[str, Any]]
    updates: list[dict[str, Any]]
    optimizer_s: list[float]
    shape: Shape | None = None
    precision: str = "fp32"  # what the trainer resolved train.precision to
    weight_bytes: float = 0.0
    profile: str | None = None


def run_job(args: argparse.Namespace, overrides: list[str]) -> JobRecord:
    """``--steps`` training steps of the SmolLM2 job in this process, timed phase by phase (and, with
    ``--profile``, one more under torch.profiler)."""
    import torch

    import aspo.rollout.hf as hf  # its module globals are what the sampler calls: patched below
    from aspo.config import load_config
    from aspo.models.llama import distinct_prompts
    from aspo.models.logprobs import checkpointed
    from aspo.trainer import Trainer
    from aspo.update import PolicyUpdate

    record = JobRecord([], [], [])
    rows_seen: list[int] = []
    sample_token, lean_decode = hf.sample_token, hf.lean_decode
    backward, optimizer_step = PolicyUpdate.backward, Trainer.optimizer_step

    def counting_sample_token(logits: torch.Tensor, *a: Any, **k: Any) -> Any:
        rows_seen.append(logits.shape[0])
        return sample_token(logits, *a, **k)

    def timed_decode(model: Any, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, *a: Any) -> Any:
        rows_seen.clear()
        start, cpu = time.perf_counter(), time.process_time()
        out = lean_decode(model, prompt_ids, prompt_mask, *a)
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
        first_row, _ = distinct_prompts(prompt_ids, prompt_mask)
        record.decodes.append(
            {
                "seconds": seconds,
                "cpu": cpu,
                "rows_per_step": list(rows_seen),
                "prompt_width": prompt_ids.shape[1],
                "prompts": len(first_row),
                "tokens": int(out[1].sum()),
            }
        )
        return out

    def timed_backward(self: Any, mini: Any, **options: Any) -> Any:
        layer = getattr(self.model, "module", self.model).model.layers[0]
        start, cpu = time.perf_counter(), time.process_time()
        out = backward(self, mini, **options)
        record.updates.append(
            {
                "seconds": time.perf_counter() - start,
                "cpu": time.process_time() - cpu,
                "checkpointing": checkpointed(layer),  # the update has set train mode and grad on by now
                "batch": (mini.prompt_ids, mini.prompt_mask, mini.response_mask),
            }
        )
        return out

    def timed_optimizer_step(self: Any, loss: float) -> Any:
        start = time.perf_counter()
        out = optimizer_step(self, loss)
        record.optimizer_s.append(time.perf_counter() - start)
        return out

    hf.sample_token, hf.lean_decode = counting_sample_token, timed_decode
    PolicyUpdate.backward, Trainer.optimizer_step = timed_backward, timed_optimizer_step  # type: ignore[method-assign]
    try:
        with tempfile.TemporaryDirectory() as out_dir:
            model = [f"model={args.model}"] if args.model else []
            cfg = load_config(
                str(CONFIG),
                [
                    "train.mini_batches=1",
                    "algorithm.filter_groups=false",  # every response in the update, signal or not
                    f"train.threads={args.threads}",
                    "train.eval_every=0",
                    "train.save_every=0",
                    f"train.steps={args.steps + bool(args.profile)}",
                    f"output_dir={out_dir}",
                    *model,
                    *overrides,
                ],
            ).validate()
            trainer = Trainer(cfg, progress=False)
            record.shape = Shape.of(trainer.model.config)
            record.precision = trainer.precision.name
            print(f"job: {trainer.precision.describe()}")
            # tied embeddings count once: the decode step reads the LM head's matrix, not the embedding's
            record.weight_bytes = sum(p.numel() * p.element_size() for p in trainer.model.parameters())
            try:
                for _ in range(args.steps):
                    trainer.train_step()
                if args.profile:  # an extra step, kept out of the timed records
                    from torch.profiler import ProfilerActivity, profile

                    timed = len(record.decodes), len(record.updates), len(record.optimizer_s)
                    with profile(activities=[ProfilerActivity.CPU]) as prof:
                        trainer.train_step()
                    record.profile = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=30)
                    del record.decodes[timed[0] :], record.updates[timed[1] :], record.optimizer_s[timed[2] :]
            finally:
                trainer.close()
    finally:
        hf.sample_token, hf.lean_decode = sample_token, lean_decode
        PolicyUpdate.backward, Trainer.optimizer_step = backward, optimizer_step  # type: ignore[method-assign]
    return record


# -- the report -------------------------------------------------------------------------------------


def peak_rss_mb() -> float:
    """This process's resident high-water mark (VmHWM), MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def neighbours() -> str:
    """The load average and the busiest other processes, to print beside the numbers."""
    one, five, _ = os.getloadavg()
    ps = subprocess.run(
        ["ps", "-eo", "pid,pcpu,rss,comm", "--sort=-pcpu", "--no-headers"], capture_output=True, text=True
    )
    busy = [
        f"{cmd} ({cpu}% CPU)"
        for pid, cpu, _, cmd in (line.split(None, 3) for line in ps.stdout.splitlines()[:6])
        if int(pid) != os.getpid() and float(cpu) >= 5
    ]
    return f"load {one:.2f}/{five:.2f} on {os.cpu_count()} cores; busy: {', '.join(busy) or 'none'}"


def report_job(
    record: JobRecord, rates: dict[str, Any], bandwidth_used: float, other: dict[str, Any] | None = None
) -> None:
    """The update's MFU and the decode's fraction of its bound, step by step, as markdown tables, against
    the peaks of the precision the job ran in (``rates``); the update's MFU also against the other
    precision's peaks (``other``). Both are on CPU seconds, as the peaks: time a neighbour takes the core
    from us is not ours to fix (wall seconds beside them)."""
    shape = record.shape
    assert shape is not None
    gf = 1e9
    print("\nupdate (forward + backward over all responses; the optimizer step apart):")
    print("| step | tokens T (head N) | wall s | CPU s | model GFLOP | hardware GFLOP | MFU | HFU |")
    print("|---|---|---|---|---|---|---|---|")
    mfus = []
    for i, up in enumerate(record.updates, 1):
        f = update_flops(shape, *up["batch"], checkpointing=up["checkpointing"])
        mfus.append(f["model"] / up["cpu"] / rates["update"])
        print(
            f"| {i} | {f['tokens']:.0f} ({f['head_tokens']:.0f}) | {up['seconds']:.1f} | {up['cpu']:.1f} | "
            f"{f['model'] / gf:.0f} | {f['hardware'] / gf:.0f} | {mfus[-1]:.0%} | "
            f"{f['hardware'] / up['cpu'] / rates['update']:.0%} |"
        )
    ckpt = {up["checkpointing"] for up in record.updates}
    print(
        f"activation checkpointing {'on' if ckpt == {True} else 'off' if ckpt == {False} else 'mixed'}; "
        f"MFU / HFU: model / hardware FLOPs per CPU second over the update mix's "
        f"{rates['update'] / gf:.1f} GFLOP/s; optimizer step {statistics.mean(record.optimizer_s):.2f} s "
        "wall (AdamW, memory-bound, not in MFU)"
    )
    print("\ndecode (lean_decode: prefill + sampling loop):")
    print("| step | rows | tokens | steps | wall s | CPU s | tokens/CPU s | bound | fraction | binds |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    fractions = []
    for i, d in enumerate(record.decodes, 1):
        flops = decode_flops(shape, d["rows_per_step"], d["prompt_width"], d["prompts"])
        bound = decode_bound(flops, record.weight_bytes, rates["update"], rates["decode"], bandwidth_used)
        fractions.append(bound["bound_s"] / d["cpu"])
        binds = "compute" if bound["compute_s"] >= bound["memory_s"] else "memory"
        print(
            f"| {i} | {d['rows_per_step'][0]} | {d['tokens']} | {len(d['rows_per_step'])} | "
            f"{d['seconds']:.1f} | {d['cpu']:.1f} | {d['tokens'] / d['cpu']:.0f} | "
            f"{d['tokens'] / bound['bound_s']:.0f} | {fractions[-1]:.0%} | {binds} (compute "
            f"{bound['compute_s']:.1f} s, memory {bound['memory_s']:.1f} s) |"
        )
    print(
        f"bound of a decode step: max(its FLOPs at the decode mix's {rates['decode'] / gf:.1f} GFLOP/s, "
        f"({record.weight_bytes / 1e6:.0f} MB of weights + its KV cache) at {bandwidth_used / gf:.1f} GB/s); "
        "the prefill at the update mix"
    )
    against = ""
    if other is not None:
        other_mfu = [mfu * rates["update"] / other["update"] for mfu in mfus]
        against = f"; against the other precision's update mix: MFU {statistics.median(other_mfu):.0%}"
    print(
        f"\nsummary ({record.precision}): update MFU {statistics.median(mfus):.0%} (target >= 50 %), "
        f"decode at {statistics.median(fractions):.0%} of its bound (target >= 50 %){against}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--model", help="local transformers checkpoint (default: the config's model)")
    parser.add_argument("--steps", type=int, default=1, help="timed training steps (sample + update)")
    parser.add_argument("--rows", type=int, default=2048, help="tokens per update GEMM for the peak")
    parser.add_argument("--decode-rows", type=int, default=64, help="rows per decode GEMM (the job's 8 x 8)")
    parser.add_argument("--seconds", type=float, default=0.6, help="seconds per GEMM measurement")
    parser.add_argument("--no-job", action="store_true", help="measure the machine only")
    parser.add_argument("--profile", action="store_true", help="per-op CPU table of one more step")
    args, overrides = parser.parse_known_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import torch

    from aspo.models.head import default_chunk

    torch.set_num_threads(args.threads)
    print(f"before: {neighbours()}")
    if args.no_job:
        from transformers import AutoConfig

        from aspo.pretrained import resolve_model

        shape = Shape.of(AutoConfig.from_pretrained(args.model or resolve_model("smollm2-135m-instruct")))
    else:
        start = time.perf_counter()
        record = run_job(args, overrides)
        assert record.shape is not None
        shape = record.shape
        print(
            f"job: {args.steps} step(s) in {time.perf_counter() - start:.0f} s (model load included), "
            f"peak RSS {peak_rss_mb():.0f} MB"
        )
        print(f"after the job: {neighbours()}")
    chunk = default_chunk(shape.vocab)
    peaks = {
        name: matmul_rates(shape, args.rows, chunk, args.decode_rows, args.seconds, dtype)
        for name, dtype in (("fp32", "float32"), ("bf16", "bfloat16"))
    }
    bw = bandwidth()
    gf = 1e9
    print(
        f"\nmachine: {cpu_description()}, {torch.get_num_threads()} torch thread(s), "
        f"torch {torch.__version__}; {neighbours()}"
    )
    print("| GEMM | rows x in x out | kind | float32 GFLOP/s | bfloat16 GFLOP/s | bf16 / fp32 |")
    print("|---|---|---|---|---|---|")
    for (name, m, k, n, kind, rate), (*_, rate16) in zip(
        peaks["fp32"]["table"], peaks["bf16"]["table"], strict=True
    ):
        print(
            f"| {name} | {m} x {k} x {n} | {kind} | {rate / gf:.1f} | {rate16 / gf:.1f} | "
            f"{rate16 / rate:.2f} |"
        )
    for name, rates in peaks.items():
        best = max(r for *_, r in rates["table"])
        print(
            f"matmul peak {name}: best GEMM {best / gf:.1f} GFLOP/s; the update's mix "
            f"{rates['update'] / gf:.1f} (layers at {args.rows} tokens, head at {chunk}); the decode step's "
            f"mix {rates['decode'] / gf:.1f} ({args.decode_rows} rows)"
        )
    used = max(bw.values())
    print(
        f"memory bandwidth (256 MB arrays): copy {bw['copy'] / gf:.1f} GB/s, triad {bw['triad'] / gf:.1f} "
        f"GB/s; the decode bound uses {used / gf:.1f}"
    )
    if not args.no_job:
        in_use = record.precision
        report_job(record, peaks[in_use], used, peaks["bf16" if in_use == "fp32" else "fp32"])
        if record.profile:
            print("\nprofile of one more step (torch.profiler, self CPU time):\n" + record.profile)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "src"))
    main()
