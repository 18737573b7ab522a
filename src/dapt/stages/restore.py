"""restore: give back what continued pretraining cost, by parameter arithmetic on the DAPT base (`restore:`).

Continued pretraining of a chat model erodes its alignment (ChipNeMo), and continued pretraining of a pretrained base
leaves no instruction following at all. Two cheap remedies, with no training:

- `merge`: interpolate the DAPT base back towards the original base, `(1 - w) * DAPT + w * original`. When the
  original is itself the chat model (the demo's SmolLM2-135M-Instruct), this trades part of the domain gain for part
  of the alignment back; `w` sets the trade.
- `chat_vector`: when the DAPT base was continued from the pretrained base of an instruct model, add the instruction
  tuning's delta, `DAPT + w * (instruct - base_of_instruct)` (Huang et al. 2024, "Chat Vector").

The stage writes the restored model as a plain Hugging Face folder (the DAPT base's config and tokenizer, the chat
template of `instruct` when the DAPT base's tokenizer has none), a child of the DAPT base in the lineage; the
arithmetic streams tensor by tensor (`dapt.model.merge`). `cost-restored` (`dapt.stages.cost`) then measures it.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from transformers import AutoTokenizer, PreTrainedTokenizerBase

from dapt.config import BaseConfig, RestoreConfig
from dapt.errors import ConfigError
from dapt.model.load import load_original_base, save_model_folder
from dapt.model.merge import chat_vector, merge
from dapt.stages.context import StageContext

MODEL_FILES = ("config.json", "generation_config.json")  # copied from the DAPT base: the restored model is one too
HUB_FILES = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja"]  # weights, config, tokenizer; no .bin


def weights_folder(spec: str, revision: str | None, scratch: Path, field: str) -> Path:
    """A folder with safetensors weights and a tokenizer for the model `spec` names (the forms of base.model).

    A local folder is read where it is and a hub id from the hub cache (or fetched); a GGUF file is de-quantized
    into `scratch` (the whole model in fp32 in memory once, as the `base` stage does with one)."""
    if spec.startswith("package:") or spec.endswith(".gguf"):
        try:
            model, tokenizer, _ = load_original_base(BaseConfig(model=spec))
        except ConfigError as error:
            raise ConfigError(str(error).replace("base.model", field, 1)) from None
        save_model_folder(model, tokenizer, scratch)
        return scratch
    local = Path(spec)
    if local.exists():
        if not (local / "config.json").is_file():
            raise ConfigError(f"{field}: {spec} is a folder but holds no config.json; is it a Hugging Face model?")
        return local
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(spec, revision=revision, allow_patterns=HUB_FILES))
    except Exception as error:  # offline, unknown id, gated: all mean the same to the user
        raise ConfigError(
            f"{field}: could not load {spec!r} as a local folder (none there) or a hub id that could be fetched: "
            f"{type(error).__name__}: {error}"
        ) from None


def check_same_ids(dapt: PreTrainedTokenizerBase, other: PreTrainedTokenizerBase, label: str) -> None:
    """Every token of `other` has the same id in the DAPT base's tokenizer (which may have more, appended): the
    arithmetic adds embedding rows by id, so an id must mean the same token in every model."""
    dapt_vocab = dapt.get_vocab()
    differing = [token for token, index in other.get_vocab().items() if dapt_vocab.get(token) != index]
    if differing:
        shown = ", ".join(repr(token) for token in sorted(differing)[:3])
        raise ConfigError(
            f"restore: {len(differing)} tokens of {label} have another id (or none) in the DAPT base's tokenizer "
            f"(e.g. {shown}); parameter arithmetic adds embedding rows by id, so the models must share a tokenizer "
            "(the DAPT base may only have tokens appended, by vocab:)"
        )


def run(context: StageContext) -> dict[str, Any]:
    settings = context.section_of(RestoreConfig)
    weight = settings.weight
    assert weight is not None  # the config fills in the method's default
    dapt_folder = context.inputs["base"].path / "model"  # the DAPT base: the restored model is its child
    original_folder = context.inputs["original"].path / "model"
    out = context.out / "model"
    dapt_tokenizer = AutoTokenizer.from_pretrained(dapt_folder)
    metrics: dict[str, Any] = {"method": settings.method, "weight": weight}
    if settings.method == "merge":
        check_same_ids(dapt_tokenizer, AutoTokenizer.from_pretrained(original_folder), "the original base")
        metrics["formula"] = f"{1 - weight:g} × DAPT base + {weight:g} × original base"
        context.log(f"merging: {metrics['formula']}")
        metrics |= merge(dapt_folder, original_folder, weight, out)
    else:
        assert settings.instruct is not None
        scratch = context.out / "scratch"  # de-quantized GGUF inputs, removed before the manifest is written
        instruct = weights_folder(settings.instruct, settings.revision, scratch / "instruct", "restore.instruct")
        base_of_instruct = (
            original_folder
            if settings.base_of_instruct is None
            else weights_folder(
                settings.base_of_instruct, settings.revision, scratch / "base_of_instruct", "restore.base_of_instruct"
            )
        )
        instruct_tokenizer = AutoTokenizer.from_pretrained(instruct)
        check_same_ids(dapt_tokenizer, instruct_tokenizer, f"restore.instruct ({settings.instruct})")
        check_same_ids(
            dapt_tokenizer,
            AutoTokenizer.from_pretrained(base_of_instruct),
            f"restore.base_of_instruct ({settings.base_of_instruct or 'the original base'})",
        )
        metrics["formula"] = f"DAPT base + {weight:g} × (instruct − base of instruct)"
        metrics["instruct"] = settings.instruct
        metrics["base_of_instruct"] = settings.base_of_instruct or "the original base"
        context.log(f"chat vector: {metrics['formula']}")
        metrics |= chat_vector(dapt_folder, instruct, base_of_instruct, weight, out)
        # the instruction-tuned behaviour answers in the instruct model's template: keep it with the model
        metrics["chat_template_from_instruct"] = not dapt_tokenizer.chat_template and bool(
            instruct_tokenizer.chat_template
        )
        if metrics["chat_template_from_instruct"]:
            dapt_tokenizer.chat_template = instruct_tokenizer.chat_template
        shutil.rmtree(scratch, ignore_errors=True)
    for name in MODEL_FILES:
        if (dapt_folder / name).is_file():
            shutil.copy2(dapt_folder / name, out / name)
    dapt_tokenizer.save_pretrained(out)
    kept = (
        f"; the {metrics['added_rows_kept']} added tokens' rows kept as the DAPT base has them"
        if metrics["added_rows_kept"]
        else ""
    )
    context.log(f"{metrics['tensors']} tensors, {metrics['parameters'] / 1e6:.1f}M parameters written{kept}")
    return metrics | {"model_folder": "model"}
