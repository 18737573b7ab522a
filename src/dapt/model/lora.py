"""LoRA adapters via peft for continued pretraining, and the merge back into a plain HF model."""

from __future__ import annotations

import re
from pathlib import Path

import torch
from peft import LoraConfig as PeftLoraConfig
from peft import PeftModel, get_peft_model, set_peft_model_state_dict
from safetensors import SafetensorError
from safetensors.torch import load_file
from transformers import PreTrainedModel

from dapt.config import LoraConfig
from dapt.errors import CheckpointError

ADAPTER_WEIGHTS = "adapter_model.safetensors"


def embedding_modules(model: PreTrainedModel) -> list[str]:
    """Names of the input embedding and (if it is a separate matrix) the output head, as peft addresses them."""
    names = []
    for module in (model.get_input_embeddings(), model.get_output_embeddings()):
        if module is None:
            continue
        name = next(n for n, m in model.named_modules() if m is module)
        names.append(name.rsplit(".", 1)[-1])
    return names


def add_lora(model: PreTrainedModel, config: LoraConfig, task_type: str = "CAUSAL_LM") -> PeftModel:
    """Wrap `model` with trainable LoRA adapters; everything else is frozen (but embeddings, on request).

    task_type "SEQ_CLS" is for a sequence classifier: peft then leaves the freshly initialised head (`score`)
    out of the adapters and trains it in full (modules_to_save), and the merged export keeps it as trained.
    """
    peft_config = PeftLoraConfig(
        r=config.r,
        lora_alpha=config.alpha,
        lora_dropout=config.dropout,
        target_modules=config.target_modules,
        modules_to_save=embedding_modules(model) if config.train_embeddings else None,
        # tied input/output embeddings stay one matrix while training, as they are in the exported model
        ensure_weight_tying=bool(config.train_embeddings and model.config.tie_word_embeddings),
        task_type=task_type,
    )
    return get_peft_model(model, peft_config)


def load_adapter_weights(model: PeftModel, folder: Path) -> None:
    """Load adapter (and modules_to_save) weights saved by `model.save_pretrained(folder)` into `model`.

    Adapters of another base, architecture or LoRA setting (rank, target modules) are a CheckpointError that
    names a few of the weights that differ; so is a missing or damaged file.
    """
    path = folder / ADAPTER_WEIGHTS
    try:
        weights = load_file(path)
    except (SafetensorError, OSError) as error:
        raise CheckpointError.unreadable(path, error) from error
    try:
        result = set_peft_model_state_dict(model, weights)
    except RuntimeError as error:  # "size mismatch for NAME: copying a param with shape ...": another rank, say
        reshaped = re.findall(r"size mismatch for (\S+):", str(error))
        if not reshaped:
            raise
        raise CheckpointError.mismatch(folder, [], [], reshaped) from error
    trainable = {name for name, parameter in model.named_parameters() if parameter.requires_grad}
    missing = [name for name in result.missing_keys if name in trainable]  # the base's own weights are not saved
    if missing or result.unexpected_keys:
        raise CheckpointError.mismatch(folder, missing, result.unexpected_keys)


@torch.no_grad()
def merged_model(model: PeftModel) -> PreTrainedModel:
    """The base with the adapters folded into its weights: a plain model any HF tool loads."""
    merged = model.merge_and_unload()
    if merged.config.tie_word_embeddings:
        merged.tie_weights()
    return merged
