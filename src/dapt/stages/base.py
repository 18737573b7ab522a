"""base: materialise the original base model as a plain HF folder — the root of the lineage.

Its tokenizer is checked on the way: a byte-level BPE that lacks some of the 256 byte tokens silently drops
the characters that need them (SmolLM2's tokenizer converted from its GGUF file lacks 21, e.g. 0x04 and 0xF1),
so the stage warns, naming the bytes, and the manifest records them (`tokenizer_missing_bytes`).
"""

from __future__ import annotations

from typing import Any

import torch

from dapt.config import BaseConfig
from dapt.data.corpus_texts import with_progress
from dapt.data.documents import document_texts
from dapt.model.byte_level import NOT_IN_UTF8, describe_bytes, missing_bytes
from dapt.model.load import check_vocab, load_original_base, parameter_count, save_model_folder
from dapt.stages.context import StageContext
from dapt.tokenizer.train import train_tokenizer


def run(context: StageContext) -> dict[str, Any]:
    config = context.section_of(BaseConfig)
    torch.manual_seed(context.config["seed"])  # only a from-scratch preset draws random weights
    context.log(f"loading {config.model or 'a from-scratch preset'}")
    trained_tokenizer = None
    if config.preset is not None and config.preset.tokenizer_vocab_size:
        # streamed from the curated corpus, a batch at a time: memory does not grow with it
        count, texts = document_texts(context.inputs["corpus"].path / "documents.parquet")
        context.log(f"training a {config.preset.tokenizer_vocab_size}-token BPE tokenizer on {count} documents")
        trained_tokenizer = train_tokenizer(
            with_progress(texts, "tokenizer", count), config.preset.tokenizer_vocab_size
        )
    model, tokenizer, origin = load_original_base(config, trained_tokenizer)
    check_vocab(model, tokenizer, "base")
    missing = missing_bytes(tokenizer)
    if missing and set(missing) - NOT_IN_UTF8:
        context.log(f"warning: the base's tokenizer cannot encode {describe_bytes(missing)}")
    save_model_folder(model, tokenizer, context.out / "model")
    context.log(f"{type(model).__name__}, {parameter_count(model) / 1e6:.1f}M parameters, from {origin}")
    return {
        "origin": origin,
        "architecture": type(model).__name__,
        "parameters": parameter_count(model),
        "vocab_size": len(tokenizer),
        # None: not a byte-level (or byte-fallback) BPE, so not checked; [] : every byte has its token
        "tokenizer_missing_bytes": None if missing is None else [f"0x{byte:02X}" for byte in missing],
        "model_folder": "model",
    }
