"""base: materialise the original base model as a plain HF folder — the root of the lineage."""

from __future__ import annotations

from typing import Any

import torch

from dapt.config import BaseConfig
from dapt.model.load import check_vocab, load_original_base, parameter_count, save_model_folder
from dapt.pipeline import StageContext


def run(context: StageContext) -> dict[str, Any]:
    config = BaseConfig.model_validate(context.config["base"])
    torch.manual_seed(context.config["seed"])  # only a from-scratch preset draws random weights
    context.log(f"loading {config.model or 'a from-scratch preset'}")
    model, tokenizer, origin = load_original_base(config)
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
