"""`dapt tokenizer train`: a new byte-level BPE tokenizer trained on a corpus, for a base built from scratch.

The recipe is GPT-2's (Radford et al. 2019), as SmolLM2, Llama 3 and Qwen2 use it: text is cut into words
by GPT-2's regex, each word becomes bytes shown as 256 printable stand-in characters, and BPE merges the
most frequent adjacent pair until the vocabulary has the size asked for. Because all 256 bytes are in the
vocabulary from the start (the trainer's initial alphabet), every string encodes — emoji, CJK, control
characters — and decodes back exactly; there is no unknown token.

The tokenizer gets the special tokens a base needs (`<|endoftext|>` as bos and eos, `<|pad|>`) and is saved
as a `PreTrainedTokenizerFast` folder that `AutoTokenizer.from_pretrained` loads.

The corpus is streamed: the trainer (`tokenizers`' `train_from_iterator`) takes the documents one batch at a
time and keeps only the count of each distinct word, so memory grows with the corpus's vocabulary, not its
size. The fertility printed at the end is measured on a seeded sample drawn during that same pass.
"""

from __future__ import annotations

import glob
import os
import sys
import time
from collections.abc import Iterable, Sized
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from dapt.data.corpus_texts import CorpusTexts, WordSample, with_progress
from dapt.errors import ConfigError, DataError
from dapt.model.byte_level import END_OF_TEXT, PAD
from dapt.tokenizer.fertility import FERTILITY_SAMPLE_WORDS, tokenizer_fertility

SPECIAL_TOKENS = (END_OF_TEXT, PAD)
# A pair seen once is noise in the corpus, not a unit of the language: merging it spends a vocabulary slot on
# one occurrence. 2 is the least frequency a merge needs (the `tokenizers` default is 0).
MIN_PAIR_FREQUENCY = 2
BYTE_ALPHABET = pre_tokenizers.ByteLevel.alphabet()  # the 256 printable stand-ins for bytes, as GPT-2 uses
SMALLEST_VOCAB = len(BYTE_ALPHABET) + len(SPECIAL_TOKENS)


def open_corpus(paths: list[str], *, text_field: str = "text", side: str = "domain") -> CorpusTexts:
    """The non-empty texts of `paths` (files, globs, folders of files, or dapt artifact folders), to iterate over as
    often as needed: each pass reads them anew, batch by batch, and none is held.

    Files are read by `dapt.data.ingest` (txt, md, jsonl, parquet, ...); a folder holding `documents.parquet` is
    read as an artifact, as `dapt assess` reads it (inside a run, only the sources whose role fits `side`).
    Every path that exists nowhere is named in one DataError, rather than the first one only; paths that hold no
    non-empty document are a DataError on the first pass.
    """
    missing = [path for path in paths if not glob.glob(os.path.expanduser(path), recursive=True)]
    if missing:
        raise DataError(
            f"{side} text: not found: {', '.join(missing)} (looked in {Path.cwd()}); check the paths, or make "
            "them absolute"
        )
    return CorpusTexts(paths, side=side, text_field=text_field, base_dir=Path.cwd())


def byte_level_bpe(
    vocab_size: int, special_tokens: Iterable[str] = (), pre_tokenizer_from: Tokenizer | None = None
) -> tuple[Tokenizer, trainers.BpeTrainer]:
    """An untrained byte-level BPE tokenizer and the trainer that fills it.

    With `pre_tokenizer_from`, the new tokenizer normalises and cuts words exactly as that tokenizer does,
    so the tokens it learns are units the other one could hold too (what vocabulary extension needs).
    """
    tokenizer = Tokenizer(models.BPE())
    if pre_tokenizer_from is None:
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    else:
        if pre_tokenizer_from.normalizer is not None:
            tokenizer.normalizer = pre_tokenizer_from.normalizer
        tokenizer.pre_tokenizer = pre_tokenizer_from.pre_tokenizer
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=MIN_PAIR_FREQUENCY,
        special_tokens=list(special_tokens),
        initial_alphabet=BYTE_ALPHABET,
        show_progress=False,
    )
    return tokenizer, trainer


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer of (at most) `vocab_size` tokens trained on `texts`, read once, as a stream.

    Ids 0 and 1 are `<|endoftext|>` (bos and eos) and `<|pad|>`, then the 256 bytes, then the merges. A
    corpus with fewer pairs seen at least MIN_PAIR_FREQUENCY times than the size asks for gives a smaller
    vocabulary; `len(tokenizer)` says how big it came out.
    """
    if vocab_size < SMALLEST_VOCAB:
        raise ConfigError(
            f"--vocab-size {vocab_size}: a byte-level tokenizer needs at least {SMALLEST_VOCAB} tokens "
            f"(256 bytes + {len(SPECIAL_TOKENS)} special tokens); typical sizes are 8k-64k"
        )
    core, trainer = byte_level_bpe(vocab_size, SPECIAL_TOKENS)
    core.train_from_iterator(texts, trainer, length=len(texts) if isinstance(texts, Sized) else None)
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token=END_OF_TEXT,
        eos_token=END_OF_TEXT,
        pad_token=PAD,
        clean_up_tokenization_spaces=False,  # decode(encode(s)) must give s back, spaces before "." included
    )


def run_train(paths: list[str], *, vocab_size: int, out: Path, text_field: str = "text") -> int:
    """The CLI's entry point: train on the streamed corpus, save the folder, print what came out."""
    corpus = open_corpus(paths, text_field=text_field)
    sample = WordSample(FERTILITY_SAMPLE_WORDS)  # drawn during the training pass: no second read for it
    started = time.perf_counter()
    tokenizer = train_tokenizer(sample.passing(with_progress(corpus, "tokenizer train: read and count")), vocab_size)
    seconds = time.perf_counter() - started
    tokenizer.save_pretrained(out)
    fertility = tokenizer_fertility(tokenizer, sample.texts(), max_words=sys.maxsize)  # every sampled document
    measured = (
        "on them"
        if sample.covers_corpus
        else f"on a seeded random sample of {len(sample.texts()):,} of them ({sample.words:,} words)"
    )
    size = len(tokenizer)
    print(
        f"dapt tokenizer train: {size:,} tokens"
        + (f" (asked for {vocab_size:,}: the corpus has no more pairs seen twice)" if size < vocab_size else "")
        + f" from {corpus.documents:,} documents ({corpus.chars / 1e6:.1f}M characters), read and trained in "
        f"{seconds:.1f} s; {fertility.tokens_per_word:.2f} tokens per word {measured}"
    )
    print(f"saved to {out} (load with AutoTokenizer.from_pretrained)")
    return 0
