"""A byte-level tokenizer that needs no training: one token per byte, plus special tokens.

Used with from-scratch presets (tests, tiny experiments), so a pipeline can run with no downloaded
tokenizer. It is a real Hugging Face `tokenizers` BPE with no merges, so it round-trips any text.
"""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

END_OF_TEXT = "<|endoftext|>"
PAD = "<|pad|>"


def byte_level_tokenizer() -> PreTrainedTokenizerFast:
    """256 byte tokens + `<|endoftext|>` (bos/eos) + `<|pad|>`: vocabulary size 258."""
    alphabet = pre_tokenizers.ByteLevel.alphabet()  # the 256 printable stand-ins for bytes, as GPT-2 uses
    vocab = {symbol: index for index, symbol in enumerate(sorted(alphabet))}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    core.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, bos_token=END_OF_TEXT, eos_token=END_OF_TEXT)
    tokenizer.add_special_tokens({"pad_token": PAD})
    return tokenizer
