"""base: materialise the original base model as a plain HF folder — the root of the lineage."""

from __future__ import annotations

from typing import Any

import torch

from dapt.config import BaseConfig
from dapt.data.documents import read_documents
from dapt.model.load import check_vocab, load_original_base, parameter_count, save_model_folder
from dapt.pipeline import StageContext
from dapt.tokenizer.train import train_tokenizer


def run(context: StageContext) -> dict[str, Any]:
    config = BaseConfig.model_validate(context.config["base"])
    torch.manual_seed(context.config["seed"])  # only a from-scratch preset draws random weights
    context.log(f"loading {config.model or 'a from-scratch preset'}")
    trained_tokenizer = None
    if config.preset is not None and config.preset.tokenizer_vocab_size:
        texts = read_documents(context.inputs["corpus"].path / "documents.parquet").column("text").to_pylist()
        context.log(f"training a {config.preset.tokenizer_vocab_size}-token BPE tokenizer on {len(texts)} documents")
        trained_tokenizer = train_tokenizer(texts, config.preset.tokenizer_vocab_size)
    model, tokenizer, origin = load_original_base(config, trained_tokenizer)
    check_vocab(model, tokenizer, "base")
    save_model_folder(model, tokenizer, context.out / "model")
    context.log(f"{type(model).__name__}, {parameter_count(model) / 1e6:.1f}M parameters, from {origin}")
    return {
        "origin": origin,
        "architecture": type(model).__name__,
        "parameters": parameter_count(model),
        "vocab_size": len(tokenizer),
        "model_folder": "model",
    }
