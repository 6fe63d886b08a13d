"""The lab's character tokenizer and tiny Qwen2 model: round-trips, save/load, size."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from aspo.lab.model import build_model, count_parameters, load_policy
from aspo.lab.tokenizer import ALPHABET, build_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


@settings(max_examples=200, deadline=None)
@given(text=st.text(alphabet=ALPHABET, max_size=60))
def test_tokenizer_round_trips_every_alphabet_string(tokenizer, text):
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == len(text)  # one token per character, spaces included
    assert tokenizer.decode(ids) == text
    with_bos = tokenizer(text)["input_ids"]
    assert with_bos[0] == tokenizer.bos_token_id
    assert tokenizer.decode(with_bos, skip_special_tokens=True) == text


def test_unknown_characters_become_unk_not_dropped(tokenizer):
    ids = tokenizer("1a\n2", add_special_tokens=False)["input_ids"]
    assert ids == [
        tokenizer.convert_tokens_to_ids("1"),
        tokenizer.unk_token_id,
        tokenizer.unk_token_id,
        tokenizer.convert_tokens_to_ids("2"),
    ]


def test_left_padding_and_special_ids(tokenizer):
    assert len({tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id}) == 3
    batch = tokenizer(["1+2=", "123+456="], padding=True)
    assert batch["input_ids"][0][:4] == [tokenizer.pad_token_id] * 4
    assert batch["attention_mask"][0] == [0, 0, 0, 0, 1, 1, 1, 1, 1]
    right = build_tokenizer(padding_side="right")(["1+2=", "123+456="], padding=True)
    assert right["input_ids"][0][-4:] == [tokenizer.pad_token_id] * 4
    with pytest.raises(ValueError, match="padding_side"):
        build_tokenizer(padding_side="middle")


def test_tokenizer_save_load_identical(tokenizer, tmp_path):
    from transformers import AutoTokenizer

    tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    text = "347+285=7+5+0=12,4+8+1=13|236 (3*5)-7/2>9:"
    assert loaded(text)["input_ids"] == tokenizer(text)["input_ids"]
    assert loaded.decode(loaded(text)["input_ids"], skip_special_tokens=True) == text
    assert loaded.get_vocab() == tokenizer.get_vocab()


def test_model_size_and_seeded_init(tokenizer):
    model = build_model(tokenizer, seed=0)
    assert 0.5e6 <= count_parameters(model) <= 5e6
    assert model.config.vocab_size == len(tokenizer) < 64
    same = build_model(tokenizer, seed=0)
    other = build_model(tokenizer, seed=1)
    weights = model.model.layers[0].mlp.up_proj.weight
    assert torch.equal(weights, same.model.layers[0].mlp.up_proj.weight)
    assert not torch.equal(weights, other.model.layers[0].mlp.up_proj.weight)
    small = build_model(tokenizer, hidden_size=64, num_hidden_layers=2)
    assert count_parameters(small) < count_parameters(model) / 4
    with pytest.raises(ValueError, match="unknown model size keys"):
        build_model(tokenizer, hiden_size=64)


def test_model_save_load_gives_identical_logits_and_generation(tokenizer, tmp_path):
    model = build_model(tokenizer, seed=3, hidden_size=64, num_hidden_layers=2)
    model.eval()
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    loaded, loaded_tok = load_policy(tmp_path)
    batch = tokenizer(["12+34=", "999+1="], return_tensors="pt", padding=True)
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, loaded(**batch).logits)
    assert loaded_tok.padding_side == "left"
    out = loaded.generate(**batch, do_sample=False, max_new_tokens=5)
    width = batch["input_ids"].shape[1]
    assert torch.equal(out[:, :width], batch["input_ids"]) and width < out.shape[1] <= width + 5
    with torch.no_grad():
        assert torch.equal(out, model.generate(**batch, do_sample=False, max_new_tokens=5))
    assert (
        loaded.generation_config.top_k is None
        and loaded.generation_config.eos_token_id == tokenizer.eos_token_id
    )


def test_importing_the_lab_is_light():
    import subprocess
    import sys

    code = (
        "import sys, aspo.lab; from aspo.lab import get_task, warm_start; get_task('countdown');"
        "print('torch' in sys.modules, 'transformers' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
