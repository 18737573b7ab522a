"""Tokenizer fertility: tokens per whitespace word, and the share of words cut into many pieces.

Fertility (Rust et al. 2021, "How Good is Your Tokenizer?") is what a tokenizer costs on a corpus: a domain term
cut into many pieces costs sequence length and is harder for a model to learn as a unit. `dapt assess` reports it
for the base's tokenizer on domain and on general text; `dapt tokenizer train|compare` for the tokenizers they
make and compare, counted the same way so the numbers agree.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from dapt.data.corpus_texts import sample_order

FERTILITY_SAMPLE_WORDS = 100_000  # a random 100k words: a few hundred documents, enough for a stable ratio
SPLIT_WORD_TOKENS = 3  # a word cut into 3+ pieces is the "split" word counted in the fertility section


@dataclass(frozen=True)
class Fertility:
    """Tokens per whitespace word, and the share of words cut into ≥ SPLIT_WORD_TOKENS tokens (None: slow tokenizer)."""

    words: int
    tokens: int
    split_share: float | None

    @property
    def tokens_per_word(self) -> float:
        return self.tokens / max(self.words, 1)


def tokenizer_fertility(tokenizer: Any, texts: list[str], max_words: int = FERTILITY_SAMPLE_WORDS) -> Fertility:
    """Fertility on documents in a seeded random order until `max_words` words.

    Each token belongs to the word holding its last character (a byte-level BPE's "Ġword" token starts on
    the space before the word); tokens that cover only whitespace count in the total but in no word.
    """
    fast = bool(getattr(tokenizer, "is_fast", False))
    words = tokens = split = 0
    for index in sample_order(len(texts)):
        text = texts[index]
        spans = [match.span() for match in re.finditer(r"\S+", text)]
        if not spans:
            continue
        encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=fast)
        tokens += len(encoded["input_ids"])
        words += len(spans)
        if fast:
            owner = np.full(len(text), -1, dtype=np.int64)
            for word, (start, end) in enumerate(spans):
                owner[start:end] = word
            offsets = np.asarray(encoded["offset_mapping"], dtype=np.int64).reshape(-1, 2)
            offsets = offsets[offsets[:, 1] > offsets[:, 0]]  # zero-width tokens belong to no word
            owners = owner[offsets[:, 1] - 1]
            pieces = np.bincount(owners[owners >= 0], minlength=len(spans))
            split += int((pieces >= SPLIT_WORD_TOKENS).sum())
        if words >= max_words:
            break
    return Fertility(words=words, tokens=tokens, split_share=split / max(words, 1) if fast else None)
