"""The performance paths give the numbers of the plain ones, and the benchmark job builds and runs.

- lean decoding (``aspo.rollout.hf.lean_decode``): its behaviour log-probs equal the model's own padded
  forward on the sampled tokens, with and without grouped-query attention, through early row drop-out;
- packed training forward (``aspo.models.logprobs.packed_token_logprobs``): same log-probs, entropies and
  parameter gradients as ``padded_token_logprobs``; the DDP-wrapped / unsupported case falls back;
- benchmarks/_common.py builds a job that ``aspo train`` runs for two steps (the TRL side is left to the
  benchmark itself: it is slow to import).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import load_benchmark_module

from aspo.models import (
    lean_supported,
    packed_token_logprobs,
    packing_applies,
    padded_token_logprobs,
    token_logprobs,
)
from aspo.rollout import HFEngine

ROOT = Path(__file__).resolve().parent.parent
PROMPTS = ["12+34=", "7*8=", "100-1=", "5="]


def _model(tok, **size):
    from aspo.lab import build_model

    dims = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 96}
    return build_model(tok, seed=1, **{**dims, **size}).eval()


@pytest.mark.parametrize("kv_heads", [4, 2])
def test_lean_decode_logprobs_equal_the_models_forward(kv_heads):
    from aspo.lab import build_tokenizer

    tok = build_tokenizer()
    model = _model(tok, num_key_value_heads=kv_heads)
    assert lean_supported(model)
    engine = HFEngine(model, tok)
    for temperature in (1.0, 0.7):
        r = engine.generate(PROMPTS, n=4, max_new_tokens=24, temperature=temperature, seed=2)
        lengths = r.response_lengths
        assert lengths.min() < lengths.max()  # rows ended at different steps: the drop-out path ran
        with torch.no_grad():
            logp, _ = padded_token_logprobs(
                model, r.prompt_ids, r.prompt_mask, r.response_ids, r.response_mask, temperature=temperature
            )
        assert torch.allclose(logp, r.behaviour_logprobs, atol=1e-5)
        assert r.behaviour_logprobs[~r.response_mask].eq(0).all()
        assert r.response_ids[~r.response_mask].eq(tok.pad_token_id).all()


def test_lean_and_generic_loops_agree_on_one_row():
    """A single row never drops out, so both loops draw the same random numbers: identical samples."""
    from aspo.lab import build_tokenizer

    tok = build_tokenizer()
    model = _model(tok)
    engine = HFEngine(model, tok)
    lean = engine.generate(PROMPTS[:1], n=1, max_new_tokens=20, seed=5)
    engine.lean = False
    generic = engine.generate(PROMPTS[:1], n=1, max_new_tokens=20, seed=5)
    assert torch.equal(lean.response_ids, generic.response_ids)
    assert torch.allclose(lean.behaviour_logprobs, generic.behaviour_logprobs, atol=1e-5)


def test_packed_forward_matches_padded_values_and_gradients():
    from aspo.lab import build_tokenizer

    tok = build_tokenizer()
    model = _model(tok, num_key_value_heads=2)
    r = HFEngine(model, tok).generate(PROMPTS, n=3, max_new_tokens=16, seed=4)
    model.train()
    assert packing_applies(model, r.prompt_mask)
    weights = torch.randn(r.response_ids.shape, generator=torch.Generator().manual_seed(0))
    results = []
    for fn in (padded_token_logprobs, packed_token_logprobs):
        model.zero_grad()
        logp, ent = fn(model, r.prompt_ids, r.prompt_mask, r.response_ids, r.response_mask, temperature=0.8)
        ((logp * weights).sum() + ent.sum()).backward()
        results.append((logp.detach(), ent.detach(), [p.grad.clone() for p in model.parameters()]))
    (lp_a, ent_a, grads_a), (lp_b, ent_b, grads_b) = results
    assert torch.allclose(lp_a, lp_b, atol=1e-5) and torch.allclose(ent_a, ent_b, atol=1e-5)
    assert lp_b[~r.response_mask].eq(0).all() and ent_b[~r.response_mask].eq(0).all()
    for ga, gb in zip(grads_a, grads_b, strict=True):
        assert torch.allclose(ga, gb, atol=1e-5, rtol=1e-4)


def test_wrapped_models_fall_back_to_the_padded_forward(tiny_policy):
    model, tok = tiny_policy
    enc = tok(PROMPTS, return_tensors="pt", padding=True)
    mask = enc["attention_mask"].bool()
    wrapped = torch.nn.Module()
    wrapped.module = model  # like DDP: no .config, forward goes through the wrapper
    assert packing_applies(model, mask) and not packing_applies(wrapped, mask)
    resp = torch.full((len(PROMPTS), 3), tok.pad_token_id)
    with torch.no_grad():
        logp, _ = token_logprobs(
            model, enc["input_ids"], mask, resp, torch.zeros_like(resp, dtype=torch.bool)
        )
    assert logp.eq(0).all()


def _load_common():
    return load_benchmark_module("_common.py", "bench_common")


def test_benchmark_job_builds_and_aspo_runs_it(tmp_path):
    common = _load_common()
    job = common.build_job(tmp_path / "job", prompts=16)
    records = [json.loads(line) for line in job.train.read_text().splitlines()]
    assert len(records) == 16 and all(int(r["answer"]) == eval(r["prompt"][:-1]) for r in records)  # noqa: S307
    spec = importlib.util.spec_from_file_location("bench_reward", job.reward_file)
    reward = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(reward)
    assert reward.addition_reward(prompt="1+2=", response="3", answer="3") == 1.0
    assert reward.addition_reward(prompt="", response="12x", answer="129") == pytest.approx(0.2)
    assert reward.trl_addition_reward(["a", "b"], ["3", "9"], answer=["3", "4"]) == [1.0, 0.0]
    settings = common.Settings(steps=2, prompts_per_step=2, n=2, max_new_tokens=8)
    out = tmp_path / "run"
    cmd = common.aspo_command(job, settings, out)
    timed = common.run_timed(cmd, common.child_env(1), tmp_path / "aspo.log")
    assert timed.wall_s > 0 and timed.max_rss_mb > 50
    shares = common.aspo_time_shares(out)
    assert shares["step"] > 0 and shares["tokens"] > 0 and shares["length"] > 0
    assert "trl" in " ".join(common.trl_command(job, settings, tmp_path / "trl"))
    assert subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "_common.py")], capture_output=True
    ).returncode


def test_real_model_benchmark_job_scores_both_conventions_and_sets_both_trainers(tmp_path):
    common = _load_common()
    model_dir = tmp_path / "weights"
    model_dir.mkdir()
    job = common.build_chat_job(tmp_path / "job", model_dir)
    assert job.model.resolve() == model_dir.resolve() and job.chat
    records = [json.loads(line) for line in job.train.read_text().splitlines()]
    assert len(records) == 29 * 29
    a, b = (int(x) for x in records[0]["prompt"].removeprefix("What is ").removesuffix("?").split(" + "))
    assert int(records[0]["answer"]) == a + b
    spec = importlib.util.spec_from_file_location("bench_chat_reward", job.reward_file)
    reward = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(reward)
    assert reward.last_number("q", "12 + 30 = 42.", "42") == 1.0
    assert reward.last_number("q", "It is 42, not 41", "42") == 0.0
    assert reward.last_number("q", "1,042", "1042") == 1.0
    # TRL hands a conversational dataset's completions over as message lists
    completions = [[{"role": "assistant", "content": "The sum is 7."}], "7 or 8"]
    assert reward.trl_last_number(["p", "p"], completions, answer=["7", "7"]) == [1.0, 0.0]
    settings = common.Settings(steps=1, trl_checkpointing=False)
    aspo = common.aspo_command(job, settings, tmp_path / "run")
    assert "prompt.chat_template=true" in aspo and f"reward={job.reward_file}:last_number" in aspo
    trl = common.trl_command(job, settings, tmp_path / "trl")
    assert trl[trl.index("--reward") + 1] == "trl_last_number" and "--chat" in trl
    assert trl[trl.index("--checkpointing") + 1] == "off"
    assert "--checkpointing" not in common.trl_command(job, common.Settings(), tmp_path / "trl")


@pytest.fixture(scope="module")
def chat_llama_dir(tmp_path_factory):
    """A tiny random Llama with a chat template, saved with save_pretrained (the lab's `tokenizers` char
    tokenizer): an output layer 3 ids wider than the tokenizer (as Qwen's is), zeroed so that every token,
    EOS included, is equally likely -- the untouched model ends most responses early."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from aspo.lab import build_tokenizer

    tok = build_tokenizer()
    tok.chat_template = "{% for m in messages %}{{ m['content'] }}={% endfor %}"
    config = LlamaConfig(
        vocab_size=len(tok) + 3,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        tie_word_embeddings=False,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        model.lm_head.weight.zero_()
    root = tmp_path_factory.mktemp("chat_llama") / "model"
    model.save_pretrained(root)
    tok.save_pretrained(root)
    return root


def _sample_lengths(model_dir, max_new_tokens):
    from aspo.pretrained import load_checkpoint
    from aspo.rollout import HFEngine

    model, tok = load_checkpoint(str(model_dir), torch.float32)
    engine = HFEngine(model.eval(), tok)
    rollout = engine.generate(["1+2", "30+4"], n=4, max_new_tokens=max_new_tokens, seed=0)
    return rollout.response_lengths.tolist()


def test_fixed_length_copy_of_a_checkpoint_never_ends_early(chat_llama_dir, tmp_path):
    common = _load_common()
    before = {p.name: p.read_bytes() for p in chat_llama_dir.iterdir()}
    fixed = common.fixed_length_model(chat_llama_dir, tmp_path / "fixed")
    assert min(_sample_lengths(chat_llama_dir, 24)) < 24  # the original ends responses (1 in 34 is EOS)
    assert _sample_lengths(fixed, 24) == [24] * 8
    assert {p.name: p.read_bytes() for p in chat_llama_dir.iterdir()} == before  # the source is untouched
    assert (fixed / "model.safetensors").is_symlink()
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(fixed)
    assert tok.eos_token_id == 34 and tok.pad_token == "<pad>"  # past the 31 tokens + 3 extra output ids
    assert tok.apply_chat_template([{"role": "user", "content": "1+2"}], tokenize=False) == "1+2="


def test_scaling_benchmark_on_a_checkpoint_dir(chat_llama_dir, tmp_path):
    """scaling.py --model DIR end to end: fixed-length copy, chat job, both sweeps (the shared setting
    once), per-setting processes; the script itself fails if a response is not exactly L tokens."""
    out = tmp_path / "scaling.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "scaling.py"), "--model", str(chat_llama_dir)]
    cmd += ["--lengths", "4", "8", "--groups", "8", "16", "--group-length", "4", "--steps", "2"]
    cmd += ["--workdir", str(tmp_path / "work"), "--json", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(out.read_text())
    assert [r["L"] for r in result["by_length"]] == [4, 8] and [r["n"] for r in result["by_group"]] == [8, 16]
    length_row, group_row = result["by_length"][0], result["by_group"][0]
    assert {**length_row, "n": 8} == {**group_row, "L": 4}  # one process measured (4, 8) for both sweeps
    assert result["by_length"][1]["tokens_per_step"] == 2 * 8 * 8  # 2 prompts per step on a real model
    assert all(r["step"] > 0 and r["max_rss_mb"] > 50 for r in result["by_length"] + result["by_group"])
    assert len(list((tmp_path / "work").glob("L*-n*.log"))) == 3  # (4, 8) ran once for both sweeps
    assert "growth with response length L" in done.stdout


def test_code_training_benchmark_sees_descendants_and_their_end():
    """benchmarks/code_training.py counts a leaked sandbox as a live descendant of the trainer."""
    bench = load_benchmark_module("code_training.py", "code_training_bench")
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        found = bench.descendants(os.getpid())
        assert child.pid in {pid for pid, _ in found}
        assert bench.rss_mib(child.pid) > 0
    finally:
        child.kill()
        child.wait()
    assert child.pid not in {pid for pid, _ in bench.descendants(os.getpid())}


def test_machine_limits_benchmark_runs_its_job_on_a_checkpoint_dir(chat_llama_dir):
    """machine_limits.py --model DIR: the peaks in both precisions, then one timed training step of the
    job in bf16 (its wrappers pass the update's keyword options through) and the MFU lines."""
    cmd = [sys.executable, str(ROOT / "benchmarks" / "machine_limits.py"), "--model", str(chat_llama_dir)]
    cmd += ["--steps", "1", "--seconds", "0.02", "--rows", "64", "train.precision=bf16"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "matmul peak bf16" in done.stdout and "MFU" in done.stdout
