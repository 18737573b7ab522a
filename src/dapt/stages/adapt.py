"""adapt: branch a base into a task variant — a sequence classifier, an instruction follower, or a DPO variant.

The same recipe, data, budget and seed run twice: from the DAPT base and from the original base (the
control), so the only difference between the two variants is the continued pretraining. The base's
files are only read; the variant is a new HF folder (`model/`) that
`AutoModelForSequenceClassification.from_pretrained` loads.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from transformers import AutoTokenizer

from dapt.config import TaskConfig
from dapt.data.progress import Progress, peak_rss_mb
from dapt.data.tasks import split_examples
from dapt.model.chat import encode_pair, pad_pairs, uses_chat_template
from dapt.model.classifier import (
    TopBlocks,
    build_classifier,
    cached_frozen_features,
    encode_right_padded,
    freeze_all_but,
)
from dapt.model.load import load_causal_lm, parameter_count, save_model_folder
from dapt.model.lora import add_lora, merged_model
from dapt.stages.context import StageContext
from dapt.stages.tasks import read_examples
from dapt.train.loop import LoopSettings, TrainResult, train_loop
from dapt.train.objectives import classification_loss, dpo_loss, response_only_loss, sequence_logps
from dapt.train.precision import PrecisionChoice, autocast, choose_precision

FEATURE_BATCH = 16


def shuffled_batches(count: int, batch_size: int, seed: int, rows: Any) -> Any:
    """An endless stream of rows(index) over a fresh seeded shuffle per epoch."""
    generator = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(count, generator=generator)
        for start in range(0, count, batch_size):
            yield rows(order[start : start + batch_size])


def training_examples(context: StageContext) -> tuple[list[dict[str, str]], float]:
    """The task's training examples for this run: all of them, or a stratified share (data-efficiency runs)."""
    train = read_examples(context.inputs["task"].path / "train.parquet")
    fraction = context.config.get("data_fraction", 1.0)
    if fraction < 1.0:
        train, _ = split_examples(train, test_fraction=1.0 - fraction, seed=context.config["seed"])
    return train, fraction


def precision_setting(context: StageContext) -> str:
    """The pipeline's `pretrain.precision` (in the stage's config only when not auto: the ids of auto runs stay)."""
    return context.config.get("precision", "auto")


def fit_variant(
    context: StageContext, model: torch.nn.Module, rows: Any, count: int, loss_fn: Any, unit: str
) -> TrainResult:
    """The task's training budget (epochs × batches of `rows(index)` over `count` examples, same seed for both
    variants) through the one training loop, with the task's lr, warmup_steps and weight_decay."""
    task = context.section_of(TaskConfig)
    stream = shuffled_batches(count, task.batch_size, context.config["seed"], rows)
    settings = LoopSettings.from_config(
        task,
        max_steps=task.epochs * math.ceil(count / task.batch_size),
        unit=unit,
        precision=precision_setting(context),
    )
    return train_loop(
        model,
        lambda: next(stream),
        loss_fn,
        settings,
        metrics_file=context.out / "metrics.jsonl",
        description=f"adapt {task.name} ({context.config['variant']})",
    )


def train_lm_variant(
    context: StageContext,
    model: torch.nn.Module,
    tokenizer: Any,
    rows: Any,
    count: int,
    loss_fn: Any,
    unit: str,
) -> dict[str, Any]:
    """The part instruction tuning and DPO share: the loop over `count` examples batched by `rows(index)`,
    then the export (LoRA merged into a plain HF folder, adapters kept), and the common metrics."""
    result = fit_variant(context, model, rows, count, loss_fn, unit)
    trainable = parameter_count(model, trainable_only=True)
    if context.section_of(TaskConfig).recipe == "lora":
        model.save_pretrained(context.out / "adapter")
        model = merged_model(model)
    save_model_folder(model, tokenizer, context.out / "model")
    return variant_metrics(context, result, {"top_blocks": None}, trainable, parameter_count(model), count)


def variant_metrics(
    context: StageContext,
    result: TrainResult,
    recipe_details: dict[str, Any],
    trainable: int,
    parameters: int,
    train_examples: int,
) -> dict[str, Any]:
    """What every variant's manifest records: which run of which base, the recipe (`recipe_details`: top_blocks, and
    a classifier's feature_caching), what was trained and how."""
    return {
        "variant": context.config["variant"],
        "seed": context.config["seed"],
        "data_fraction": context.config.get("data_fraction", 1.0),
        "base_artifact": context.inputs["base"].manifest["name"],
        "base_id": context.inputs["base"].id,
        "recipe": context.section_of(TaskConfig).recipe,
        **recipe_details,
        "trainable_parameters": trainable,
        "parameters": parameters,
        "train_examples": train_examples,
        "steps": result.steps,
        "final_train_loss": result.final_train_loss,
        "train_seconds": round(result.seconds, 1),
        "processes": result.processes,
        "sharding": result.sharding,
        **result.precision.record(),
    }


def run(context: StageContext) -> dict[str, Any]:
    """The variant of the task's type (its `TaskConfig` is the stage's section): a classifier, an instruction
    follower or a DPO variant."""
    task = context.section_of(TaskConfig)
    if task.type == "instruction":
        return run_instruction(context, task)
    if task.type == "preference":
        return run_preference(context, task)
    return run_classification(context, task)


@dataclass
class EncodedExamples:
    """The training examples as tensors: token ids and mask [examples, max_length] (right-padded), the index of
    each one's last real token [examples] (the head reads it) and its label's index [examples]."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    last_index: torch.Tensor
    labels: torch.Tensor


Batches = Callable[[torch.Tensor], dict[str, torch.Tensor]]
Loss = Callable[[torch.nn.Module, dict[str, torch.Tensor]], tuple[torch.Tensor, int]]


def run_classification(context: StageContext, task: TaskConfig) -> dict[str, Any]:
    """A sequence classifier on the base: a new head, trained with the task's recipe (full, LoRA or top blocks)."""
    seed = context.config["seed"]
    torch.manual_seed(seed)  # same head initialisation and batch order for the control and the DAPT variant
    base_folder = context.inputs["base"].path / "model"
    labels = json.loads((context.inputs["task"].path / "labels.json").read_text())
    train, _ = training_examples(context)
    tokenizer = AutoTokenizer.from_pretrained(base_folder)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    classifier = build_classifier(base_folder, labels, pad_id)
    input_ids, attention_mask = encode_right_padded(tokenizer, [e["text"] for e in train], task.max_length, pad_id)
    examples = EncodedExamples(
        input_ids,
        attention_mask,
        last_index=attention_mask.sum(dim=1) - 1,
        labels=torch.tensor([labels.index(e["label"]) for e in train]),
    )
    feature_caching: dict[str, Any] | None = None  # the top-blocks recipe's pass: rates and peak memory
    if task.recipe == "top_blocks":
        trained, rows, loss_fn, feature_caching = top_blocks_training(context, task.top_blocks, classifier, examples)
    else:
        trained, rows, loss_fn = whole_model_training(task, classifier, examples)
    trainable = parameter_count(trained, trainable_only=True)
    context.log(
        f"recipe {task.recipe}"
        + (f" (last {task.top_blocks} blocks + head)" if task.recipe == "top_blocks" else "")
        + (" (adapters + head)" if task.recipe == "lora" else "")
        + f": {trainable / 1e6:.2f}M of {parameter_count(classifier) / 1e6:.1f}M parameters trained, "
        f"{len(train)} examples × {task.epochs} epochs"
    )
    result = fit_variant(context, trained, rows, len(train), loss_fn, unit="ex")
    if task.recipe == "lora":
        trained.save_pretrained(context.out / "adapter")
        classifier = merged_model(trained)  # a plain AutoModelForSequenceClassification folder
    for parameter in classifier.parameters():
        parameter.requires_grad_(True)
    save_model_folder(classifier, tokenizer, context.out / "model")
    details = {
        "top_blocks": task.top_blocks if task.recipe == "top_blocks" else None,
        "feature_caching": feature_caching,
    }
    return variant_metrics(context, result, details, trainable, parameter_count(classifier), len(train))


def top_blocks_training(
    context: StageContext, top_blocks: int, classifier: torch.nn.Module, examples: EncodedExamples
) -> tuple[torch.nn.Module, Batches, Loss, dict[str, Any]]:
    """The top-blocks recipe (the last `top_blocks` decoder blocks and the head train): the frozen lower blocks see
    each example once, in the precision the top blocks then train in (kept as fp32 features); every epoch then runs
    only the top blocks. Returns what trains, its batches, its loss and the feature pass's rates and peak memory."""
    classifier.eval()
    progress = Progress("top-blocks features", len(examples.labels), "examples")
    with autocast(choose_precision(precision_setting(context))):
        features = cached_frozen_features(
            classifier,
            examples.input_ids,
            examples.attention_mask,
            top_blocks,
            FEATURE_BATCH,
            lambda count, tokens: progress.update(count, tokens=tokens),
        )
    progress.close()
    feature_caching = {
        **{name: round(rate, 1) for name, rate in progress.rates().items()},
        "peak_rss_mb": peak_rss_mb(),
    }
    context.log(f"frozen features cached; peak RSS {feature_caching['peak_rss_mb']['main']:,.0f} MB")
    trained = TopBlocks(classifier, top_blocks)
    freeze_all_but(classifier, trained)

    def loss_fn(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
        return classification_loss(model(batch["features"], batch["last_index"]), batch["labels"])

    def rows(index: torch.Tensor) -> dict[str, torch.Tensor]:
        longest = int(examples.last_index[index].max()) + 1
        return {
            "features": features[index, :longest],
            "last_index": examples.last_index[index],
            "labels": examples.labels[index],
        }

    return trained, rows, loss_fn, feature_caching


def whole_model_training(
    task: TaskConfig, classifier: torch.nn.Module, examples: EncodedExamples
) -> tuple[torch.nn.Module, Batches, Loss]:
    """The full recipe (every weight) or LoRA (adapters on the decoder, the head, `score`, in full): what trains,
    its batches and its loss."""
    trained = classifier
    if task.recipe == "lora":
        trained = add_lora(classifier, task.lora, task_type="SEQ_CLS")

    def loss_fn(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        return classification_loss(logits, batch["labels"])

    def rows(index: torch.Tensor) -> dict[str, torch.Tensor]:
        longest = int(examples.last_index[index].max()) + 1
        return {
            "input_ids": examples.input_ids[index, :longest],
            "attention_mask": examples.attention_mask[index, :longest],
            "labels": examples.labels[index],
        }

    return trained, rows, loss_fn


def run_instruction(context: StageContext, task: TaskConfig) -> dict[str, Any]:
    """Instruction tuning (SFT): the loss on the response tokens only; full or LoRA; exported merged."""
    seed = context.config["seed"]
    torch.manual_seed(seed)
    base_folder = context.inputs["base"].path / "model"
    train, _ = training_examples(context)
    model, tokenizer = load_causal_lm(base_folder)
    if task.recipe == "lora":
        model = add_lora(model, task.lora)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    pairs = [encode_pair(tokenizer, e["prompt"], e["response"], task.max_length) for e in train]
    context.log(
        f"recipe {task.recipe} ({'chat template' if uses_chat_template(tokenizer) else 'built-in template'}): "
        f"{parameter_count(model, trainable_only=True) / 1e6:.2f}M of {parameter_count(model) / 1e6:.1f}M parameters "
        f"trained, {len(train)} pairs × {task.epochs} epochs, loss on response tokens only"
    )
    metrics = train_lm_variant(
        context,
        model,
        tokenizer,
        lambda index: pad_pairs([pairs[i] for i in index.tolist()], pad_id),
        len(pairs),
        response_only_loss,
        unit="ex",
    )
    return {**metrics, "template": "chat template" if uses_chat_template(tokenizer) else "built-in"}


@torch.no_grad()
def pair_logps(
    model: torch.nn.Module,
    pairs: list[tuple[list[int], list[int]]],
    pad_id: int,
    precision: PrecisionChoice,
    batch_size: int = 8,
) -> torch.Tensor:
    """log π(response | prompt) for every encoded pair, (len(pairs),), the forward passes in `precision`."""
    model.eval()
    with autocast(precision):
        out = [
            sequence_logps(model, pad_pairs(pairs[start : start + batch_size], pad_id))
            for start in range(0, len(pairs), batch_size)
        ]
    return torch.cat(out)


def run_preference(context: StageContext, task: TaskConfig) -> dict[str, Any]:
    """DPO from the starting model (the base, or an instruction variant of it), which is also the reference.

    The reference's log-probabilities are computed once, before the first update, so no second copy of
    the model is kept in memory. With LoRA the adapters start at zero: step 0's policy is the reference.
    """
    seed = context.config["seed"]
    torch.manual_seed(seed)
    start_folder = context.inputs["base"].path / "model"
    train, _ = training_examples(context)
    model, tokenizer = load_causal_lm(start_folder)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    chosen = [encode_pair(tokenizer, e["prompt"], e["chosen"], task.max_length) for e in train]
    rejected = [encode_pair(tokenizer, e["prompt"], e["rejected"], task.max_length) for e in train]
    # the reference in the precision the policy trains in: step 0's policy is the reference, its margin 0
    precision = choose_precision(precision_setting(context))
    reference_chosen = pair_logps(model, chosen, pad_id, precision)
    reference_rejected = pair_logps(model, rejected, pad_id, precision)
    if task.recipe == "lora":
        model = add_lora(model, task.lora)
    beta = task.beta

    def rows(index: torch.Tensor) -> dict[str, torch.Tensor]:
        picked = index.tolist()
        batch = pad_pairs([chosen[i] for i in picked] + [rejected[i] for i in picked], pad_id)
        batch["reference_chosen"], batch["reference_rejected"] = reference_chosen[index], reference_rejected[index]
        return batch

    def loss_fn(policy: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
        logps = sequence_logps(policy, batch)
        count = len(batch["reference_chosen"])
        loss, _, _ = dpo_loss(
            logps[:count], logps[count:], batch["reference_chosen"], batch["reference_rejected"], beta
        )
        return loss, count

    context.log(
        f"DPO (β {beta}, recipe {task.recipe}) from {context.inputs['base'].manifest['name']}: "
        f"{len(train)} preference pairs × {task.epochs} epochs"
    )
    return {**train_lm_variant(context, model, tokenizer, rows, len(train), loss_fn, unit="pair"), "beta": beta}
