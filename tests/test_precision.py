"""train.precision: what `auto` picks, bf16 log-probs / entropies / gradients against float32, float32
master weights that a bf16 step really moves, the sampler in bf16, and whole runs (resume, LoRA).

Tolerances (stated once): on the tiny models here, bf16 token log-probs and entropies are within 0.05
nats of float32 at every token and 0.01 on average (bf16 keeps 8 significant bits: a logit of size |z|
carries ~|z| / 512 of rounding); the bf16 gradient's cosine similarity to float32's
is >= 0.99. SmolLM2's figures are in tests/test_smollm2_heavy.py and docs/performance.md.
"""

import copy

import pytest
import torch
from conftest import tiny_overrides

from aspo import precision as precision_module
from aspo.config import load_config
from aspo.errors import UserError
from aspo.models import packed_token_logprobs, padded_token_logprobs, token_logprobs
from aspo.objectives import policy_loss
from aspo.precision import AUTO_MIN_PARAMS, FP32, Precision, cpu_flags, resolve_precision
from aspo.report.metrics import read_metrics
from aspo.rollout import HFEngine
from aspo.trainer import Trainer

BF16 = Precision("bf16")
MAX_TOKEN_GAP, MEAN_TOKEN_GAP, MIN_COSINE = 0.05, 0.01, 0.99


def comparable(rows):
    return [{k: v for k, v in r.items() if not k.startswith(("time/", "perf/"))} for r in rows]


# -- what auto picks -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "flags, params, want",
    [
        (set(), 135_000_000, "fp32"),  # no native bf16: never bf16
        ({"avx512f", "avx512_vnni"}, 135_000_000, "fp32"),  # AVX-512 alone is not bf16
        ({"avx512f", "avx512_bf16"}, 135_000_000, "fp32"),  # native, no AMX: too little gain
        ({"amx_bf16", "avx512_bf16"}, 135_000_000, "bf16"),
        ({"amx_bf16", "amx_tile"}, AUTO_MIN_PARAMS, "bf16"),
        ({"amx_bf16"}, AUTO_MIN_PARAMS - 1, "fp32"),  # native, but a model too small to gain
        ({"avx512_bf16"}, 858_624, "fp32"),  # the lab model
    ],
)
def test_auto_takes_bf16_only_with_amx_and_a_large_enough_model(flags, params, want):
    got = resolve_precision("auto", "cpu", flags=flags, params=params)
    assert got.name == want and got.reason.startswith("auto:")
    if not flags & {"amx_bf16", "avx512_bf16"}:
        assert "no native bf16" in got.reason


def test_explicit_precisions_and_bad_ones():
    assert resolve_precision("fp32", "cpu", flags={"amx_bf16"}, params=10**9).name == "fp32"
    assert resolve_precision("bf16", "cpu", flags=set()).name == "bf16"
    with pytest.raises(UserError, match="train.precision='fp16' must be one of auto, fp32, bf16"):
        load_config(None, ["train.precision=fp16"]).validate()


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu avx512f amx_bf16 amx_tile\nbugs\t: none\n")
    assert cpu_flags(str(info)) == {"fpu", "avx512f", "amx_bf16", "amx_tile"}
    assert cpu_flags(str(tmp_path / "missing")) == set()


def test_fp32_enters_no_autocast_region():
    with FP32.autocast():
        assert not torch.is_autocast_enabled("cpu")
    with BF16.autocast():
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16


# -- numbers against float32 -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def llama_batch():
    """A tiny Llama (GQA, a vocabulary split into LM-head blocks) with trained-looking logits, and a batch
    of shared and distinct, left-padded prompts with right-padded responses."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=3000,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
    )
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():  # sharper than random init: log-probs down to ~-15, as a trained model's
        model.lm_head.weight.mul_(10)
    g = torch.Generator().manual_seed(0)
    prompt_ids = torch.randint(3, 3000, (6, 7), generator=g)
    prompt_ids[1] = prompt_ids[0]
    prompt_mask = torch.ones(6, 7, dtype=torch.bool)
    prompt_mask[3:, :2] = False
    response_ids = torch.randint(3, 3000, (6, 9), generator=g)
    response_mask = torch.ones(6, 9, dtype=torch.bool)
    response_mask[2:, 6:] = False
    return model, (prompt_ids, prompt_mask, response_ids, response_mask)


@pytest.mark.parametrize("layout", [packed_token_logprobs, padded_token_logprobs])
def test_bf16_logprobs_and_entropies_are_within_tolerance_of_fp32(llama_batch, layout):
    model, batch = llama_batch
    mask = batch[3]
    with torch.no_grad():
        lp32, ent32 = layout(model, *batch, temperature=0.8)
        with BF16.autocast():
            lp16, ent16 = layout(model, *batch, temperature=0.8)
    assert lp16.dtype == ent16.dtype == torch.float32
    for a, b in ((lp16, lp32), (ent16, ent32)):
        gap = (a - b)[mask].abs()
        assert gap.max() < MAX_TOKEN_GAP and gap.mean() < MEAN_TOKEN_GAP
        assert gap.max() > 0  # bf16 really ran
    assert (lp32[mask] < -5).any()  # the test has confident and unconfident tokens


def test_bf16_gradient_points_where_fp32s_does_on_a_sampled_batch(tiny_policy):
    """A real batch: responses the sampler drew, GRPO-style advantages, the ASPO loss with entropy."""
    model, tokenizer = tiny_policy
    rollout = HFEngine(model, tokenizer).generate(["12+7=", "3*4=", "40-17="], n=4, max_new_tokens=10, seed=0)
    adv = torch.linspace(-1, 1, len(rollout.group_ids))
    model.train()

    def gradient(precision):
        model.zero_grad()
        with precision.autocast():
            lp, ent = token_logprobs(
                model, rollout.prompt_ids, rollout.prompt_mask, rollout.response_ids, rollout.response_mask
            )
        old = rollout.behaviour_logprobs
        loss, _ = policy_loss("aspo", lp, old, adv, rollout.response_mask, entropy=ent)
        loss.backward()
        grads = [p.grad for p in model.parameters()]
        assert all(g.dtype == torch.float32 for g in grads)  # gradients land in float32
        return torch.cat([g.flatten() for g in grads])

    try:
        g32, g16 = gradient(FP32), gradient(BF16)
    finally:
        model.zero_grad()
        model.eval()
    cosine = torch.nn.functional.cosine_similarity(g32, g16, dim=0)
    assert cosine >= MIN_COSINE and not torch.equal(g32, g16)


def test_a_bf16_step_moves_the_float32_master_weights(llama_batch):
    """An update far below bf16's resolution (lr 1e-7: a weight of 0.02 moves by ~1e-7, bf16's step
    there is ~1e-4) still changes the float32 weights: nothing is rounded through bf16 in place."""
    import copy

    model, batch = llama_batch
    model = copy.deepcopy(model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-7)
    with BF16.autocast():
        lp, ent = token_logprobs(model, *batch)
    ((lp + 0.1 * ent).sum()).backward()
    opt.step()
    for name, p in model.named_parameters():
        assert p.dtype == p.grad.dtype == torch.float32, name
        state = opt.state[p]
        assert state["exp_avg"].dtype == state["exp_avg_sq"].dtype == torch.float32
        moved = (p.detach() - before[name]).abs()
        assert moved.max() > 0, name
        # the moves are float32-sized: a bf16 round trip of the new weight would undo most of them
        assert (p.detach().bfloat16().float() == before[name].bfloat16().float()).float().mean() > 0.5


def test_the_bf16_sampler_reports_what_the_bf16_trainer_recomputes(tiny_policy):
    model, tokenizer = tiny_policy
    engine = HFEngine(model, tokenizer)
    engine.precision = BF16
    rollout = engine.generate(["12+7=", "3*4="], n=3, max_new_tokens=12, temperature=0.8, seed=1)
    args = (rollout.prompt_ids, rollout.prompt_mask, rollout.response_ids, rollout.response_mask)
    with torch.no_grad():
        lp32, _ = token_logprobs(model, *args, temperature=0.8)
        with BF16.autocast():
            lp16, _ = token_logprobs(model, *args, temperature=0.8)
    mask = rollout.response_mask
    for other in (lp16, lp32):
        gap = (rollout.behaviour_logprobs - other)[mask].abs()
        assert gap.max() < MAX_TOKEN_GAP and gap.mean() < MEAN_TOKEN_GAP
    assert not torch.equal(rollout.behaviour_logprobs[mask], lp32[mask])  # the sampler ran bf16


# -- whole runs ------------------------------------------------------------------------------------


def test_auto_without_native_bf16_trains_in_fp32_and_says_why(tiny_run_inputs, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(precision_module, "cpu_flags", lambda path="/proc/cpuinfo": {"avx512f"})
    out = tmp_path / "r"
    trainer = Trainer(load_config(None, tiny_overrides(tiny_run_inputs, out, "train.steps=1")), progress=True)
    trainer.close()
    assert trainer.precision.name == "fp32" and trainer.engine.precision.name == "fp32"
    saved = (out / "config.yaml").read_text()
    assert "precision: fp32" in saved
    assert "# train.precision: auto -> precision fp32 (auto: this CPU has no native bf16" in saved
    assert "precision fp32 (auto: this CPU has no native bf16" in capsys.readouterr().out


def test_bf16_run_with_rollout_correction_resumes_exactly(tiny_run_inputs, tmp_path, monkeypatch):
    monkeypatch.setattr(precision_module, "cpu_flags", lambda path="/proc/cpuinfo": set())  # auto: fp32
    extra = [
        "train.precision=bf16",
        "rollout.correction=token_truncate",
        "train.eval_every=1",
        "train.plots=false",
    ]
    whole = tmp_path / "whole"
    Trainer(
        load_config(None, tiny_overrides(tiny_run_inputs, whole, "train.steps=4", *extra)), progress=False
    ).run()
    part = tmp_path / "part"
    Trainer(
        load_config(None, tiny_overrides(tiny_run_inputs, part, "train.steps=2", *extra)), progress=False
    ).run()
    # resumed with precision auto (fp32 on a CPU without native bf16): the run goes on in the bf16 it began in
    auto = [e.replace("precision=bf16", "precision=auto") for e in extra]
    resumed = Trainer(
        load_config(None, tiny_overrides(tiny_run_inputs, part, "train.steps=4", "resume=true", *auto)),
        progress=False,
    )
    assert resumed.step == 2 and resumed.precision.name == "bf16"
    assert "as the run being resumed" in resumed.precision.reason
    resumed.run()
    rows = read_metrics(whole)
    assert comparable(read_metrics(part)) == comparable(rows)
    trained = [r for r in rows if "rollout_corr/logprob_abs_diff" in r]
    assert len(trained) == 4
    for r in trained:
        # the bf16 sampler and the bf16 packed recompute differ a little, never wildly
        assert 0 < r["rollout_corr/logprob_abs_diff"] < MEAN_TOKEN_GAP
        assert r["rollout_corr/truncated_frac"] == 0.0 and r["rollout/logprob_abs_diff"] > 0
    assert "precision: bf16" in (whole / "config.yaml").read_text()


def test_lora_trains_in_bf16(tiny_run_inputs, tmp_path):
    pytest.importorskip("peft")
    out = tmp_path / "r"
    overrides = tiny_overrides(
        tiny_run_inputs, out, "train.precision=bf16", "lora.rank=4", "train.lr=1e-2", "train.plots=false"
    )
    trainer = Trainer(load_config(None, overrides), progress=False)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    trainer.run()
    after = dict(trainer.model.named_parameters())
    assert before and all(after[n].dtype == torch.float32 for n in before)
    assert any(not torch.equal(after[n].detach(), v) for n, v in before.items())
    rows = read_metrics(out)
    assert [r["step"] for r in rows] == [0, 1, 2, 3]
    # bf16 with recompute_logprobs=auto: the trainer's forward gives the behaviour log-probs, the gap logged
    assert trainer.recompute_logprobs and all(r["rollout_corr/logprob_abs_diff"] > 0 for r in rows[1:])


def test_auto_sizes_the_model_and_never_times_it(tiny_policy):
    """``auto`` decides from the flags and the parameter count alone: the same answer every call (a
    start-up timing flipped between runs on a busy machine), frozen parameters counted, no backward."""
    model = copy.deepcopy(tiny_policy[0])
    params = sum(p.numel() for p in model.parameters())
    for p in model.parameters():
        p.requires_grad_(False)  # as `aspo eval` holds it
    chosen = {resolve_precision("auto", "cpu", model, flags={"amx_bf16"}).name for _ in range(5)}
    assert chosen == {"bf16" if params >= AUTO_MIN_PARAMS else "fp32"}
    reason = resolve_precision("auto", "cpu", model, flags={"amx_bf16"}).reason
    assert f"{params / 1e6:.1f}M parameters" in reason and "amx_bf16" in reason
    assert "but no AMX" in resolve_precision("auto", "cpu", model, flags={"avx512_bf16"}).reason


def test_the_speed_probe_leaves_the_model_as_it_was(tiny_policy):
    """``model_speedup`` (what benchmarks/precision.py prints): a ratio, and afterwards no gradient, the
    same mode, the same global random stream."""
    from aspo.precision import model_speedup

    model, _ = tiny_policy
    state = torch.random.get_rng_state()
    speedup = model_speedup(model, rows=2, tokens=8, reps=1)
    assert 0 < speedup < float("inf")
    assert all(p.grad is None for p in model.parameters()) and not model.training
    assert torch.equal(torch.random.get_rng_state(), state)


def test_compare_passes_the_precision_to_every_run_and_can_sweep_it(tmp_path):
    from aspo.commands.compare import plan_runs

    runs, _, _ = plan_runs(None, ["train.precision=bf16"], ["grpo", "aspo"], [0], tmp_path / "a", {})
    assert [r.cfg.train.precision for r in runs] == ["bf16", "bf16"]
    assert all("train.precision=bf16" in r.overrides for r in runs)
    runs, _, _ = plan_runs(None, [], ["aspo"], [0, 1], tmp_path / "b", {"train.precision": ["fp32", "bf16"]})
    assert sorted((r.cfg.train.precision, r.cfg.train.seed) for r in runs) == [
        ("bf16", 0),
        ("bf16", 1),
        ("fp32", 0),
        ("fp32", 1),
    ]
