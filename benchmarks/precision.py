"""bf16 against float32 on one real batch: log-prob / entropy gaps, the sampler-trainer mismatch, the
gradient's direction, and the time of each phase in both precisions.

    .venv/bin/python benchmarks/precision.py [--model smollm2-135m-instruct | tiny] [--threads 1]
        [--prompts 8] [--n 8] [--max-new-tokens 64] [--temperature 0.7] [--reps 1]

1. Samples ``--prompts`` x ``--n`` responses to the SmolLM2 job's chat prompts ("What is a + b?") with the
   hf engine, once in float32 and once in bf16 (``train.precision``'s autocast), seconds each.
2. On the bf16 sampler's responses: the trainer's packed forward in float32 and in bf16; the gaps of bf16
   log-probs and entropies to float32's (max and mean over the tokens), and the rollout-correction
   metrics (``aspo.objectives.rollout_correction.mismatch_metrics``) of each sampler against each trainer.
3. One forward + backward of the ASPO loss (GRPO-style advantages from a fixed ramp) in each precision,
   seconds, and the cosine similarity of the two gradients: with the old log-probs from each precision's
   own forward (ratio 1: the numerics alone) and from the bf16 sampler (the mismatch enters the clip).
Prints the CPU's model and flags: where it has neither amx_bf16 nor avx512_bf16, bf16 is emulated and slower.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import cpu_description  # noqa: E402  (the sibling module, after the path line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--reps", type=int, default=1, help="timed repetitions of each phase (median)")
    args = parser.parse_args()
    import torch

    from aspo.models import enable_activation_checkpointing, token_logprobs
    from aspo.objectives import policy_loss
    from aspo.objectives.rollout_correction import mismatch_metrics
    from aspo.precision import FP32, Precision, resolve_precision
    from aspo.rollout import HFEngine

    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    bf16 = Precision("bf16")
    if args.model == "tiny":
        from aspo.lab import build_model, build_tokenizer

        tokenizer = build_tokenizer()
        model = build_model(tokenizer, seed=0)
        prompts = [f"{a}+{b}=" for a, b in zip(range(11, 99, 7), range(5, 90, 9), strict=False)][
            : args.prompts
        ]
    else:
        from aspo.pretrained import resolve_model
        from aspo.run_setup import load_checkpoint

        model, tokenizer = load_checkpoint(resolve_model(args.model), torch.float32)
        questions = [f"What is {a} + {b}?" for a, b in zip(range(3, 30, 3), range(29, 2, -3), strict=False)]
        prompts = [
            tokenizer.apply_chat_template(
                [{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True
            )
            for q in questions[: args.prompts]
        ]
    model.eval()
    print(f"CPU: {cpu_description()}; torch {torch.__version__}, {args.threads} thread(s)")
    print(f"auto here: {resolve_precision('auto', 'cpu', model).describe()}")
    engine = HFEngine(model, tokenizer, add_special_tokens=args.model == "tiny")

    def timed(fn, reps):
        seconds, out = [], None
        for _ in range(reps):
            start = time.process_time()
            out = fn()
            seconds.append(time.process_time() - start)
        return statistics.median(seconds), out

    rollouts, sample_s = {}, {}
    for precision in (FP32, bf16):
        engine.precision = precision

        def sample():
            return engine.generate(
                prompts, n=args.n, max_new_tokens=args.max_new_tokens, temperature=args.temperature, seed=0
            )

        sample_s[precision.name], rollouts[precision.name] = timed(sample, args.reps)
    print("\nsampling (CPU s, median of", args.reps, "):", {k: round(v, 2) for k, v in sample_s.items()})
    print(f"  bf16 / fp32 time: {sample_s['bf16'] / sample_s['fp32']:.2f}x")

    def trainer_logprobs(rollout, precision):
        with torch.no_grad(), precision.autocast():
            return token_logprobs(
                model,
                rollout.prompt_ids,
                rollout.prompt_mask,
                rollout.response_ids,
                rollout.response_mask,
                temperature=args.temperature,
            )

    print("\nlog-probs of the same tokens (the bf16 sampler's responses), trainer's packed forward:")
    ro = rollouts["bf16"]
    mask = ro.response_mask
    lp32, ent32 = trainer_logprobs(ro, FP32)
    lp16, ent16 = trainer_logprobs(ro, bf16)
    for what, a, b in (("log-prob", lp16, lp32), ("entropy", ent16, ent32)):
        gap = (a - b)[mask].abs()
        print(
            f"  bf16 - fp32 {what}: max {gap.max():.4f}, mean {gap.mean():.5f}, p99 "
            f"{gap.quantile(0.99):.4f} nats over {int(mask.sum())} tokens"
        )
    print("\nsampler-trainer mismatch (rollout_corr/* metrics; delta = trainer - sampler):")
    print(
        "| sampler | trainer | abs diff mean | abs diff max | kl (k1) | k3_kl | chi2_token | "
        "seq abs log-ratio |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for s_name in ("fp32", "bf16"):
        rollout = rollouts[s_name]
        for t_name, precision in (("fp32", FP32), ("bf16", bf16)):
            lp, _ = trainer_logprobs(rollout, precision)
            m = mismatch_metrics(rollout.behaviour_logprobs, lp, rollout.response_mask)
            print(
                f"| {s_name} | {t_name} | {m['logprob_abs_diff']:.2e} | {m['logprob_abs_diff_max']:.2e} | "
                f"{m['kl']:.2e} | {m['k3_kl']:.2e} | {m['chi2_token']:.2e} | {m['seq_log_ratio_abs']:.2e} |"
            )
    m = mismatch_metrics(ro.behaviour_logprobs, lp32, mask, "token_truncate", 0.0, 2.0)
    mm = mismatch_metrics(ro.behaviour_logprobs, lp32, mask, "sequence_mask", 0.5, 2.0)
    print(
        f"bf16 sampler vs fp32 trainer: token_truncate [0, 2] truncates {m['truncated_frac']:.2%} of tokens; "
        f"sequence_mask [0.5, 2] masks {mm['masked_frac']:.2%}"
    )

    if sum(p.numel() for p in model.parameters()) >= 50_000_000:
        enable_activation_checkpointing(model)  # as the trainer does for this size
    model.train()
    adv = torch.linspace(-1, 1, len(ro.group_ids))
    # old log-probs: each precision's own forward (on-policy, ratio 1: the numerics alone), and the bf16
    # sampler's (what an update without the recompute sees: the mismatch moves ratios past the clip range)
    grads: dict[tuple[str, str], torch.Tensor] = {}
    update_s = {}
    for precision in (FP32, bf16):
        for old_from in ("own forward", "bf16 sampler"):

            def step(precision: Precision = precision, old_from: str = old_from) -> torch.Tensor:
                model.zero_grad(set_to_none=True)
                with precision.autocast():
                    lp, ent = token_logprobs(
                        model,
                        ro.prompt_ids,
                        ro.prompt_mask,
                        ro.response_ids,
                        ro.response_mask,
                        temperature=args.temperature,
                    )
                old = lp.detach() if old_from == "own forward" else ro.behaviour_logprobs
                loss, metrics = policy_loss("aspo", lp, old, adv, mask, entropy=ent)
                loss.backward()
                print(
                    f"  {precision.name}, old from the {old_from}: clipped fraction of A > 0 tokens "
                    f"{metrics['clipfrac/pos']:.3f}, of A < 0 {metrics['clipfrac/neg']:.3f}"
                )
                return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])

            seconds, grads[precision.name, old_from] = timed(step, args.reps)
            update_s.setdefault(precision.name, seconds)
    print("\nforward + backward, ASPO loss (CPU s):", {k: round(v, 2) for k, v in update_s.items()})
    print(f"  bf16 / fp32 time: {update_s['bf16'] / update_s['fp32']:.2f}x")
    for old_from in ("own forward", "bf16 sampler"):
        a, b = grads["fp32", old_from].double(), grads["bf16", old_from].double()
        cosine = torch.nn.functional.cosine_similarity(a, b, dim=0)
        print(f"  gradient cosine bf16 vs fp32, old log-probs from the {old_from}: {cosine:.5f}")


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "src"))
    main()
