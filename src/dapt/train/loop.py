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
checkpoints hold the full model.
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
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from tqdm.auto import tqdm

from dapt.artifacts import atomic_write_text
from dapt.errors import TrainingError, raised_everywhere
from dapt.train import zero
from dapt.train.checkpoint import Checkpointer
from dapt.train.distributed import join, launched_world_size, wait_for_everyone
from dapt.train.precision import ACCELERATE_NAMES, PrecisionChoice, choose_precision
from dapt.train.preemption import StopRequests, TrainingStopped
from dapt.train.schedule import Schedule, lr_schedule
from dapt.train.sharding import (
    as_plain,
    full_model_state,
    full_optimizer_state,
    load_full_optimizer_state,
    shard_model,
    shards_over_processes,
)
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
    flops_per_unit: float | None = None  # model FLOPs per trained unit (token), for MFU in the log
    peak_tflops: float | None = None  # one device's peak TFLOP/s; with flops_per_unit, each step logs its MFU


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


def train_loop(
    model: torch.nn.Module,
    next_batch: BatchSource,
    loss_fn: LossFn,
    settings: LoopSettings,
    *,
    evaluate: Callable[[], dict[str, float]] | None = None,
    on_evaluation: Callable[[int, dict[str, float], bool], None] | None = None,
    metrics_file: Path | None = None,
    checkpointer: Checkpointer | None = None,
    description: str = "train",
) -> TrainResult:
    """Train `model`'s trainable parameters for up to `settings.max_steps` optimizer steps.

    `evaluate()` runs before the first step, every `eval_every` steps and after the last one;
    `on_evaluation(step, metrics, is_best)` is called after each. With a `checkpointer`, a checkpoint is
    written after every evaluation (and every `checkpointer.every` steps), and if the checkpointer's
    folder already holds a resumable checkpoint, training continues from it exactly: same weights,
    optimizer moments, schedule, RNG and data position as if it had never stopped.
    """
    check_launch(settings.sharding, settings.compile)
    deepspeed = zero.launched_with_deepspeed()
    launched = launched_world_size()
    # Several processes without CUDA (torchrun / accelerate launch on CPUs): accelerate only sets up its gloo
    # process group when told to use the CPU; alone, it picks the best device itself.
    multi_cpu = not torch.cuda.is_available() and launched > 1
    if launched > 1:
        join()  # the process group with dapt's collective timeout (nothing new if the pipeline joined it already)
    elif deepspeed:
        zero.one_process_group()
    sharded = shards_over_processes(settings.sharding)
    chosen = choose_precision(settings.precision)
    precision = ACCELERATE_NAMES[chosen.precision]
    fp16 = precision == "fp16"
    if sharded and precision == "fp16":
        raise TrainingError("sharding fsdp: fp16 is not supported (its loss scaler is accelerate's); use bf16")
    # accelerate keeps one global state per process and refuses a second Accelerator with another precision;
    # the stages of one pipeline may differ (e.g. bf16 pretraining, fp32 classifiers), so start each loop
    # from a fresh state. The process group (PartialState) is kept.
    AcceleratorState._reset_state(reset_partial_state=False)
    check_trackers(settings.report_to)
    settings = resolve_accumulation(settings)
    plugin = None
    if deepspeed:
        plugin = zero.plugin_for(
            rows_per_process=(settings.micro_batch_size or launched) // launched,
            grad_accum_steps=settings.grad_accum_steps,
            grad_clip=settings.grad_clip,
            world=launched,
            precision=precision,
        )
    accelerator = Accelerator(
        # a DeepSpeed launch on CPUs (tests) finds the gloo group `join()` made: told cpu=True, accelerate would
        # train without DeepSpeed
        cpu=multi_cpu and not deepspeed,
        # sharded, FSDP itself computes in bf16 (MixedPrecisionPolicy), from fp32 master weights
        mixed_precision="no" if sharded else precision,
        deepspeed_plugin=plugin,
        log_with=list(settings.report_to) or None,
        project_dir=settings.tracking_dir,
    )
    # fp16 needs a loss scaler: accelerate makes none on a CPU (DeepSpeed scales the loss itself, but not on CPUs)
    if fp16 and (accelerator.device.type == "cpu" if deepspeed else accelerator.scaler is None):
        raise TrainingError(
            f"{description}: precision fp16 needs a GPU; on a CPU accelerate would train in fp32 without saying so. "
            "Use precision: auto (bf16 where the CPU computes it natively, else fp32)"
        )
    if settings.report_to:
        accelerator.init_trackers(description.replace(" ", "_"), config=_flat_settings(settings))
    rank, world = accelerator.process_index, accelerator.num_processes
    main_process = accelerator.is_main_process
    if sharded:  # before the optimizer: it must hold the shards (DTensors), not the full parameters
        shard_model(model, accelerator.device, world, bf16=precision == "bf16")
    elif settings.sharding == "fsdp" and main_process:
        tqdm.write(f"  {description}: sharding fsdp with one process: training unsharded")
    groups = parameter_groups(model, settings.weight_decay, settings.lr, settings.embedding_lr_ratio)
    optimizer = adamw(groups, settings.lr, accelerator.device.type)
    implementation = {key: optimizer.defaults[key] for key in ("fused", "foreach")}
    scheduler = lr_schedule(
        optimizer,
        settings.schedule,
        settings.warmup_steps,
        settings.max_steps,
        settings.min_lr_ratio,
        settings.decay_fraction,
    )
    # The scheduler is not handed to accelerate: it would step it once per process. Every process steps it
    # once per optimizer step, as in a single-process run. A sharded model is not handed over either:
    # accelerate would wrap it in DDP. Under DeepSpeed the model becomes its engine (which `engine` names), the
    # optimizer DeepSpeed's ZeRO optimizer around this one (whose param groups the scheduler keeps setting).
    if not sharded:
        model, optimizer = accelerator.prepare(model, optimizer)
    engine = model if deepspeed else None
    # sharded or under DeepSpeed, the main process alone reads a checkpoint's optimizer state and sends each
    # process its shard (or partition)
    main_reads_state = sharded or deepspeed
    trainable = [p for p in model.parameters() if p.requires_grad]
    # the compiled module shares the model's parameters: checkpoints, evaluation and export see the same weights
    forward_model = compiled(model) if settings.compile else model
    shown_sharding = f"deepspeed-zero{zero.stage_of(engine)}" if deepspeed else "fsdp" if sharded else "none"
    result = TrainResult(
        steps=0,
        units=0,
        seconds=0.0,
        processes=world,
        sharding=shown_sharding,
        precision=chosen,
    )
    if main_process:
        tqdm.write(f"  {description}: {chosen}")

    def load_optimizer_state(state: dict[str, Any], where: Path) -> None:
        # `state` is {} but on the main process when it alone reads it (main_reads_state)
        if main_reads_state:
            wait_for_everyone()  # while the main process reads the moments (2× the model): the long-wait group
        zero.check_resumable(state if main_process or not main_reads_state else None, engine, world, str(where))
        if deepspeed:
            zero.load_optimizer_state(engine, state, main_process)
        elif sharded:
            load_full_optimizer_state(model, optimizer, state)
        else:
            optimizer.load_state_dict(state)
        # a checkpoint's param groups carry the AdamW implementation it was written with (foreach, before dapt used
        # fused): keep the one built here, which fp16's loss scaler was set up for
        for group in optimizer.param_groups:
            group.update(implementation)

    counters = {"bad_evaluations": 0, "last_evaluated": -1, "skipped_in_a_row": 0}
    saved = {"step": -1}  # the newest checkpoint this run wrote

    resume_from = checkpointer.latest_resumable() if checkpointer else None
    if resume_from is not None:
        assert checkpointer is not None
        loop_state = checkpointer.restore(
            resume_from,
            load_optimizer_state,
            scheduler,
            reads_optimizer_state=main_process or not main_reads_state,
            scaler=accelerator.scaler,  # fp16 without DeepSpeed (DeepSpeed's is in its optimizer state)
        )
        for name in RESUMED_FIELDS:
            setattr(result, name, loop_state["result"].get(name, getattr(result, name)))
        counters.update(loop_state["counters"])
        result.resumed_from = result.steps
        if hasattr(next_batch, "load_state_dict"):
            next_batch.load_state_dict(loop_state["data"])
        if main_process and metrics_file is not None and metrics_file.exists():
            # drop what the interrupted run logged after this checkpoint: those steps are redone. The main process
            # alone: it is the one that logs, and another's rewrite could replace the file it has just opened
            kept = [line for line in metrics_file.read_text().splitlines() if _logged_step(line) <= result.steps]
            atomic_write_text(metrics_file, "".join(line + "\n" for line in kept))
        if accelerator.is_main_process:
            tqdm.write(f"  resuming from {resume_from.name} (step {result.steps} of {settings.max_steps})")
    # resumed: appended to the lines kept above; from the start: a new file (what an attempt without a checkpoint
    # logged is redone)
    mode = "a" if resume_from is not None else "w"
    log_handle = metrics_file.open(mode, encoding="utf-8") if metrics_file and main_process else None

    def log(record: dict[str, Any]) -> None:
        if log_handle:
            log_handle.write(json.dumps(record) + "\n")
            log_handle.flush()
        if settings.report_to:
            values = record.get("eval", {k: v for k, v in record.items() if k != "step" and isinstance(v, float | int)})
            accelerator.log({k: v for k, v in values.items() if isinstance(v, float | int)}, step=record["step"])

    def finish() -> None:
        if log_handle:
            log_handle.close()
        # accelerator.end_training() would also destroy the process group, which later stages of a pipeline
        # launched over several processes still need; finish the trackers only.
        for tracker in accelerator.trackers:
            tracker.finish()

    def stop_if_signalled(requests: StopRequests, step: int) -> None:
        """When any process was signalled, checkpoint `step` (unless it just was) and stop every process."""
        signum = requests.agreed(world, accelerator.device)
        if not signum:
            return
        requests.acted_on = True
        if saved["step"] != step:
            save_checkpoint(step)
        progress.close()
        finish()
        assert checkpointer is not None
        raise TrainingStopped(
            f"{description}: stopped by {signal.Signals(signum).name} after step {step} of {settings.max_steps}; "
            f"checkpoint {checkpointer.step_folder(step)} written: run the same command again to resume from it",
            signum,
        )

    def save_checkpoint(step: int) -> None:
        if checkpointer is None:
            return
        loop_state = {
            "result": {name: getattr(result, name) for name in RESUMED_FIELDS},
            "counters": counters,
            "data": next_batch.state_dict() if hasattr(next_batch, "state_dict") else None,
        }
        # sharded: every process sends its shards to the main process (collectives: all must take part); under
        # DeepSpeed in 16 bits, the fp32 master weights instead of the 16-bit ones (gathered the same way)
        if deepspeed:
            weights = zero.full_fp32_weights(engine.module, main_process)
            optimizer_state = zero.gathered_optimizer_state(engine, main_process)
        elif sharded:
            weights, optimizer_state = full_model_state(model), full_optimizer_state(model, optimizer)
        else:
            weights, optimizer_state = None, optimizer.state_dict()
        wait_for_everyone()
        if main_process:
            scaler = accelerator.scaler  # fp16 without DeepSpeed: its scale resumes too
            checkpointer.save(step, optimizer_state, scheduler, loop_state, result.best_step, weights, scaler)
        wait_for_everyone()  # a long wait for a large model: on the waiting group, not a collective's timeout
        saved["step"] = step

    def run_evaluation(step: int) -> bool:
        """Evaluate, track the best, and say whether training should stop early."""
        counters["last_evaluated"] = step
        if evaluate is None:
            return False
        started = time.perf_counter()
        model.eval()
        with torch.no_grad():
            metrics = evaluate()
        model.train()
        if step > 0:
            result.eval_seconds += time.perf_counter() - started
        is_best = False
        if settings.monitor is not None:
            value = metrics[settings.monitor]
            if result.best_value is None or value < result.best_value - settings.min_delta:
                result.best_value, result.best_step, is_best = value, step, True
                counters["bad_evaluations"] = 0
            else:
                counters["bad_evaluations"] += 1
        result.evaluations.append({"step": step, **metrics})
        log({"step": step, "eval": metrics, "is_best": is_best})
        if on_evaluation is not None:
            on_evaluation(step, metrics, is_best)
        shown = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items())
        if main_process:
            tqdm.write(f"  step {step}: {shown}{' (best)' if is_best else ''}")
        if settings.patience is not None and counters["bad_evaluations"] >= settings.patience:
            result.stopped_early = True
            result.stop_reason = (
                f"{settings.monitor} did not improve by more than {settings.min_delta} for "
                f"{counters['bad_evaluations']} evaluations (best {result.best_value:.4f} at step {result.best_step})"
            )
            return True
        return False

    # With checkpoints, SIGTERM or a first Ctrl-C stops training after the step under way, with a checkpoint of
    # it (`dapt.train.preemption`); the same command then resumes from that step.
    with StopRequests(description) if checkpointer else nullcontext() as requests:
        model.train()
        step = result.steps
        stop = run_evaluation(0) if resume_from is None else result.stopped_early
        clock = time.perf_counter() - result.seconds
        progress = tqdm(
            total=settings.max_steps,
            initial=step,
            desc=description,
            unit="step",
            dynamic_ncols=True,
            leave=True,
            disable=not main_process,
        )
        while not stop and step < settings.max_steps:
            summed_loss, step_units = torch.zeros((), device=accelerator.device), 0
            for micro_step in range(settings.grad_accum_steps):
                batch = _to_device(_rows_of_rank(next_batch(), rank, world), accelerator.device)
                # replicated (DDP), the gradients are averaged over the processes once per step, after the last
                # micro-batch, not after each (accelerate's no_sync; nothing for one process or FSDP)
                last = micro_step == settings.grad_accum_steps - 1
                if deepspeed:  # told which micro-batch ends the step: DeepSpeed steps after it
                    engine.set_gradient_accumulation_boundary(last)
                    loss, units = loss_fn(forward_model, batch)
                    engine.backward(loss / settings.grad_accum_steps, scale_wrt_gas=False)
                else:
                    with nullcontext() if last or sharded else accelerator.no_sync(model):
                        loss, units = loss_fn(forward_model, batch)
                        accelerator.backward(loss / settings.grad_accum_steps)
                summed_loss += loss.detach().float() / settings.grad_accum_steps
                step_units += units * world
            # the loss of the whole global batch (a mean over processes), as a single process would see it, checked
            # once per step (one collective, one wait for the device): NaN/inf on every process if on any. After
            # backward: every process has taken part in its gradient collectives, none is left waiting in one;
            # nothing has been applied yet
            step_loss = accelerator.reduce(summed_loss, "mean").item()
            _stop_unless_finite(step_loss, "loss", description, step + 1, "Lower the learning rate or check the data")
            grad_norm = None
            if deepspeed:
                # DeepSpeed clips and steps in one (skipping a step whose gradients are not finite), so its norm
                # is checked after it: the weights in memory are then dropped, the last checkpoint is intact
                norm = zero.step(engine)
                grad_norm = norm if settings.grad_clip is not None else None
            elif settings.grad_clip is not None:
                # sharded gradients (DTensors) give a DTensor norm over all shards: the global norm, gathered
                grad_norm = float(as_plain(accelerator.clip_grad_norm_(trainable, settings.grad_clip)))
            if grad_norm is not None and not (fp16 and not math.isfinite(grad_norm)):  # fp16: see below
                _stop_unless_finite(grad_norm, "gradient norm", description, step + 1, "Lower the learning rate")
            scale = accelerator.scaler.get_scale() if accelerator.scaler is not None else None  # fp16, not DeepSpeed
            optimizer.step()  # under DeepSpeed, nothing: its engine has stepped
            # fp16: the loss scaler skipped a step that overflowed (and lowered its scale); the schedule waits.
            # accelerate's step_was_skipped misses it with a fused optimizer, which skips the update itself
            # (accelerate#4242)
            skipped = fp16 and (
                accelerator.scaler.get_scale() < scale if scale is not None else optimizer.step_was_skipped
            )
            if fp16:
                _count_skipped_step(skipped, counters, description, step + 1)
            if not skipped:
                scheduler.step()
            else:
                grad_norm = None
            optimizer.zero_grad(set_to_none=True)
            step += 1
            result.steps, result.units = step, result.units + step_units
            result.final_train_loss = step_loss
            result.seconds = time.perf_counter() - clock
            speed = result.units_per_second
            mfu = model_flops_utilization(settings.flops_per_unit, speed, settings.peak_tflops, world)
            log(
                {
                    "step": step,
                    "loss": step_loss,
                    "lr": max(scheduler.get_last_lr()),
                    **({"grad_norm": grad_norm} if grad_norm is not None else {}),
                    **({"skipped": True} if skipped else {}),  # fp16: the loss scaler skipped it
                    "units": result.units,
                    "seconds": round(result.seconds, 3),
                    "units_per_second": round(speed, 1),  # so far, over all processes
                    **({"mfu": round(mfu, 4)} if mfu is not None else {}),
                }
            )
            progress.update(1)
            shown = {f"{settings.unit}/s": f"{speed:.0f}", **({"mfu": f"{mfu:.1%}"} if mfu is not None else {})}
            progress.set_postfix(loss=f"{step_loss:.4f}", **shown)
            evaluated = bool(settings.eval_every and step % settings.eval_every == 0)
            if evaluated:
                stop = run_evaluation(step)
            if evaluated or (checkpointer and checkpointer.every and step % checkpointer.every == 0):
                save_checkpoint(step)
            if requests is not None:
                stop_if_signalled(requests, step)
        progress.close()
        if counters["last_evaluated"] != step:
            run_evaluation(step)
            save_checkpoint(step)
        if requests is not None:  # a signal during the last evaluation: stop here too, every process alike
            stop_if_signalled(requests, step)
    result.seconds = time.perf_counter() - clock
    finish()
    return result
