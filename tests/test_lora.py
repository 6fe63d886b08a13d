"""LoRA through peft: the fast paths equal the generic ones with adapters on, the reference is the base,
adapter checkpoints resume exactly, load in `aspo eval`, and merge into a plain transformers checkpoint."""

import copy
import json

import pytest
import torch
from conftest import DATA, tiny_overrides

from aspo.config import load_config
from aspo.errors import UserError
from aspo.lora import apply_lora, reference_policy
from aspo.models import lean_supported, packed_token_logprobs, packing_applies, padded_token_logprobs
from aspo.report.metrics import read_metrics
from aspo.rollout.hf import HFEngine
from aspo.trainer import Trainer

pytest.importorskip("peft")

LORA = ["lora.rank=4", "lora.alpha=8", "train.lr=1e-2", "train.plots=false"]


def run_cli(capsys, *args):
    """`aspo ARGS...` in this process: (exit status, stderr)."""
    from aspo.cli import main

    capsys.readouterr()
    code = main([str(a) for a in args])
    return code, capsys.readouterr().err


def comparable(rows):
    return [{k: v for k, v in r.items() if not k.startswith(("time/", "perf/"))} for r in rows]


@pytest.fixture
def adapted(tiny_policy):
    """(base copy, adapted model, PeftModel): LoRA on every linear layer, B randomised so it matters."""
    model, tokenizer = tiny_policy
    base = copy.deepcopy(model)
    inner = copy.deepcopy(model)
    peft_model = apply_lora(inner, rank=4, alpha=8, dropout=0.0, modules="all-linear", base="unused", seed=0)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    return base, inner, peft_model, tokenizer


def test_only_adapters_train_and_a_fresh_adapter_is_the_identity(tiny_policy):
    model, _ = tiny_policy
    inner = copy.deepcopy(model)
    peft_model = apply_lora(
        inner, rank=4, alpha=8, dropout=0.0, modules="q_proj,v_proj", base="unused", seed=0
    )
    trainable = [n for n, p in inner.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n and ("q_proj" in n or "v_proj" in n) for n in trainable)
    ids = torch.tensor([[5, 6, 7, 8]])
    assert torch.equal(inner(input_ids=ids).logits, model(input_ids=ids).logits)  # B = 0 at init
    again = apply_lora(
        copy.deepcopy(model), rank=4, alpha=8, dropout=0.0, modules="q_proj,v_proj", base="x", seed=0
    )
    a = {n: p for n, p in peft_model.named_parameters() if "lora_A" in n}
    assert all(torch.equal(p, dict(again.named_parameters())[n]) for n, p in a.items())  # seeded init
    with pytest.raises(UserError, match="lora.target_modules"):
        apply_lora(
            copy.deepcopy(model), rank=4, alpha=8, dropout=0.0, modules="nosuch_proj", base="x", seed=0
        )


def test_fast_sampling_equals_generic_sampling_with_adapters(adapted):
    _, inner, peft_model, tokenizer = adapted
    assert lean_supported(inner)  # the injected adapter layers keep the fast path
    engine = HFEngine(inner, tokenizer)
    # one row never drops out of the lean batch, so both loops draw the same random numbers
    fast = engine.generate(["12+34="], n=1, max_new_tokens=16, temperature=0.8, seed=3)
    engine.lean = False
    generic = engine.generate(["12+34="], n=1, max_new_tokens=16, temperature=0.8, seed=3)
    assert torch.equal(fast.response_ids, generic.response_ids)
    torch.testing.assert_close(fast.behaviour_logprobs, generic.behaviour_logprobs, atol=1e-5, rtol=0)
    # many rows ending at different steps: the lean loop's log-probs are peft's own forward's
    engine.lean = True
    many = engine.generate(["12+34=", "7+8=", "100+1="], n=3, max_new_tokens=12, temperature=0.8, seed=3)
    assert many.response_lengths.min() < many.response_lengths.max()
    with torch.no_grad():
        want, _ = padded_token_logprobs(
            peft_model,
            many.prompt_ids,
            many.prompt_mask,
            many.response_ids,
            many.response_mask,
            temperature=0.8,
            with_entropy=False,
        )
    torch.testing.assert_close(many.behaviour_logprobs, want, atol=1e-5, rtol=0)


def test_packed_forward_equals_padded_forward_with_adapters(adapted):
    base, inner, peft_model, tokenizer = adapted
    rollout = HFEngine(inner, tokenizer).generate(["12+34=", "7+8="], n=3, max_new_tokens=8, seed=0)
    args = (rollout.prompt_ids, rollout.prompt_mask, rollout.response_ids, rollout.response_mask)
    inner.train()
    assert packing_applies(inner, rollout.prompt_mask)
    results = []
    for fn in (packed_token_logprobs, padded_token_logprobs):
        peft_model.zero_grad()
        logprobs, entropy = fn(inner, *args, temperature=0.7)
        (logprobs.sum() + entropy.sum()).backward()
        grads = {n: p.grad.clone() for n, p in inner.named_parameters() if p.requires_grad}
        results.append((logprobs.detach(), entropy.detach(), grads))
    (lp1, ent1, g1), (lp2, ent2, g2) = results
    torch.testing.assert_close(lp1, lp2, atol=1e-5, rtol=0)
    torch.testing.assert_close(ent1, ent2, atol=1e-5, rtol=0)
    assert g1.keys() == g2.keys() and len(g1) > 0
    for name in g1:
        torch.testing.assert_close(g1[name], g2[name], atol=1e-5, rtol=1e-4, msg=name)
    # the sampler's behaviour log-probs (temperature 1) are the training forward's
    torch.testing.assert_close(
        rollout.behaviour_logprobs, packed_token_logprobs(inner, *args)[0].detach(), atol=1e-5, rtol=0
    )
    # the reference policy (adapters off) is the base model, on both paths
    with torch.no_grad(), reference_policy(peft_model):
        ref_packed, _ = packed_token_logprobs(inner, *args, with_entropy=False)
        ref_padded, _ = padded_token_logprobs(inner, *args, with_entropy=False)
    want, _ = padded_token_logprobs(base, *args, with_entropy=False)
    torch.testing.assert_close(ref_packed, want.detach(), atol=1e-5, rtol=0)
    torch.testing.assert_close(ref_padded, want.detach(), atol=1e-5, rtol=0)
    assert (ref_padded - lp2).abs().max() > 1e-3  # the adapters do change the policy


@pytest.fixture(scope="module")
def lora_run(tiny_run_inputs, tmp_path_factory):
    out = tmp_path_factory.mktemp("lora") / "r"
    cfg = load_config(None, tiny_overrides(tiny_run_inputs, out, *LORA, "algorithm.kl_coef=0.05"))
    trainer = Trainer(cfg, progress=False)
    base = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if not p.requires_grad}
    trainer.run()
    frozen_kept = all(torch.equal(p, base[n]) for n, p in trainer.model.named_parameters() if n in base)
    return out, frozen_kept


def test_lora_run_trains_adapters_only_and_checkpoints_hold_the_adapter(lora_run, tiny_run_inputs):
    out, frozen_kept = lora_run
    assert frozen_kept
    rows = [r for r in read_metrics(out) if r["step"] > 0]
    assert len(rows) == 3 and all(r["actor/optimizer_steps"] == 4 for r in rows)
    assert any(r["actor/kl_loss"] > 0 for r in rows)  # KL to the base (adapters off) moves off 0
    ckpt = out / "checkpoints" / "step-3"
    for name in (
        "adapter_config.json",
        "adapter_model.safetensors",
        "optimizer.pt",
        "scheduler.pt",
        "rng.pt",
        "trainer_state.json",
        "tokenizer.json",
    ):
        assert (ckpt / name).is_file(), name
    assert not (ckpt / "model.safetensors").exists()
    config = json.loads((ckpt / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(tiny_run_inputs / "model") and config["r"] == 4
    from safetensors.torch import load_file

    state = torch.load(ckpt / "optimizer.pt", weights_only=False)

    adapter = load_file(str(ckpt / "adapter_model.safetensors"))
    assert len(state["state"]) == len(adapter)  # AdamW state for each adapter tensor, nothing else


def test_resume_with_lora_is_exact(tiny_run_inputs, tmp_path):
    args = [
        *LORA,
        "lora.dropout=0.1",
        "train.steps=4",
        "train.eval_every=1",
    ]  # dropout: the RNG is restored too
    whole = tmp_path / "whole"
    Trainer(load_config(None, tiny_overrides(tiny_run_inputs, whole, *args)), progress=False).run()
    parted = tmp_path / "parted"
    Trainer(
        load_config(None, tiny_overrides(tiny_run_inputs, parted, *args, "train.steps=2")), progress=False
    ).run()
    Trainer(
        load_config(None, tiny_overrides(tiny_run_inputs, parted, *args, "resume=true")), progress=False
    ).run()
    want, got = comparable(read_metrics(whole)), comparable(read_metrics(parted))
    assert [r["step"] for r in got] == [0, 1, 2, 3, 4]
    assert got == want


def test_resuming_a_lora_checkpoint_without_lora_is_a_clear_error(lora_run, tiny_run_inputs):
    out, _ = lora_run
    cfg = load_config(None, tiny_overrides(tiny_run_inputs, out, "resume=true"))
    with pytest.raises(UserError, match="lora"):
        Trainer(cfg, progress=False)


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_adapter_checkpoint_loads_merged_and_merge_lora_writes_a_plain_checkpoint(
    lora_run, tiny_run_inputs, tmp_path, capsys
):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from aspo.pretrained import load_checkpoint

    ckpt = lora_run[0] / "checkpoints" / "step-3"
    ids = torch.tensor([[3, 9, 12, 7, 5, 14]])
    base = AutoModelForCausalLM.from_pretrained(tiny_run_inputs / "model")
    want = _logits(PeftModel.from_pretrained(copy.deepcopy(base), ckpt), ids)  # peft's own adapter forward
    assert (want - _logits(base, ids)).abs().max() > 1e-4  # the trained adapter is not the identity
    merged, tokenizer = load_checkpoint(str(ckpt))
    assert not hasattr(merged, "peft_config") and merged.name_or_path == str(
        ckpt
    )  # the base of a next adapter
    torch.testing.assert_close(_logits(merged, ids), want, atol=1e-5, rtol=0)

    out = tmp_path / "merged"
    code, err = run_cli(capsys, "merge-lora", ckpt, out)
    assert code == 0, err
    assert (out / "model.safetensors").is_file() and not (out / "adapter_config.json").exists()
    plain = AutoModelForCausalLM.from_pretrained(out)
    torch.testing.assert_close(_logits(plain, ids), want, atol=1e-5, rtol=0)
    code, err = run_cli(capsys, "merge-lora", ckpt, out)
    assert code == 2 and "not empty" in err and len(err.strip().splitlines()) == 1
    code, err = run_cli(capsys, "merge-lora", out, tmp_path / "x")
    assert code == 2 and "holds no LoRA adapter" in err and not (tmp_path / "x").exists()


def test_aspo_eval_loads_an_adapter_checkpoint(lora_run, tiny_run_inputs, tmp_path, capsys):
    ckpt = lora_run[0] / "checkpoints" / "step-3"
    out = tmp_path / "eval"
    code, err = run_cli(
        capsys,
        "eval",
        "--model",
        ckpt,
        "--data",
        tiny_run_inputs / "test.jsonl",
        "--reward",
        f"{DATA / 'rewards.py'}:digit_share",
        "--n",
        "2",
        "--max-new-tokens",
        "8",
        "--output",
        out,
        "--device",
        "cpu",
    )
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["problems"] == 8 and summary["n"] == 2 and 0 <= summary["pass@1"] <= 1
    assert summary["model"] == str(ckpt)
    assert len((out / "samples.jsonl").read_text().splitlines()) == 2 * 8
