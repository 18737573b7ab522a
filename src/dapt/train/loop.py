"""The one training loop. Every stage that trains (continued pretraining, task variants) uses it.

A stage differs only in the batches it feeds and the loss it takes; the loop owns the rest: gradient
accumulation, clipping, the learning-rate schedule, periodic evaluation, early stopping on a monitored metric,
the NaN guard, throughput logging, a metrics JSONL file and, with checkpoints, a clean stop on SIGTERM or Ctrl-C
(`dapt.train.preemption`). Devices and precision come from `accelerate`, so the same code runs on a CPU or a GPU.

Over several processes (`torchrun` / `accelerate launch`) the model is replicated (DDP, through accelerate) or,
with `sharding="fsdp"`, sharded with torch's FSDP2 (`dapt.train.sharding`): each process holds 1/N of the
weights, gradients and optimizer moments. Launched with a DeepSpeed config, DeepSpeed's engine trains it with
ZeRO stage 1 or 2 (`dapt.train.zero`): the optimizer state (and gradients) partitioned, the weights whole. Every
process sees its share of the same global batch, so the loss curve is the one a single process follows, and
checkpoints hold the full model. Each of the three is a backend (`dapt.train.backends`), chosen once per launch:
the `Trainer` calls it and never branches on which it is; its checkpoints go through a `CheckpointManager`
(`dapt.train.checkpoint_manager`).
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import shutil
import signal
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field, fields, replace
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from pydantic import BaseModel
from tqdm.auto import tqdm

from dapt.artifacts import atomic_write_text
from dapt.errors import ConfigError, TrainingError, raised_everywhere
from dapt.model.context_parallel import ContextParallel
from dapt.train import zero
from dapt.train.backends import backend_for, start_processes
from dapt.train.checkpoint import Checkpointer
from dapt.train.checkpoint_manager import CheckpointManager
from dapt.train.forgetting import ForgettingGuard
from dapt.train.precision import ACCELERATE_NAMES, PrecisionChoice, choose_precision
from dapt.train.preemption import StopRequests, TrainingStopped
from dapt.train.schedule import Schedule, ScheduleSegment, lr_schedule, staged_lr_schedule
from dapt.train.throughput import model_flops_utilization

# loss_fn(model, batch) -> (mean loss over the batch's counted units, number of units: tokens or examples)
LossFn = Callable[[torch.nn.Module, Any], tuple[torch.Tensor, int]]


@dataclass
class LoopSettings:
    max_steps: int
    lr: float
    warmup_steps: int = 0
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.0
    grad_clip: float | None = 1.0
    grad_accum_steps: int = 1
    eval_every: int | None = None  # None: evaluate only before and after training
    monitor: str | None = None  # metric (lower is better) that picks the best step and drives early stopping
    patience: int | None = None  # evaluations without improvement before stopping; None: never stop early
    min_delta: float = 0.0
    unit: str = "tok"  # what loss_fn counts, for the progress bar: tokens or examples
    schedule: Schedule = "cosine"
    decay_fraction: float = 0.2  # wsd: share of the steps spent decaying
    embedding_lr_ratio: float = 1.0  # lr multiplier for trainable embeddings / LM head (often 0.1-0.5)
    precision: str = "auto"  # auto | fp32 | bf16 | fp16 (fp16 with dynamic loss scaling); auto: dapt.train.precision
    global_batch_tokens: int | None = None  # sets grad_accum_steps from the tokens per optimizer step
    seq_len: int | None = None  # tokens per row, needed with global_batch_tokens
    micro_batch_size: int | None = None  # rows per micro-batch over all processes, needed with global_batch_tokens
    report_to: tuple[str, ...] = ()  # experiment trackers through accelerate: tensorboard, wandb, mlflow
    tracking_dir: Path | None = None  # where local trackers (tensorboard, mlflow) write
    sharding: str = "none"  # none: DDP over several processes | fsdp: weights, grads, moments sharded (FSDP2)
    compile: bool = False  # train through torch.compile (evaluation stays eager)
    # processes that split each row's sequence (dapt.model.context_parallel); 1: each process takes whole rows
    context_parallel: int = 1
    flops_per_unit: float | None = None  # model FLOPs per trained unit (token), for MFU in the log
    peak_tflops: float | None = None  # one device's peak TFLOP/s; with flops_per_unit, each step logs its MFU
    # a staged run (pretrain.stages): the schedule stage by stage, replacing `schedule`, warmup_steps, min_lr_ratio
    # and decay_fraction; empty: `schedule` over max_steps
    lr_segments: tuple[ScheduleSegment, ...] = ()
    evaluate_at: tuple[int, ...] = ()  # steps that also evaluate (and checkpoint) besides eval_every: stage ends

    @classmethod
    def from_config(cls, section: BaseModel, **given: Any) -> LoopSettings:
        """The settings a typed config section (`PretrainConfig`) holds, read under the same names (monitor,
        patience and min_delta from its `early_stopping`), with `given` (what the stage works out: the tracking
        folder, the model's FLOPs per token, ...) added or put in their place."""
        declared = type(section).model_fields
        values = {f.name: getattr(section, f.name) for f in fields(cls) if f.name in declared}
        stopping = getattr(section, "early_stopping", None)
        if stopping is not None:
            values |= {name: getattr(stopping, name) for name in STOPPING_FIELDS}
        values |= given
        if "report_to" in values:
            values["report_to"] = tuple(values["report_to"])
        return cls(**values)


STOPPING_FIELDS = ("monitor", "patience", "min_delta")  # LoopSettings' fields a section holds in its early_stopping


@dataclass
class TrainResult:
    steps: int
    units: int
    seconds: float
    evaluations: list[dict[str, Any]] = field(default_factory=list)
    best_step: int | None = None
    best_value: float | None = None
    stopped_early: bool = False
    stop_reason: str = ""
    final_train_loss: float | None = None
    eval_seconds: float = 0.0
    resumed_from: int | None = None  # the step this run resumed from, if it did
    processes: int = 1
    sharding: str = "none"  # what the loop did: fsdp only over more than one process; deepspeed-zeroN
    context_parallel: int = 1  # processes per sequence
    # what it computed in (fp32, bf16: autocast from fp32 master weights, or fp16) and why
    precision: PrecisionChoice = field(default_factory=lambda: PrecisionChoice("fp32", "set in the config"))

    @property
    def units_per_second(self) -> float:
        """Training throughput, evaluation time excluded."""
        train_seconds = self.seconds - self.eval_seconds
        return self.units / train_seconds if train_seconds > 0 else 0.0


EMBEDDING_NAMES = ("embed_tokens", "lm_head", "wte", "embed_out")


def parameter_groups(
    model: torch.nn.Module, weight_decay: float, lr: float, embedding_lr_ratio: float = 1.0
) -> list[dict[str, Any]]:
    """Optimizer groups: weight decay on matrices only (norms, biases and embeddings are not decayed, as in
    GPT-2 / LLaMA); trainable embeddings and LM head at `lr * embedding_lr_ratio` (new or re-trained
    vocabulary rows are fragile: a lower lr keeps them from drifting away from the rest of the model)."""
    groups: dict[tuple[bool, bool], list[torch.nn.Parameter]] = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        is_embedding = any(part in name for part in EMBEDDING_NAMES)
        decayed = parameter.ndim >= 2 and not is_embedding
        groups.setdefault((decayed, is_embedding), []).append(parameter)
    return [
        {
            "params": params,
            "weight_decay": weight_decay if decayed else 0.0,
            "lr": lr * (embedding_lr_ratio if is_embedding else 1.0),
        }
        for (decayed, is_embedding), params in sorted(groups.items())
    ]


TRACKER_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}


def check_trackers(report_to: tuple[str, ...]) -> None:
    """A requested tracker must be known and installed; say how to install it otherwise."""
    for tracker in report_to:
        if tracker not in TRACKER_PACKAGES:
            raise TrainingError(f"report_to: unknown tracker {tracker!r}; choose from {sorted(TRACKER_PACKAGES)}")
        if importlib.util.find_spec(TRACKER_PACKAGES[tracker]) is None:
            raise TrainingError(f"report_to: {tracker} is not installed; pip install {TRACKER_PACKAGES[tracker]}")


DDP_LAUNCH = (
    "launch with `torchrun --nproc_per_node N -m dapt.cli ...` or `accelerate launch --config_file "
    "src/dapt/launch/ddp-gpu.yaml -m dapt.cli ...`"
)


def check_launch(sharding: str = "none", compile: bool = False) -> None:
    """accelerate's own FSDP would wrap the model behind dapt's back: checkpoints and the exported base would hold
    a fraction of it; dapt shards with its own FSDP (`sharding="fsdp"`) instead. A DeepSpeed launch must be one
    dapt's loop trains with (`dapt.train.zero.check_launch`)."""
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true":
        raise TrainingError(
            "launched with accelerate's FSDP (ACCELERATE_USE_FSDP=true): dapt shards the model itself; set "
            f"`pretrain.sharding: fsdp` (or `--set pretrain.sharding=fsdp`) and {DDP_LAUNCH}"
        )
    zero.check_launch(sharding, compile)


CXX_COMPILERS = ("g++", "clang++", "c++")


def compiled(model: torch.nn.Module) -> torch.nn.Module:
    """`torch.compile(model)`; on a CPU, first check for the C++ compiler inductor needs, and say how to get one."""
    if not torch.cuda.is_available() and not any(
        shutil.which(name) for name in (os.environ.get("CXX", ""), *CXX_COMPILERS) if name
    ):
        raise TrainingError(
            "compile: torch.compile on a CPU needs a C++ compiler and none was found (g++, clang++ or $CXX); "
            "install one (e.g. apt install g++) or set compile: false"
        )
    return torch.compile(model)


def _flat_settings(settings: LoopSettings) -> dict[str, Any]:
    """The loop's settings as tracker hyperparameters (scalars and strings only)."""
    return {k: v for k, v in vars(settings).items() if isinstance(v, int | float | str | bool)}


def resolve_accumulation(settings: LoopSettings) -> LoopSettings:
    """With a global batch in tokens, derive the gradient-accumulation steps from it."""
    if settings.global_batch_tokens is None:
        return settings
    if not settings.seq_len or not settings.micro_batch_size:
        raise TrainingError("global_batch_tokens needs seq_len and micro_batch_size")
    per_micro_batch = settings.seq_len * settings.micro_batch_size
    if settings.global_batch_tokens % per_micro_batch:
        nearest = max(1, round(settings.global_batch_tokens / per_micro_batch)) * per_micro_batch
        raise TrainingError(
            f"global_batch_tokens {settings.global_batch_tokens} is not a multiple of micro_batch_size × seq_len "
            f"= {per_micro_batch}; use e.g. {nearest}"
        )
    return replace(settings, grad_accum_steps=settings.global_batch_tokens // per_micro_batch)


def _logged_step(line: str) -> float:
    """The step of a metrics line; a line torn by a kill mid-write counts as after any checkpoint."""
    try:
        return json.loads(line)["step"]
    except (json.JSONDecodeError, KeyError):
        return math.inf


def _rows_of_rank(batch: Any, rank: int, world: int) -> Any:
    """This process's share of a global micro-batch: rows rank, rank + world, ... of every tensor.

    Every process draws the same global batch (same seed, same stream) and keeps its rows, so N processes
    see exactly the data one process would, and DDP's gradient average equals the single-process gradient.
    """
    if world == 1:
        return batch
    if isinstance(batch, torch.Tensor):
        if batch.shape[0] % world:
            raise TrainingError(
                f"a micro-batch of {batch.shape[0]} rows cannot be split over {world} processes; "
                f"make the micro-batch size a multiple of {world}"
            )
        return batch[rank::world]
    if isinstance(batch, dict):
        return {key: _rows_of_rank(value, rank, world) for key, value in batch.items()}
    if isinstance(batch, list | tuple):
        return type(batch)(_rows_of_rank(value, rank, world) for value in batch)
    return batch


class RowSharing:
    """Data parallelism alone: each process trains whole rows of the global batch (`_rows_of_rank`)."""

    def __init__(self, rank: int, world: int) -> None:
        self.rank, self.world = rank, world

    def share(self, batch: Any) -> Any:
        return _rows_of_rank(batch, self.rank, self.world)

    def attention(self, model: torch.nn.Module) -> nullcontext:
        return nullcontext()


def batch_sharing(
    settings: LoopSettings, backend_name: str, rank: int, world: int, model: torch.nn.Module
) -> RowSharing | ContextParallel:
    """How this launch splits a global micro-batch over its processes: by rows, or also along each row's sequence
    (`settings.context_parallel` processes per row: dapt.model.context_parallel, refused where it is not tested)."""
    size = settings.context_parallel
    if size == 1:
        return RowSharing(rank, world)
    refused = None
    if world == 1:
        refused = f"it needs {size} processes per sequence and this run has one; {DDP_LAUNCH}"
    elif backend_name.startswith("deepspeed"):
        refused = "it is not available with DeepSpeed; use sharding: none (DDP) or fsdp"
    elif settings.compile:
        refused = "it is not available with compile: true"
    if refused:
        raise raised_everywhere(ConfigError(f"pretrain.context_parallel: {size}: {refused}"))
    sharing = ContextParallel(size, rank, world)
    sharing.check(model)
    return sharing


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, dict):
        return {key: _to_device(value, device) for key, value in batch.items()}
    if isinstance(batch, list | tuple):
        return type(batch)(_to_device(value, device) for value in batch)
    return batch


def _stop_unless_finite(value: float, what: str, description: str, step: int, advice: str) -> None:
    """The NaN guard: a NaN/inf `value` (the global loss or gradient norm: the same on every process, so every
    process stops here) ends training before the optimizer step applies it."""
    if not math.isfinite(value):
        raise raised_everywhere(
            TrainingError(
                f"{description}: the {what} became {value} at step {step}; training stopped. {advice}; the last "
                "good checkpoint is kept."
            )
        )


# fp16's loss scaler skips a step whose scaled gradients overflow, and lowers its scale: now and then, that is how it
# works. This many skips in a row means the gradients overflow at any scale.
FP16_SKIPS_IN_A_ROW = 20


def _count_skipped_step(skipped: bool, counters: dict[str, int], description: str, step: int) -> None:
    """Count fp16's skipped steps in a row (in `counters`, which checkpoints keep); stop when there are too many."""
    counters["skipped_in_a_row"] = counters.get("skipped_in_a_row", 0) + 1 if skipped else 0
    if counters["skipped_in_a_row"] >= FP16_SKIPS_IN_A_ROW:
        raise raised_everywhere(
            TrainingError(
                f"{description}: fp16's loss scaler skipped {counters['skipped_in_a_row']} steps in a row, up to step "
                f"{step} (the gradients overflow at any scale); training stopped. Lower the learning rate or use "
                "bf16; the last good checkpoint is kept."
            )
        )


# What a checkpoint remembers of the result so far, so a resumed run reports the same as an uninterrupted one.
RESUMED_FIELDS = (
    "steps",
    "units",
    "seconds",
    "eval_seconds",
    "best_step",
    "best_value",
    "evaluations",
    "final_train_loss",
    "stopped_early",
    "stop_reason",
)


class BatchSource(Protocol):
    """Where batches come from. A source with `state_dict`/`load_state_dict` resumes mid-epoch exactly."""

    def __call__(self) -> Any: ...


# The devices torch has fused AdamW kernels for (torch checks only at the first step, so dapt decides up front)
FUSED_ADAMW_DEVICES = ("cpu", "cuda", "mps", "xpu")


def adamw(groups: list[dict[str, Any]], lr: float, device_type: str) -> torch.optim.AdamW:
    """torch's AdamW for parameters trained on `device_type`: fused (one pass over each tensor) where torch has the
    kernel, foreach elsewhere. In host memory (CPU training, DeepSpeed's optimizer offload) fused steps 0.4B
    parameters 7-10x as fast as foreach, and as fast as DeepSpeed's own CPU Adam without its C++ build: both run at
    the memory's bandwidth (bench/host_adamw.py). DeepSpeed's offloaded state is on the CPU, which has the kernel."""
    if device_type in FUSED_ADAMW_DEVICES:
        return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95), fused=True)
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95), foreach=True)


class MetricsLog:
    """The run's records (one per step, one per evaluation): `metrics_file` (JSONL, written by the main process)
    and the experiment trackers. Resumed at `resumed_step`, the lines an interrupted run wrote after that step are
    dropped (those steps are redone) and the new ones appended; from the start, the file is new."""

    def __init__(
        self, metrics_file: Path | None, accelerator: Accelerator, report_to: tuple[str, ...], resumed_step: int | None
    ) -> None:
        self.accelerator, self.report_to = accelerator, report_to
        main_process = accelerator.is_main_process
        if resumed_step is not None and main_process and metrics_file is not None and metrics_file.exists():
            # the main process alone: it is the one that logs, and another's rewrite could replace the file it has
            # just opened
            kept = [line for line in metrics_file.read_text().splitlines() if _logged_step(line) <= resumed_step]
            atomic_write_text(metrics_file, "".join(line + "\n" for line in kept))
        mode = "a" if resumed_step is not None else "w"  # from the start, what an attempt logged is redone
        self.handle = metrics_file.open(mode, encoding="utf-8") if metrics_file and main_process else None

    def __call__(self, record: dict[str, Any]) -> None:
        if self.handle:
            self.handle.write(json.dumps(record) + "\n")
            self.handle.flush()
        if self.report_to:
            values = record.get("eval", {k: v for k, v in record.items() if k != "step" and isinstance(v, float | int)})
            self.accelerator.log({k: v for k, v in values.items() if isinstance(v, float | int)}, step=record["step"])

    def close(self) -> None:
        if self.handle:
            self.handle.close()
        # accelerator.end_training() would also destroy the process group, which later stages of a pipeline
        # launched over several processes still need; finish the trackers only.
        for tracker in self.accelerator.trackers:
            tracker.finish()


class Trainer:
    """Trains `model`'s trainable parameters for up to `settings.max_steps` optimizer steps, with one backend per
    launch (`dapt.train.backends`: one process or DDP, FSDP2, DeepSpeed ZeRO) chosen before training starts.

    `evaluate()` runs before the first step, every `eval_every` steps and after the last one;
    `on_evaluation(step, metrics, is_best)` is called after each. With a forgetting `guard`
    (`dapt.train.forgetting`), each evaluation is also judged against the forgetting budget: a step over it is
    never the best, and the guard's action follows (stop here, remix the data, or a warning). With a
    `checkpointer`, a checkpoint is written after every evaluation (and every `checkpointer.every` steps), and if
    the checkpointer's folder already holds a resumable checkpoint, training continues from it exactly: same weights,
    optimizer moments, schedule, RNG and data position as if it had never stopped.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        next_batch: BatchSource,
        loss_fn: LossFn,
        settings: LoopSettings,
        *,
        evaluate: Callable[[], dict[str, float]] | None = None,
        on_evaluation: Callable[[int, dict[str, float], bool], None] | None = None,
        metrics_file: Path | None = None,
        checkpointer: Checkpointer | None = None,
        guard: ForgettingGuard | None = None,
        description: str = "train",
    ) -> None:
        self.next_batch, self.loss_fn, self.description, self.guard = next_batch, loss_fn, description, guard
        self.evaluator, self.on_evaluation, self.metrics_file = evaluate, on_evaluation, metrics_file
        check_launch(settings.sharding, settings.compile)
        launched = start_processes()
        chosen = choose_precision(settings.precision)
        precision = ACCELERATE_NAMES[chosen.precision]
        self.fp16 = precision == "fp16"
        self.backend = backend_for(settings.sharding, precision, launched, description)
        # accelerate keeps one global state per process and refuses a second Accelerator with another precision;
        # the stages of one pipeline may differ (e.g. bf16 pretraining, fp32 classifiers), so start each loop
        # from a fresh state. The process group (PartialState) is kept.
        AcceleratorState._reset_state(reset_partial_state=False)
        check_trackers(settings.report_to)
        self.settings = settings = resolve_accumulation(settings)
        self.accelerator = self._start_accelerator()
        self.rank, self.world = self.accelerator.process_index, self.accelerator.num_processes
        self.main_process = self.accelerator.is_main_process
        self.sharing = batch_sharing(settings, self.backend.name, self.rank, self.world, model)
        self._build(model)
        self.checkpoints = (
            CheckpointManager(checkpointer, self.backend, self.scheduler, next_batch) if checkpointer else None
        )
        self.counters = {"bad_evaluations": 0, "last_evaluated": -1, "skipped_in_a_row": 0}
        self.result = TrainResult(
            steps=0,
            units=0,
            seconds=0.0,
            processes=self.world,
            sharding=self.backend.name,
            context_parallel=settings.context_parallel,
            precision=chosen,
        )
        if self.main_process:
            tqdm.write(f"  {description}: {chosen}")

    def _start_accelerator(self) -> Accelerator:
        accelerator = self.backend.start(self.settings)
        if self.fp16 and not self.backend.scales_fp16_loss():
            raise TrainingError(
                f"{self.description}: precision fp16 needs a GPU; on a CPU accelerate would train in fp32 without "
                "saying so. Use precision: auto (bf16 where the CPU computes it natively, else fp32)"
            )
        if self.settings.report_to:
            accelerator.init_trackers(self.description.replace(" ", "_"), config=_flat_settings(self.settings))
        return accelerator

    def _build(self, model: torch.nn.Module) -> None:
        """The model, optimizer and LR schedule to train with. The scheduler is not handed to accelerate: it would
        step it once per process; every process steps it once per optimizer step, as in a single-process run."""
        settings = self.settings
        self.backend.shard(model)
        groups = parameter_groups(model, settings.weight_decay, settings.lr, settings.embedding_lr_ratio)
        optimizer = adamw(groups, settings.lr, self.accelerator.device.type)
        if settings.lr_segments:
            self.scheduler = staged_lr_schedule(optimizer, settings.lr_segments)
        else:
            self.scheduler = lr_schedule(
                optimizer,
                settings.schedule,
                settings.warmup_steps,
                settings.max_steps,
                settings.min_lr_ratio,
                settings.decay_fraction,
            )
        self.model, self.optimizer = self.backend.prepare(model, optimizer)
        # the compiled module shares the model's parameters: checkpoints, evaluation and export see the same weights
        self.forward_model = compiled(self.model) if settings.compile else self.model

    def train(self) -> TrainResult:
        """Train to the last step (or an early stop); with checkpoints, SIGTERM or a first Ctrl-C stops training
        after the step under way, with a checkpoint of it (`dapt.train.preemption`): the same command then resumes
        from that step."""
        resumed = self.resume()
        self.log = MetricsLog(
            self.metrics_file, self.accelerator, self.settings.report_to, self.result.steps if resumed else None
        )
        with StopRequests(self.description) if self.checkpoints else nullcontext() as requests:
            self.requests = requests
            self.model.train()
            stop = self.result.stopped_early if resumed else self.evaluate(0)
            self.clock = time.perf_counter() - self.result.seconds
            self.progress = tqdm(
                total=self.settings.max_steps,
                initial=self.result.steps,
                desc=self.description,
                unit="step",
                dynamic_ncols=True,
                leave=True,
                disable=not self.main_process,
            )
            while not stop and self.result.steps < self.settings.max_steps:
                self.train_step()
                stop = self.after_step(self.result.steps)
            self.progress.close()
            step = self.result.steps
            if self.counters["last_evaluated"] != step:
                self.evaluate(step)
                self.save_checkpoint(step)
            self.stop_if_signalled(step)  # a signal during the last evaluation: stop here too, every process alike
        self.result.seconds = time.perf_counter() - self.clock
        self.log.close()
        return self.result

    def forward_backward_step(self) -> tuple[torch.Tensor, int]:
        """Forward and backward of every micro-batch of one optimizer step: the step's mean loss on this process
        (a 0-dim tensor) and the units (tokens or examples) trained over all processes."""
        accumulation = self.settings.grad_accum_steps
        summed_loss, step_units = torch.zeros((), device=self.accelerator.device), 0
        for micro_step in range(accumulation):
            batch = _to_device(self.sharing.share(self.next_batch()), self.accelerator.device)
            last = micro_step == accumulation - 1
            with self.backend.micro_batch(last=last), self.sharing.attention(self.forward_model):
                loss, units = self.loss_fn(self.forward_model, batch)
                self.backend.backward(loss / accumulation)
            summed_loss += loss.detach().float() / accumulation
            step_units += units * self.world
        return summed_loss, step_units

    def train_step(self) -> None:
        """One optimizer step: forward and backward, the NaN guard, clipping, the update and the schedule."""
        step = self.result.steps + 1
        summed_loss, step_units = self.forward_backward_step()
        # the loss of the whole global batch (a mean over processes), as a single process would see it, checked
        # once per step (one collective, one wait for the device): NaN/inf on every process if on any. After
        # backward: every process has taken part in its gradient collectives, none is left waiting in one;
        # nothing has been applied yet
        step_loss = self.accelerator.reduce(summed_loss, "mean").item()
        _stop_unless_finite(step_loss, "loss", self.description, step, "Lower the learning rate or check the data")
        lr = max(self.scheduler.get_last_lr())  # the rate this step trains with (the scheduler moves on below)
        grad_norm, skipped = self.backend.clip_and_step(self.settings.grad_clip, partial(self._check_norm, step=step))
        if self.fp16:
            _count_skipped_step(skipped, self.counters, self.description, step)
        if skipped:  # fp16: the loss scaler skipped a step that overflowed (and lowered its scale); the schedule waits
            grad_norm = None
        else:
            self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.result.steps, self.result.units = step, self.result.units + step_units
        self.result.final_train_loss = step_loss
        self.result.seconds = time.perf_counter() - self.clock
        self.log_step(step_loss, grad_norm, skipped, lr)

    def _check_norm(self, grad_norm: float | None, step: int) -> None:
        """The NaN guard on the gradient norm. fp16 aside: its scaler skips a step whose norm is not finite."""
        if grad_norm is not None and not (self.fp16 and not math.isfinite(grad_norm)):
            _stop_unless_finite(grad_norm, "gradient norm", self.description, step, "Lower the learning rate")

    def log_step(self, step_loss: float, grad_norm: float | None, skipped: bool, lr: float) -> None:
        speed = self.result.units_per_second
        mfu = model_flops_utilization(self.settings.flops_per_unit, speed, self.settings.peak_tflops, self.world)
        self.log(
            {
                "step": self.result.steps,
                "loss": step_loss,
                "lr": lr,
                **({"grad_norm": grad_norm} if grad_norm is not None else {}),
                **({"skipped": True} if skipped else {}),  # fp16: the loss scaler skipped it
                "units": self.result.units,
                "seconds": round(self.result.seconds, 3),
                "units_per_second": round(speed, 1),  # so far, over all processes
                **({"mfu": round(mfu, 4)} if mfu is not None else {}),
            }
        )
        self.progress.update(1)
        shown = {f"{self.settings.unit}/s": f"{speed:.0f}", **({"mfu": f"{mfu:.1%}"} if mfu is not None else {})}
        self.progress.set_postfix(loss=f"{step_loss:.4f}", **shown)

    def after_step(self, step: int) -> bool:
        """Evaluate and checkpoint when due (every eval_every steps and at `evaluate_at`), stop when signalled; return
        whether training should stop early."""
        evaluated = bool(self.settings.eval_every and step % self.settings.eval_every == 0)
        evaluated = evaluated or step in self.settings.evaluate_at
        stop = self.evaluate(step) if evaluated else False
        if evaluated or (self.checkpoints and self.checkpoints.due(step)):
            self.save_checkpoint(step)
        self.stop_if_signalled(step)
        return stop

    def evaluate(self, step: int) -> bool:
        """Evaluate, track the best, and say whether training should stop early."""
        self.counters["last_evaluated"] = step
        if self.evaluator is None:
            return False
        started = time.perf_counter()
        self.model.eval()
        with torch.no_grad():
            metrics = self.evaluator()
        self.model.train()
        if step > 0:
            self.result.eval_seconds += time.perf_counter() - started
        check = self.guard.check(step) if self.guard is not None else None
        is_best = self._track_best(step, metrics, within_budget=not (check and check["over_budget"]))
        self.result.evaluations.append({"step": step, **metrics})
        self.log({"step": step, "eval": metrics, "is_best": is_best, **({"forgetting": check} if check else {})})
        if self.on_evaluation is not None:
            self.on_evaluation(step, metrics, is_best)
        shown = ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items())
        if self.main_process:
            tqdm.write(f"  step {step}: {shown}{' (best)' if is_best else ''}")
            if check is not None and self.guard is not None and (step > 0 or check["over_budget"]):
                tqdm.write(f"  {self.guard.describe(check)}")
        if check is not None and check["action"] == "stop":
            self.result.stopped_early = True
            self.result.stop_reason = (
                f"the general validation loss rose {check['rise']:.2%} over the original base's, more than the "
                f"forgetting budget of {check['budget']:.2%} (on_forgetting: stop); the best step within the budget "
                f"is {self.result.best_step}"
            )
            return True
        if self.settings.patience is not None and self.counters["bad_evaluations"] >= self.settings.patience:
            self.result.stopped_early = True
            self.result.stop_reason = (
                f"{self.settings.monitor} did not improve by more than {self.settings.min_delta} for "
                f"{self.counters['bad_evaluations']} evaluations (best {self.result.best_value:.4f} at step "
                f"{self.result.best_step})"
            )
            return True
        return False

    def _track_best(self, step: int, metrics: dict[str, float], within_budget: bool = True) -> bool:
        """Whether `step` is the best so far by the monitored metric (lower is better); a step over the forgetting
        budget never is. Counts the evaluations without improvement."""
        if self.settings.monitor is None:
            return False
        value = metrics[self.settings.monitor]
        improved = self.result.best_value is None or value < self.result.best_value - self.settings.min_delta
        if within_budget and improved:
            self.result.best_value, self.result.best_step = value, step
            self.counters["bad_evaluations"] = 0
            return True
        self.counters["bad_evaluations"] += 1
        return False

    def save_checkpoint(self, step: int) -> None:
        if self.checkpoints is None:
            return
        loop_state = {
            "result": {name: getattr(self.result, name) for name in RESUMED_FIELDS},
            "counters": self.counters,
            **({"guard": self.guard.state_dict()} if self.guard is not None else {}),
        }
        self.checkpoints.save(step, loop_state, self.result.best_step)

    def resume(self) -> bool:
        """Continue from the newest resumable checkpoint, if there is one; say whether there was."""
        path = self.checkpoints.latest() if self.checkpoints else None
        if path is None:
            return False
        assert self.checkpoints is not None
        loop_state = self.checkpoints.restore(path)
        for name in RESUMED_FIELDS:
            setattr(self.result, name, loop_state["result"].get(name, getattr(self.result, name)))
        self.counters.update(loop_state["counters"])
        if self.guard is not None and "guard" in loop_state:
            self.guard.load_state_dict(loop_state["guard"])
        self.result.resumed_from = self.result.steps
        if self.main_process:
            tqdm.write(f"  resuming from {path.name} (step {self.result.steps} of {self.settings.max_steps})")
        return True

    def stop_if_signalled(self, step: int) -> None:
        """When any process was signalled, checkpoint `step` (unless it just was) and stop every process."""
        if self.requests is None:
            return
        signum = self.requests.agreed(self.world, self.accelerator.device)
        if not signum:
            return
        assert self.checkpoints is not None
        self.requests.acted_on = True
        if self.checkpoints.saved_step != step:
            self.save_checkpoint(step)
        self.progress.close()
        self.log.close()
        raise TrainingStopped(
            f"{self.description}: stopped by {signal.Signals(signum).name} after step {step} of "
            f"{self.settings.max_steps}; checkpoint {self.checkpoints.folder(step)} written: run the same command "
            "again to resume from it",
            signum,
        )


def train_loop(
    model: torch.nn.Module, next_batch: BatchSource, loss_fn: LossFn, settings: LoopSettings, **options: Any
) -> TrainResult:
    """Train with a `Trainer` (`options`: its keyword arguments, evaluate, checkpointer, ...) and return its
    result."""
    return Trainer(model, next_batch, loss_fn, settings, **options).train()
