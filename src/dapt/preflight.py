"""Checks made before a stage runs, so that a mistake stops the run at once, not after hours of curation.

- the base model is there: a local folder or file that exists (with a config.json), an installed package's
  GGUF file, or something shaped like a hub id (`org/name`);
- the training windows fit the base's positions (`pretrain.seq_len`, each task's `max_length` and
  `tapt_seq_len`), read from the preset, the local folder's config.json or a hub config already in the local
  cache; for a GGUF file or an uncached hub id, right after the base stage has saved the model; and
  `pretrain.seq_len` against each split's tokens, right after tokenization;
- before pretraining, the disk has room for the checkpoints it keeps (a warning, as the estimate is rough).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from dapt.artifacts import Artifact
from dapt.config import PipelineConfig
from dapt.errors import ConfigError, free_megabytes, mount_of

# huggingface_hub's rule for a repo id: `name` or `namespace/name`, word characters, '.' and '-'
HUB_ID = re.compile(r"[\w.-]+(/[\w.-]+)?")
POSITION_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")


def check_before_running(config: PipelineConfig) -> None:
    """Everything that can be checked with no stage run: the base model is there; windows fit its positions."""
    if config.base.model is not None:
        check_base_model(config.base.model)
    positions, source = base_positions(config)
    if positions is not None:
        check_positions(config, positions, source)


def check_base_model(model: str) -> None:
    """`base.model` names a file or folder that exists, a package's file, or looks like a hub id."""
    fix = (
        "give a Hugging Face model folder, a .gguf file, 'package:PKG/FILE.gguf', or a hub id such as "
        "HuggingFaceTB/SmolLM2-135M"
    )
    if model.startswith("package:"):
        from dapt.model.load import find_package_file

        find_package_file(model)
        return
    path = Path(model)
    if path.is_absolute() or model.endswith(".gguf") or model.startswith("~"):
        if not path.exists():
            hint = " (~ is not expanded: give the full path)" if model.startswith("~") else ""
            raise ConfigError(f"base.model: {model!r} not found{hint} (looked in {path.resolve()}); {fix}")
        if path.is_dir() and not (path / "config.json").is_file():
            raise ConfigError(
                f"base.model: {model} is a folder but holds no config.json; is it a Hugging Face model? {fix}"
            )
        return
    if not HUB_ID.fullmatch(model) or ".." in model or "--" in model:
        raise ConfigError(f"base.model: {model!r} is neither a file or folder here nor a hub id; {fix}")


def model_positions(config_json: Path) -> int | None:
    """The longest sequence a model's config.json allows, when it says."""
    try:
        values = json.loads(Path(config_json).read_text())
    except (OSError, ValueError):
        return None
    found = [values.get(key) for key in POSITION_KEYS if isinstance(values.get(key), int)]
    return found[0] if found else None


def base_positions(config: PipelineConfig) -> tuple[int | None, str]:
    """(positions of the base model, where that was read), or (None, '') when it cannot be known yet."""
    base = config.base
    if base.preset is not None:
        return base.preset.max_position_embeddings, "base.preset.max_position_embeddings"
    model = base.model or ""
    if model.startswith("package:") or model.endswith(".gguf"):
        return None, ""
    if Path(model).is_dir():
        return model_positions(Path(model) / "config.json"), f"{model}/config.json"
    try:  # a hub config already downloaded; nothing is fetched here
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(model, "config.json", revision=base.revision)
    except Exception:  # not a valid repo id for the hub's client, or no cache: known after the base stage
        return None, ""
    return (model_positions(Path(cached)), f"{model}'s config.json") if isinstance(cached, str) else (None, "")


def check_positions(config: PipelineConfig, positions: int, source: str) -> None:
    """Every window length the pipeline trains or tests with fits the base's positions (pretraining: the window
    `pretrain.context` extends it to, when set)."""
    lengths = [] if config.pretrain.context is not None else [("pretrain.seq_len", config.pretrain.seq_len)]
    if config.pretrain.context is None:  # with one, the config checks each stage against its length
        stages = config.pretrain.stages or []
        lengths += [(f"pretrain.stages[{i}].seq_len", s.seq_len) for i, s in enumerate(stages) if s.seq_len]
    if config.pretrain.context is not None and config.pretrain.seq_len > config.pretrain.context.length:
        raise ConfigError(
            f"pretrain.seq_len: {config.pretrain.seq_len} tokens, more than pretrain.context.length "
            f"({config.pretrain.context.length}); set pretrain.seq_len to {config.pretrain.context.length} or less"
        )
    for index, task in enumerate(config.tasks):
        lengths.append((f"tasks[{index}].max_length", task.max_length))
        if task.tapt_steps:
            lengths.append((f"tasks[{index}].tapt_seq_len", task.tapt_seq_len))
    for key, length in lengths:
        if length > positions:
            raise ConfigError(
                f"{key}: {length} tokens, but the base model takes at most {positions} positions ({source}); "
                f"set {key} to {positions} or less"
            )


def check_split_lengths(config: PipelineConfig, tokens: Artifact) -> None:
    """Every split (and training source) of a tokenize artifact holds at least one window of pretrain.seq_len,
    checked as soon as the counts are known, before pretraining or evaluation would stop on it."""
    seq_len = config.pretrain.seq_len
    short = []
    for split, stats in tokens.metrics.get("splits", {}).items():
        counts = {split: stats.get("tokens", 0)}
        counts |= {f"{split} of {name}": s.get("tokens", 0) for name, s in stats.get("sources", {}).items()}
        short += [(what, count) for what, count in counts.items() if 0 < count <= seq_len]  # a window: seq_len + 1
        for stage in config.pretrain.training_stages() if config.pretrain.stages else []:
            if split.endswith("_train") and stage.seq_len > seq_len:  # a stage's longer windows: its training text
                drawn = [f"{split} of {name}" for name in stage.mix] if stage.mix else [split]
                long = [(what, count) for what, count in counts.items() if what in drawn and 0 < count <= stage.seq_len]
                if long:
                    what, count = min(long, key=lambda item: item[1])
                    raise ConfigError(
                        f"pretrain.stages[{stage.index}].seq_len: {stage.seq_len} tokens per window, but {what} "
                        f"holds only {count} tokens ({tokens.path}), and a window takes seq_len + 1; set it to "
                        f"{count - 1} or less"
                    )
    if short:
        what, count = min(short, key=lambda item: item[1])
        held_out = "" if what.split()[0].endswith("_train") else ", or raise tokenize.eval_tokens"
        raise ConfigError(
            f"pretrain.seq_len: {seq_len} tokens per window, but {what} holds only {count} tokens "
            f"({tokens.path}), and a window takes seq_len + 1; set pretrain.seq_len to {count - 1} or less{held_out}"
        )


def checkpoint_space_mb(settings: dict[str, Any], model_folder: Path) -> float:
    """About how much disk pretraining needs, in MB: the weights (fp32, as the base is saved) in every checkpoint
    kept (`keep_checkpoints` + the best) + the one being written + the exported model, and AdamW's two moments in
    the newest checkpoint and the one being written (for LoRA, the adapters' state: small). `settings`: the
    pretrain stage's config section."""
    weights = sum(path.stat().st_size for path in Path(model_folder).glob("*.safetensors"))
    copies = settings["keep_checkpoints"] + 3
    optimizer = 0 if settings.get("method") == "lora" else 2 * weights * 2
    return (copies * weights + optimizer) / 1e6


def disk_warning(needed_mb: float, folder: Path) -> str | None:
    """A warning when the disk holding `folder` has less free space than `needed_mb`, else None."""
    free = free_megabytes(folder)
    if free >= needed_mb:
        return None
    device, mount = mount_of(folder)
    return (
        f"warning: pretraining may need ~{needed_mb:,.0f} MB for its checkpoints and model, and {device} (mounted at "
        f"{mount}) has {free:,.1f} MB free; free space, or lower pretrain.keep_checkpoints, or it may stop when the "
        "disk is full (the same command then resumes from the last checkpoint)"
    )
