"""Character-level tokenizer for the tiny lab: one token per character, built with `tokenizers`.

Every character of the tasks' alphabet is its own token, so ``decode(encode(x)) == x`` exactly (spaces
included) and a tiny model never has to learn a sub-word segmentation. ``<bos>`` is prepended to every
encoded text (so a prompt alone and a prompt inside a training example start the same way); ``<eos>``
ends a demonstration and stops generation.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK)
# Every character any lab task writes; order fixes the token ids, so append, never reorder.
ALPHABET = "0123456789+-*/=()<>,.;:|#? "


def build_tokenizer(padding_side: str = "left") -> PreTrainedTokenizerFast:
    """The lab's character tokenizer (vocab = 4 specials + ``ALPHABET``), wrapped for transformers.

    ``padding_side`` defaults to "left" because generation batches left-pad prompts; SFT pads right.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    vocab = {token: i for i, token in enumerate((*SPECIAL_TOKENS, *ALPHABET))}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    # split into single characters ((?s) so even a newline is one unknown char, not dropped)
    core.pre_tokenizer = pre_tokenizers.Split(Regex("(?m)."), behavior="isolated")
    core.decoder = decoders.Fuse()  # join characters back with no separator
    core.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, vocab[BOS])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        padding_side=padding_side,
        clean_up_tokenization_spaces=False,
        model_max_length=512,
    )
