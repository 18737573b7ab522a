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

import bisect
import itertools
import os
import shutil
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dapt.config import PretrainConfig, TrainingStage
from dapt.data.shards import ShardSet, WindowMixer, eval_windows, open_split, split_sources, target_documents
from dapt.errors import ConfigError, DataError
from dapt.model.load import load_causal_lm, model_config, parameter_count, save_model_folder
from dapt.model.local_attention import attention_window_layers
from dapt.model.lora import add_lora, load_adapter_weights, merged_model
from dapt.stages.context import StageContext
from dapt.train.checkpoint import LOOP_STATE, TRAINING_STATE, Checkpointer, average_checkpoints, load_full_weights
from dapt.train.distributed import is_main_process, wait_for_everyone
from dapt.train.forgetting import DocumentLosses, ForgettingGuard, ForgettingSettings
from dapt.train.loop import LoopSettings, TrainResult, resolve_accumulation, train_loop
from dapt.train.objectives import causal_lm_loss, check_documents_kept_apart, lm_batch, lm_token_losses, perplexity
from dapt.train.schedule import ScheduleSegment, StagedSchedule
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

    @property
    def drawn(self) -> dict[str, int]:
        """Windows drawn from each pool or source."""
        return self.mixer.drawn

    def state_dict(self) -> dict[str, Any]:
        return self.mixer.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.mixer.load_state_dict(state)


class StagedBatches:
    """Micro-batches of a staged run (`pretrain.stages`): each stage's packed windows from its own WindowMixer, at its
    own window length and micro-batch size, from its first micro-batch (`grad_accum_steps` per optimizer step) to its
    last. The micro-batches drawn and every stage's mixer are the data position a checkpoint keeps, so a run killed
    inside a stage, or at its boundary, resumes drawing what an uninterrupted run draws. `replay[i]`: the names of
    stage i's replay pools or sources, whose share `raise_replay_share` raises (the forgetting guard's remix)."""

    def __init__(
        self,
        stages: list[TrainingStage],
        mixers: list[WindowMixer],
        replay: list[set[str]],
        grad_accum_steps: int,
        eos_id: int | None,
        on_stage: Callable[[TrainingStage], None] = lambda stage: None,
    ) -> None:
        self.stages, self.mixers, self.replay, self.eos_id, self.on_stage = stages, mixers, replay, eos_id, on_stage
        self.ends = list(itertools.accumulate(stage.steps * grad_accum_steps for stage in stages))  # in micro-batches
        self.micro_batches = 0  # drawn so far
        self.announced = -1  # the last stage `on_stage` was told of

    @property
    def current(self) -> int:
        """The stage of the next micro-batch (past the last stage's end: the last)."""
        return min(bisect.bisect_right(self.ends, self.micro_batches), len(self.stages) - 1)

    def __call__(self) -> dict[str, torch.Tensor]:
        index = self.current
        if index != self.announced:
            self.on_stage(self.stages[index])
            self.announced = index
        windows = [next(self.mixers[index])[1] for _ in range(self.stages[index].micro_batch_size)]
        self.micro_batches += 1
        return lm_batch(torch.stack(windows), self.eos_id)  # (batch, stage seq_len + 1) windows

    def raise_replay_share(self, factor: float, ceiling: float) -> tuple[float, float]:
        """The forgetting guard's remix, in the stage that draws next (the next stages draw as configured)."""
        index = self.current
        return self.mixers[index].raise_share(self.replay[index], factor, ceiling)

    def trains_on_replay(self) -> bool:
        return any(mixer.share(replay) > 0 for mixer, replay in zip(self.mixers, self.replay, strict=True))

    @property
    def drawn(self) -> dict[str, int]:
        """Windows drawn from each pool or source, over every stage."""
        total: dict[str, int] = {}
        for mixer in self.mixers:
            for name, count in mixer.drawn.items():
                total[name] = total.get(name, 0) + count
        return total

    def state_dict(self) -> dict[str, Any]:
        return {"micro_batches": self.micro_batches, "stages": [mixer.state_dict() for mixer in self.mixers]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.micro_batches = state["micro_batches"]
        for mixer, mixer_state in zip(self.mixers, state["stages"], strict=True):
            mixer.load_state_dict(mixer_state)


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
        if config.attention_window is not None:  # its weights, with the window they were evaluated with
            (context.out / "model" / "config.json").unlink()  # a hard link to the base's: never written through
            model_config(base_folder, config.attention_window).save_pretrained(context.out / "model")
    elif config.method == "lora":
        best_folder = checkpointer.step_folder(best_step)
        link_or_copy_folder(best_folder, context.out / "adapter")  # the adapters alone, for peft users
        if any(parameter.dtype != torch.float32 for parameter in model.parameters()):
            # DeepSpeed in bf16/fp16 cast the frozen base to 16 bits: merge onto the fp32 base as it was loaded,
            # so the DAPT base is the same whichever way it was launched
            attention = context.pipeline.base.attn_implementation
            original = load_causal_lm(base_folder, attention, attention_window=config.attention_window)[0]
            model = add_lora(original, config.lora)
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
        attention_window=config.attention_window,
    )
    if config.attention_window is not None:
        context.log(f"attention_window {config.attention_window}: {attention_window_layers(model.config)}")
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
    context: StageContext,
    data: PretrainConfig | TrainingStage,
    shards: dict[str, ShardSet],
    shard_root: Path,
    seed: int,
    stream: int = 0,
) -> WindowMixer:
    """The stream of training windows `data` (pretrain's settings, or one stage's) asks for: two pools (domain and
    replay sources, each in proportion to its tokens), or each source with its own weight (`mix`). `stream`: the
    mixer's own stream (a stage's; 0 without stages)."""
    if data.mix is None:
        replay = float(data.replay_fraction or 0.0)
        weights = {"domain_train": 1.0 - replay, "replay_train": replay}
        if "replay_train" not in shards and replay > 0:
            context.log("no replay text: training on domain text only (replay_fraction ignored)")
            weights = {"domain_train": 1.0}
        training = {k: shards[k] for k in weights if k in shards}
    else:
        training = source_shards(shard_root, context, data.mix, data.seq_len)
        weights = data.mix
        total = sum(weights.values())
        context.log("mix: " + ", ".join(f"{name} {weight / total:.1%}" for name, weight in weights.items()))
    return WindowMixer(training, weights, data.seq_len, seed, stream=stream)


def replay_names(context: StageContext, mix: dict[str, float] | None) -> set[str]:
    """What the forgetting guard's remix raises: the replay pool, or the replay sources of `mix`."""
    role_of = {s.name: s.role for s in context.pipeline.sources}
    return {"replay_train"} if mix is None else {name for name in mix if role_of.get(name) == "replay"}


def staged_batches(
    context: StageContext,
    config: PretrainConfig,
    settings: LoopSettings,
    shards: dict[str, ShardSet],
    shard_root: Path,
    eos_id: int | None,
) -> StagedBatches:
    """The micro-batches of `pretrain.stages`, each stage's from a mixer of its own."""
    stages = config.training_stages()
    seed = context.config["seed"]
    # stream 0 in the first stage: the stream of the run without stages; an order of its own in every other
    mixers = [training_mixture(context, stage, shards, shard_root, seed, stream=stage.index) for stage in stages]

    def announce(stage: TrainingStage) -> None:
        data = f"replay {stage.replay_fraction:.0%}" if stage.mix is None else f"mix {stage.mix}"
        context.log(
            f"stage {stage.name}: steps {stage.first_step + 1}-{stage.first_step + stage.steps}, {data}, "
            f"{stage.micro_batch_size} × {stage.seq_len} tokens per micro-batch, lr {stage.schedule} "
            f"{stage.lr_start:.3g} → {stage.lr:.3g} → {stage.lr_end:.3g}"
        )

    accumulation = resolve_accumulation(settings).grad_accum_steps
    replay = [replay_names(context, stage.mix) for stage in stages]
    return StagedBatches(stages, mixers, replay, accumulation, eos_id, on_stage=announce)


def lr_segments(config: PretrainConfig) -> tuple[ScheduleSegment, ...]:
    """The schedule of `pretrain.stages`, stage by stage, as multipliers of pretrain.lr."""
    return tuple(
        ScheduleSegment(
            steps=stage.steps,
            warmup_steps=stage.warmup_steps,
            start=stage.lr_start / config.lr,
            peak=stage.lr / config.lr,
            end=stage.lr_end / config.lr,
            shape=stage.schedule,  # type: ignore[arg-type]
            decay_fraction=stage.decay_fraction,
        )
        for stage in config.training_stages()
    )


def stage_records(
    config: PretrainConfig, batches: StagedBatches, evaluations: list[dict[str, Any]], steps_trained: int
) -> list[dict[str, Any]]:
    """For the manifest: each stage as configured and as trained (its steps, tokens, learning rates from its first
    to its last step, windows drawn per pool or source, and the evaluation at its end). An early stop leaves the
    stage under way `completed: false` and the ones after it with no steps."""
    schedule = StagedSchedule(lr_segments(config))
    evaluated = {evaluation["step"]: evaluation for evaluation in evaluations}
    records = []
    for stage, mixer in zip(batches.stages, batches.mixers, strict=True):
        trained = max(0, min(steps_trained, stage.first_step + stage.steps) - stage.first_step)
        last = stage.first_step + trained
        end = evaluated.get(last) if trained else None
        # the learning rate (of the main parameter group) at the stage's first and last step trained
        lrs = [config.lr * schedule.factor(step - 1) for step in (stage.first_step + 1, last)] if trained else []
        records.append(
            {
                "name": stage.name,
                "first_step": stage.first_step + 1,
                "last_step": last,
                "steps": trained,
                "planned_steps": stage.steps,
                "completed": trained == stage.steps,
                "tokens": trained * (stage.tokens // stage.steps),
                "seq_len": stage.seq_len,
                "micro_batch_size": stage.micro_batch_size,
                **({"mix": stage.mix} if stage.mix is not None else {"replay_fraction": stage.replay_fraction}),
                "schedule": stage.schedule,
                "lr": lrs,
                "windows_drawn": dict(mixer.drawn),
                "end_evaluation": (
                    {k: v for k, v in end.items() if k.endswith("_loss") or k.endswith("_se")} if end else None
                ),
            }
        )
    return records


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
    context: StageContext, config: PretrainConfig, evaluate: HeldOutLoss, batches: PackedBatches | StagedBatches
) -> ForgettingGuard | None:
    """The forgetting guard `forgetting_budget` asks for (None without one), watching the general validation loss;
    with on_forgetting remix, it raises the share of the replay sources in the mixer `batches` draws from (staged:
    the mixer of the stage under way)."""
    if config.forgetting_budget is None:
        return None
    if "general_val_loss" not in evaluate.held_out:
        raise ConfigError(
            "pretrain.forgetting_budget: there is no general validation text to measure forgetting on; add a "
            "source with role general_eval (or replay), or remove forgetting_budget"
        )
    remix = None
    if config.on_forgetting == "remix":
        if isinstance(batches, StagedBatches):
            trains_on_replay, remix = batches.trains_on_replay(), batches.raise_replay_share
        else:
            replay = replay_names(context, config.mix)
            trains_on_replay, remix = batches.mixer.share(replay) > 0, partial(batches.mixer.raise_share, replay)
        if not trains_on_replay:
            raise ConfigError(
                "pretrain.on_forgetting: remix raises the replay share, but this run trains on no replay text; set "
                "replay_fraction above 0 (or give a replay source a weight in mix), or use on_forgetting: stop"
            )
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


def loop_settings(
    context: StageContext, config: PretrainConfig, model: torch.nn.Module, held_out: dict[str, Any]
) -> LoopSettings:
    """The loop's settings; with stages, the schedule stage by stage and an evaluation at every stage's end."""
    monitor = config.early_stopping.monitor
    staged: dict[str, Any] = {}
    if config.stages is not None:
        ends = tuple(stage.first_step + stage.steps for stage in config.training_stages())
        staged = {"max_steps": ends[-1], "lr_segments": lr_segments(config), "evaluate_at": ends}
    return LoopSettings.from_config(
        config,
        monitor=monitor if monitor in held_out else "domain_val_loss",
        tracking_dir=context.out / "tracking",
        flops_per_unit=flops_per_token(model, config.seq_len),
        peak_tflops=device_peak_tflops(config.peak_tflops),
        **staged,
    )


def choose_average(
    context: StageContext,
    average: tuple[dict[str, Any], Path] | None,
    best: dict[str, Any],
    monitor: str,
    steps: int,
) -> tuple[Path | None, dict[str, Any]]:
    """With average_last: whether the averaged checkpoints become the DAPT base (they must beat the best step on
    `monitor` within the forgetting budget); returns their folder if so (else None) and the record of the base kept."""
    if average is None:
        return None, best
    record, folder = average
    within = not record.get("forgetting", {}).get("over_budget", False)
    record["exported"] = within and record[monitor] < best[monitor]
    context.log(
        f"the average {'is' if record['exported'] else 'is not'} the DAPT base: {monitor} "
        f"{record[monitor]:.4f} vs the best step's {best[monitor]:.4f}"
        + ("" if within else "; over the forgetting budget")
    )
    if not record["exported"]:
        return None, best
    return folder, {"step": steps, **{k: v for k, v in record.items() if k not in ("forgetting", "exported")}}


def training_record(
    config: PretrainConfig, result: TrainResult, batches: PackedBatches | StagedBatches, best_step: int
) -> dict[str, Any]:
    """What the loop did, for the manifest: steps, tokens, speed, stops, data drawn (per stage), processes and
    precision."""
    return {
        "method": config.method,
        "steps": result.steps,
        "tokens_trained": result.units,
        "tokens_per_second": round(result.units_per_second, 1),
        "train_seconds": round(result.seconds - result.eval_seconds, 1),
        "best_step": best_step,
        "stopped_early": result.stopped_early,
        "stop_reason": result.stop_reason,
        "windows_drawn": batches.drawn,  # staged: summed over the stages
        # with pretrain.stages: each stage's steps, tokens, data, learning rates and windows drawn
        "stages": (
            stage_records(config, batches, result.evaluations, result.steps)
            if isinstance(batches, StagedBatches)
            else None
        ),
        "resumed": result.resumed_from,
        "processes": result.processes,
        "sharding": result.sharding,  # fsdp only when it sharded: over more than one process
        "context_parallel": result.context_parallel,  # processes per sequence (1: whole rows per process)
        "attention_window": config.attention_window,  # the sliding window set in the DAPT base (None: the base's own)
        **result.precision.record(),  # what it computed in and why (auto: what the device can do)
    }


def run(context: StageContext) -> dict[str, Any]:
    config = context.section_of(PretrainConfig)
    seed = context.config["seed"]
    torch.manual_seed(seed)
    base_folder = context.inputs["base"].path / "model"
    model, tokenizer = load_model(context, config, base_folder)
    eos_id = tokenizer.eos_token_id if config.document_mask else None
    shard_root = context.inputs["tokens"].path / "shards"
    shards = {p.name: open_split(p) for p in shard_root.iterdir() if p.is_dir()}

    held_out = held_out_splits(context, config, shards)
    settings = loop_settings(context, config, model, held_out)

    # -- data: the training mixture (one per stage), fixed held-out windows ----------------------------------
    batches: PackedBatches | StagedBatches
    if config.stages is None:
        batches = PackedBatches(
            training_mixture(context, config, shards, shard_root, seed), config.micro_batch_size, eos_id
        )
    else:
        batches = staged_batches(context, config, settings, shards, shard_root, eos_id)
    evaluate = HeldOutLoss(model, tokenizer, held_out, eos_id)
    guard = forgetting_guard(context, config, evaluate, batches)

    # -- checkpoints: after every evaluation and every `checkpoint_every` steps; resumable -----------------
    checkpointer = model_checkpointer(context.out / "checkpoints", config, model, tokenizer)
    checkpointer.keep_last = max(checkpointer.keep_last, config.average_last)  # the checkpoints to average
    trainable = parameter_count(model, trainable_only=True)
    context.log(
        f"{config.method}: {trainable / 1e6:.2f}M of {parameter_count(model) / 1e6:.1f}M parameters trained; "
        + (
            f"{config.max_steps} steps at most of {config.micro_batch_size * config.grad_accum_steps} × "
            f"{config.seq_len} tokens" + (f"; replay {config.replay_fraction:.0%}" if config.mix is None else "")
            if config.stages is None
            else f"{settings.max_steps} steps at most in {len(config.stages)} stages"
        )
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
    averaged_folder, best = choose_average(context, average, best, settings.monitor, result.steps)

    # -- the DAPT base: the best checkpoint (or the original, if nothing beat it), by the main process -----
    if is_main_process():
        export_dapt_base(context, config, best_step, base_folder, checkpointer, model, tokenizer, averaged_folder)
    context.log(f"best step {best_step}: " + ", ".join(f"{k} {initial[k]:.4f} → {best[k]:.4f}" for k in held_out))
    return {
        **training_record(config, result, batches, best_step),
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
