"""pretrain: continued pretraining of the base on domain text, with a share of general replay.

Recipe:
1. load the original base (the `base` artifact) and the token shards;
2. stream packed windows: domain with weight 1 - replay_fraction, replay with replay_fraction, or each
   source with its own weight (pretrain.mix);
3. measure domain and general validation loss before training (the original base's numbers) and
   every `eval_every` steps; save a checkpoint at each evaluation (and every `checkpoint_every` steps),
   keep the last K and the best; a run killed midway resumes from its newest checkpoint exactly;
   each validation loss comes with its standard error over the split's documents (`dapt.train.forgetting`);
4. stop early when the domain validation loss stops improving; with `forgetting_budget`, judge every evaluation
   against it (the forgetting guard): a step over it is never the best, and `on_forgetting` stops, remixes the
   replay share or warns;
5. with `average_last`, average the last checkpoints' weights and evaluate the average like a checkpoint;
6. the best checkpoint (or the average, if it is better and within the budget) becomes the DAPT base (`model/`),
   a new versioned base whose manifest points at the original. If no step beat the original, the DAPT base is the
   original, and the manifest says so.
"""

from __future__ import annotations

import os
import shutil
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dapt.config import PRETRAIN_EXECUTION_FIELDS, PretrainConfig
from dapt.data.shards import ShardSet, WindowMixer, eval_windows, open_split, split_sources, target_documents
from dapt.errors import ConfigError, DataError
from dapt.model.load import load_causal_lm, parameter_count, save_model_folder
from dapt.model.lora import add_lora, load_adapter_weights, merged_model
from dapt.stages.context import StageContext
from dapt.train.checkpoint import LOOP_STATE, TRAINING_STATE, Checkpointer, average_checkpoints, load_full_weights
from dapt.train.distributed import is_main_process, wait_for_everyone
from dapt.train.forgetting import DocumentLosses, ForgettingGuard, ForgettingSettings
from dapt.train.loop import LoopSettings, train_loop
from dapt.train.objectives import causal_lm_loss, check_documents_kept_apart, lm_batch, lm_token_losses, perplexity
from dapt.train.sharding import shards_over_processes, without_tied_copies
from dapt.train.throughput import device_peak_tflops, flops_per_token, throughput_report


def link_or_copy_folder(source: Path, target: Path) -> None:
    """Hard-link the files of `source` into `target` (no extra disk for multi-GB weights), copy if impossible."""
    target.mkdir(parents=True)
    for file in source.iterdir():
        if file.name in (TRAINING_STATE, LOOP_STATE):
            continue  # resumable training state belongs to the checkpoint, not to the finished model
        try:
            os.link(file, target / file.name)
        except OSError:
            shutil.copy2(file, target / file.name)


class PackedBatches:
    """Micro-batches of packed windows from a WindowMixer; resumable through the mixer's state."""

    def __init__(self, mixer: WindowMixer, micro_batch_size: int, eos_id: int | None) -> None:
        self.mixer, self.micro_batch_size, self.eos_id = mixer, micro_batch_size, eos_id

    def __call__(self) -> dict[str, torch.Tensor]:
        windows = torch.stack([next(self.mixer)[1] for _ in range(self.micro_batch_size)])  # (batch, seq_len + 1)
        return lm_batch(windows, self.eos_id)

    def state_dict(self) -> dict[str, Any]:
        return self.mixer.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.mixer.load_state_dict(state)


def source_shards(shard_root: Path, context: StageContext, mix: dict[str, float], seq_len: int) -> dict[str, ShardSet]:
    """Each source named in `pretrain.mix`, opened alone inside its role's training shards."""
    role_of = {s.name: s.role for s in context.pipeline.sources}
    opened = {}
    for name in mix:
        folder = shard_root / f"{role_of[name]}_train"
        recorded = split_sources(folder) if folder.is_dir() else set()
        if not recorded and folder.exists():
            raise DataError(
                f"pretrain.mix: the tokenized corpus {shard_root.parent} does not record its sources (made by an "
                "older dapt); delete that folder so the tokenize stage runs again"
            )
        if name not in recorded:
            raise DataError(
                f"pretrain.mix: source {name!r} has no training documents (all dropped by curation or held out for "
                "validation); add text to it or remove it from sources and mix"
            )
        opened[name] = open_split(folder, source=name)
        if opened[name].num_windows(seq_len) == 0:
            raise DataError(
                f"pretrain.mix: source {name!r} has {opened[name].num_tokens} training tokens, less than one "
                f"sequence of pretrain.seq_len = {seq_len}; add text to it or remove it from sources and mix"
            )
    return opened


def export_dapt_base(
    context: StageContext,
    config: PretrainConfig,
    best_step: int,
    base_folder: Path,
    checkpointer: Checkpointer,
    model: torch.nn.Module,
    tokenizer: Any,
    averaged: Path | None = None,
) -> None:
    """Write `model/` (and, for LoRA, `adapter/`): the best checkpoint, the `averaged` checkpoints when given (they
    won), or the original base if nothing beat it."""
    for partial_export in ("model", "adapter"):  # left by an attempt killed while exporting
        shutil.rmtree(context.out / partial_export, ignore_errors=True)
    if averaged is not None:
        link_or_copy_folder(averaged, context.out / "model")
    elif best_step == 0:
        context.log("no step improved the domain validation loss: the DAPT base is the base it started from")
        link_or_copy_folder(base_folder, context.out / "model")
    elif config.method == "lora":
        best_folder = checkpointer.step_folder(best_step)
        link_or_copy_folder(best_folder, context.out / "adapter")  # the adapters alone, for peft users
        if any(parameter.dtype != torch.float32 for parameter in model.parameters()):
            # DeepSpeed in bf16/fp16 cast the frozen base to 16 bits: merge onto the fp32 base as it was loaded,
            # so the DAPT base is the same whichever way it was launched
            model = add_lora(load_causal_lm(base_folder, context.pipeline.base.attn_implementation)[0], config.lora)
        load_adapter_weights(model, best_folder)
        save_model_folder(merged_model(model), tokenizer, context.out / "model")
    else:
        link_or_copy_folder(checkpointer.step_folder(best_step), context.out / "model")


class HeldOutSplit:
    """A validation split's fixed windows, each (seq_len + 1,), and the document of each of their targets,
    (windows, seq_len), numbered 0 .. documents - 1 over the split."""

    def __init__(self, shard: ShardSet, seq_len: int, max_tokens: int) -> None:
        self.windows = eval_windows(shard, seq_len, max_tokens=max_tokens)
        self.target_documents = target_documents(shard, len(self.windows), seq_len)
        self.documents = shard.num_documents


@torch.no_grad()
def document_losses(
    model: torch.nn.Module, split: HeldOutSplit, eos_id: int | None, batch_size: int = 4
) -> DocumentLosses:
    """The summed next-token loss and the scored tokens of each document of `split` (fixed windows, as in
    training: packed, documents kept apart with `eos_id`)."""
    device = next(model.parameters()).device
    sums = np.zeros(split.documents, dtype=np.float64)
    tokens = np.zeros(split.documents, dtype=np.int64)
    for start in range(0, len(split.windows), batch_size):
        batch = lm_batch(torch.stack(split.windows[start : start + batch_size]).to(device), eos_id)
        losses = lm_token_losses(model, batch["input_ids"], batch.get("position_ids"), batch["targets"])
        documents = split.target_documents[start : start + batch_size].ravel()
        sums += np.bincount(documents, weights=losses.double().cpu().numpy().ravel(), minlength=split.documents)
        tokens += np.bincount(documents, minlength=split.documents)
    return DocumentLosses(sums, tokens)


class HeldOutLoss:
    """`evaluate()` for the loop: the loss on each validation split's fixed windows (`held_out`: metric name ->
    split), its standard error over the split's documents (`<name>_se`) and how many documents were scored
    (`<split>_documents`); each split's `DocumentLosses` stay in `documents` for the forgetting guard. Every process
    evaluates every window (the same numbers everywhere); under FSDP it must: each layer's forward gathers its
    weights from all processes.

    The first evaluation first checks that the model keeps packed documents apart, as `document_mask` asks (some
    attention implementations ignore the restarted positions): before any step is trained (resumed: at the first
    evaluation after resuming, or at the end, `check_leak`)."""

    def __init__(
        self, model: torch.nn.Module, tokenizer: Any, held_out: dict[str, HeldOutSplit], eos_id: int | None
    ) -> None:
        self.model, self.tokenizer, self.held_out, self.eos_id = model, tokenizer, held_out, eos_id
        # how far packed documents moved each other's logits in the check (0.0: kept apart); None: not checked
        self.leak: float | None = None
        self.documents: dict[str, DocumentLosses] = {}  # of the last evaluation, by metric name

    def check_leak(self) -> None:
        if self.eos_id is not None and self.leak is None:
            vocab_size = min(len(self.tokenizer), self.model.get_input_embeddings().num_embeddings)
            self.leak = check_documents_kept_apart(self.model, self.eos_id, vocab_size)

    def __call__(self) -> dict[str, float]:
        self.check_leak()
        metrics: dict[str, float] = {}
        for name, split in self.held_out.items():
            losses = self.documents[name] = document_losses(self.model, split, self.eos_id)
            error = losses.standard_error
            metrics |= {
                name: losses.mean,
                **({f"{name}_se": error} if error is not None else {}),
                f"{name.removesuffix('_loss')}_documents": losses.documents,
            }
        return metrics


class CheckpointedModel:
    """What a checkpoint holds of the model, for the `Checkpointer`: full training saves the model; LoRA only the
    adapters (and the embeddings, if they train)."""

    def __init__(self, model: torch.nn.Module, tokenizer: Any, method: str) -> None:
        self.model, self.tokenizer, self.method = model, tokenizer, method

    def save(self, folder: Path, weights: dict[str, torch.Tensor] | None) -> None:
        """Write the model and tokenizer to `folder`. Sharded (FSDP), the loop hands over the full `weights` it
        gathered on the main process; under DeepSpeed in 16 bits, the fp32 master weights; None: the live model."""
        if weights is None:
            self.model.save_pretrained(folder, safe_serialization=True)
        elif self.method == "lora":  # peft picks the adapters (and modules_to_save) out of the full state
            self.model.save_pretrained(folder, safe_serialization=True, state_dict=weights)
        else:  # save_pretrained empties the dict it is given; the tied LM head is written once, as unsharded
            state = without_tied_copies(self.model, weights)
            self.model.save_pretrained(folder, safe_serialization=True, state_dict=state)
        self.tokenizer.save_pretrained(folder)

    def load(self, folder: Path) -> None:
        if self.method == "lora":
            load_adapter_weights(self.model, folder)
        else:
            load_full_weights(self.model, folder)


def model_checkpointer(folder: Path, config: PretrainConfig, model: torch.nn.Module, tokenizer: Any) -> Checkpointer:
    """The checkpoints of the model as `config` trains it, in `folder`."""
    saved = CheckpointedModel(model, tokenizer, config.method)
    return Checkpointer(
        folder, saved.save, saved.load, every=config.checkpoint_every, keep_last=config.keep_checkpoints
    )


def load_model(context: StageContext, config: PretrainConfig, base_folder: Path) -> tuple[torch.nn.Module, Any]:
    """The base to train, as `config` trains it (gradient checkpointing, LoRA adapters), and its tokenizer."""
    # Sharded, only the main process reads the weights; the others build the model empty and get their shards
    model, tokenizer = load_causal_lm(
        base_folder,
        context.pipeline.base.attn_implementation,
        weights=is_main_process() or not shards_over_processes(config.sharding),
    )
    if config.gradient_checkpointing:
        # transformers 5 renamed it; older releases only have gradient_checkpointing_enable
        enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
        enable()
        model.config.use_cache = False
    if config.method == "lora":
        model = add_lora(model, config.lora)
        if config.gradient_checkpointing:
            model.enable_input_require_grads()  # frozen embeddings: checkpointed blocks still need an input grad
    return model, tokenizer


def training_mixture(
    context: StageContext, config: PretrainConfig, shards: dict[str, ShardSet], shard_root: Path, seed: int
) -> WindowMixer:
    """The stream of training windows: two pools (domain and replay sources, each in proportion to its tokens),
    or each source with its own weight (`pretrain.mix`)."""
    if config.mix is None:
        weights = {"domain_train": 1.0 - config.replay_fraction, "replay_train": config.replay_fraction}
        if "replay_train" not in shards and config.replay_fraction > 0:
            context.log("no replay text: training on domain text only (replay_fraction ignored)")
            weights = {"domain_train": 1.0}
        training = {k: shards[k] for k in weights if k in shards}
    else:
        training = source_shards(shard_root, context, config.mix, config.seq_len)
        weights = config.mix
        total = sum(weights.values())
        context.log("mix: " + ", ".join(f"{name} {weight / total:.1%}" for name, weight in weights.items()))
    return WindowMixer(training, weights, config.seq_len, seed)


def held_out_splits(
    context: StageContext, config: PretrainConfig, shards: dict[str, ShardSet]
) -> dict[str, HeldOutSplit]:
    """Each validation split's fixed windows, by the name of its metric (domain_val_loss, ...): the whole split, up
    to tokenize.eval_max_tokens (a corpus tokenized by an older dapt: its eval_tokens)."""
    tokenize = context.inputs["tokens"].manifest["config"]["tokenize"]
    budget = tokenize.get("eval_max_tokens", tokenize["eval_tokens"])
    return {
        f"{split.removesuffix('_val')}_val_loss": HeldOutSplit(shards[split], config.seq_len, budget)
        for split in ("domain_val", "general_val")
        if split in shards
    }


def forgetting_guard(
    context: StageContext, config: PretrainConfig, evaluate: HeldOutLoss, mixer: WindowMixer
) -> ForgettingGuard | None:
    """The forgetting guard `forgetting_budget` asks for (None without one), watching the general validation loss;
    with on_forgetting remix, it raises the share of the replay sources in `mixer`."""
    if config.forgetting_budget is None:
        return None
    if "general_val_loss" not in evaluate.held_out:
        raise ConfigError(
            "pretrain.forgetting_budget: there is no general validation text to measure forgetting on; add a "
            "source with role general_eval (or replay), or remove forgetting_budget"
        )
    remix = None
    if config.on_forgetting == "remix":
        role_of = {s.name: s.role for s in context.pipeline.sources}
        replay = {"replay_train"} if config.mix is None else {n for n in config.mix if role_of.get(n) == "replay"}
        if mixer.share(replay) <= 0:
            raise ConfigError(
                "pretrain.on_forgetting: remix raises the replay share, but this run trains on no replay text; set "
                "replay_fraction above 0 (or give a replay source a weight in mix), or use on_forgetting: stop"
            )
        remix = partial(mixer.raise_share, replay)
    settings = ForgettingSettings(
        budget=config.forgetting_budget,
        action=config.on_forgetting,
        significance=config.forgetting_significance,
        remix_factor=config.remix_factor,
        remix_max_replay=config.remix_max_replay,
    )
    return ForgettingGuard(settings, lambda: evaluate.documents["general_val_loss"], remix)


def evaluate_average(
    context: StageContext,
    config: PretrainConfig,
    checkpointer: Checkpointer,
    model: torch.nn.Module,
    evaluate: HeldOutLoss,
    guard: ForgettingGuard | None,
) -> tuple[dict[str, Any], Path] | None:
    """With average_last: the last checkpoints' weights averaged (`checkpoints/average/`), loaded into `model` and
    evaluated like a checkpoint; its record and folder. None when averaging is off or there are fewer than two
    checkpoints."""
    steps = checkpointer.saved_steps()[-config.average_last :] if config.average_last > 1 else []
    if len(steps) < 2:
        if config.average_last > 1:
            context.log(f"average_last {config.average_last}: only {len(steps)} checkpoint(s); nothing averaged")
        return None
    folder = checkpointer.folder / "average"
    if is_main_process():
        average_checkpoints([checkpointer.step_folder(step) for step in steps], folder)
    wait_for_everyone()
    load_full_weights(model, folder)
    model.eval()
    metrics = evaluate()
    record: dict[str, Any] = {"steps": steps, **metrics}
    if guard is not None:
        record["forgetting"] = guard.judge(evaluate.documents["general_val_loss"])
    context.log(
        f"average of steps {', '.join(map(str, steps))}: "
        + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k in evaluate.held_out)
    )
    return record, folder


def forgetting_record(config: PretrainConfig, guard: ForgettingGuard | None) -> dict[str, Any] | None:
    """The forgetting guard's settings and every check it made (None without a guard), for the manifest."""
    if guard is None:
        return None
    return {
        "budget": config.forgetting_budget,
        "on_forgetting": config.on_forgetting,
        "significance": config.forgetting_significance,
        "checks": guard.checks,
        "actions": [check for check in guard.checks if check["action"]],
    }


def run(context: StageContext) -> dict[str, Any]:
    execution = {field: getattr(context.pipeline.pretrain, field) for field in PRETRAIN_EXECUTION_FIELDS}
    config = PretrainConfig.model_validate({**context.config["pretrain"], **execution})
    seed = context.config["seed"]
    torch.manual_seed(seed)
    base_folder = context.inputs["base"].path / "model"
    model, tokenizer = load_model(context, config, base_folder)
    eos_id = tokenizer.eos_token_id if config.document_mask else None
    shard_root = context.inputs["tokens"].path / "shards"
    shards = {p.name: open_split(p) for p in shard_root.iterdir() if p.is_dir()}

    # -- data: the training mixture, fixed held-out windows ----------------------------------------------
    mixer = training_mixture(context, config, shards, shard_root, seed)
    batches = PackedBatches(mixer, config.micro_batch_size, eos_id)
    held_out = held_out_splits(context, config, shards)
    evaluate = HeldOutLoss(model, tokenizer, held_out, eos_id)
    guard = forgetting_guard(context, config, evaluate, mixer)

    # -- checkpoints: after every evaluation and every `checkpoint_every` steps; resumable -----------------
    checkpointer = model_checkpointer(context.out / "checkpoints", config, model, tokenizer)
    checkpointer.keep_last = max(checkpointer.keep_last, config.average_last)  # the checkpoints to average
    monitor = config.early_stopping.monitor
    settings = LoopSettings.from_config(
        config,
        monitor=monitor if monitor in held_out else "domain_val_loss",
        tracking_dir=context.out / "tracking",
        flops_per_unit=flops_per_token(model, config.seq_len),
        peak_tflops=device_peak_tflops(config.peak_tflops),
    )
    trainable = parameter_count(model, trainable_only=True)
    context.log(
        f"{config.method}: {trainable / 1e6:.2f}M of {parameter_count(model) / 1e6:.1f}M parameters trained; "
        f"{config.max_steps} steps at most of {config.micro_batch_size * config.grad_accum_steps} × "
        f"{config.seq_len} tokens" + (f"; replay {config.replay_fraction:.0%}" if config.mix is None else "")
    )
    result = train_loop(
        model,
        batches,
        partial(causal_lm_loss, max_logits_bytes=config.max_logits_mb * 2**20),
        settings,
        evaluate=evaluate,
        metrics_file=context.out / "metrics.jsonl",
        checkpointer=checkpointer,
        guard=guard,
        description="pretrain",
    )
    evaluate.check_leak()  # resumed past its last evaluation: checked now, on the trained model
    best_step = result.best_step or 0
    speed = throughput_report(model, config.seq_len, result.units_per_second, config.peak_tflops, result.processes)
    initial, best = result.evaluations[0], next(e for e in result.evaluations if e["step"] == best_step)

    # -- with average_last: the last checkpoints averaged; the DAPT base if it beats the best within the budget --
    average = evaluate_average(context, config, checkpointer, model, evaluate, guard)
    averaged_folder = None
    if average is not None:
        record, folder = average
        within = not record.get("forgetting", {}).get("over_budget", False)
        record["exported"] = within and record[settings.monitor] < best[settings.monitor]
        averaged_folder = folder if record["exported"] else None
        context.log(
            f"the average {'is' if record['exported'] else 'is not'} the DAPT base: {settings.monitor} "
            f"{record[settings.monitor]:.4f} vs the best step's {best[settings.monitor]:.4f}"
            + ("" if within else "; over the forgetting budget")
        )
        if record["exported"]:
            best = {"step": result.steps, **{k: v for k, v in record.items() if k not in ("forgetting", "exported")}}

    # -- the DAPT base: the best checkpoint (or the original, if nothing beat it), by the main process -----
    if is_main_process():
        export_dapt_base(context, config, best_step, base_folder, checkpointer, model, tokenizer, averaged_folder)
    context.log(f"best step {best_step}: " + ", ".join(f"{k} {initial[k]:.4f} → {best[k]:.4f}" for k in held_out))
    return {
        "method": config.method,
        "steps": result.steps,
        "tokens_trained": result.units,
        "tokens_per_second": round(result.units_per_second, 1),
        "train_seconds": round(result.seconds - result.eval_seconds, 1),
        "best_step": best_step,
        "stopped_early": result.stopped_early,
        "stop_reason": result.stop_reason,
        "windows_drawn": mixer.drawn,
        "resumed": result.resumed_from,
        "processes": result.processes,
        "sharding": result.sharding,  # fsdp only when it sharded: over more than one process
        **result.precision.record(),  # what it computed in and why (auto: what the device can do)
        "initial": {**initial, **{k.replace("_loss", "_ppl"): perplexity(initial[k]) for k in held_out}},
        "best": {**best, **{k.replace("_loss", "_ppl"): perplexity(best[k]) for k in held_out}},
        "evaluations": result.evaluations,
        "forgetting": forgetting_record(config, guard),
        "average": average[0] if average is not None else None,  # with average_last: the averaged checkpoints
        "final_train_loss": result.final_train_loss,
        "parameters": parameter_count(model),
        "trainable_parameters": trainable,
        **speed,
        # how far packed documents moved each other's logits in the check (0.0: kept apart); None: not masked
        "document_leak": evaluate.leak,
        "started_from": context.inputs["base"].id,  # the base artifact, or the extended base with `vocab:`
    }
