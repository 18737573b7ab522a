"""How one launch trains: a backend per launch, chosen once before training starts (`backend_for`).

- `Replicated`: one process, or DDP over several, through accelerate (the default);
- `Sharded`: `sharding: fsdp` over several processes, torch's FSDP2 (`dapt.train.sharding`);
- `DeepSpeedZero`: launched with a DeepSpeed config, DeepSpeed's engine with ZeRO stage 1 or 2 (`dapt.train.zero`).

Each provides what the training loop needs of it: the `Accelerator`'s options, `prepare` (model and optimizer),
the micro-batch's `backward`, `clip_and_step`, `gather_for_checkpoint` and `load_optimizer_state`. The loop
(`dapt.train.loop.Trainer`) calls them and never asks which backend it has.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from tqdm.auto import tqdm

from dapt.errors import TrainingError
from dapt.train import zero
from dapt.train.distributed import join, launched_world_size, wait_for_everyone
from dapt.train.sharding import (
    as_plain,
    full_model_state,
    full_optimizer_state,
    load_full_optimizer_state,
    shard_model,
    shards_over_processes,
)

# check_norm(grad_norm): the NaN guard on the gradient norm (None: not measured), before the update is applied
NormCheck = Callable[[float | None], None]


def start_processes() -> int:
    """Join the process group of a launch over several processes (nothing new if the pipeline joined it already)
    with dapt's collective timeout, or give DeepSpeed launched as one process the group of one it wants; return
    the number of processes launched."""
    launched = launched_world_size()
    if launched > 1:
        join()
    elif zero.launched_with_deepspeed():
        zero.one_process_group()
    return launched


def backend_for(sharding: str, precision: str, launched: int, description: str = "train") -> Backend:
    """The backend of this launch, for `sharding` (none | fsdp) and `precision` (accelerate's name: no, bf16,
    fp16) over `launched` processes; `description` names the training run in messages."""
    if zero.launched_with_deepspeed():
        return DeepSpeedZero(precision, launched)
    if shards_over_processes(sharding):
        if precision == "fp16":
            raise TrainingError("sharding fsdp: fp16 is not supported (its loss scaler is accelerate's); use bf16")
        return Sharded(precision, launched)
    return Replicated(precision, launched, fsdp_asked_by=description if sharding == "fsdp" else None)


def _implementation(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The AdamW implementation of the optimizer built for this run. A checkpoint's param groups carry the one it was
    written with (foreach, before dapt used fused): on resume the one built here is kept, which fp16's loss scaler
    was set up for."""
    return {key: optimizer.defaults[key] for key in ("fused", "foreach")}


class Backend:
    """What every backend shares; the defaults are accelerate's (`Replicated`)."""

    name = "none"  # what the run's result and manifest record as its sharding
    # the main process alone reads a checkpoint's optimizer state and sends each process its shard (or partition)
    main_reads_state = False

    def __init__(self, precision: str, launched: int) -> None:
        self.precision, self.launched = precision, launched
        self.fp16 = precision == "fp16"

    def start(self, settings: Any) -> Accelerator:
        """The `Accelerator` of this training run (`settings`: the loop's), kept for the methods below."""
        self.accelerator = Accelerator(
            **self._accelerator_options(settings),
            log_with=list(settings.report_to) or None,
            project_dir=settings.tracking_dir,
        )
        self.main_process, self.world = self.accelerator.is_main_process, self.accelerator.num_processes
        return self.accelerator

    def _accelerator_options(self, settings: Any) -> dict[str, Any]:
        # Several processes without CUDA (torchrun / accelerate launch on CPUs): accelerate only sets up its gloo
        # process group when told to use the CPU; alone, it picks the best device itself.
        return {"cpu": not torch.cuda.is_available() and self.launched > 1, "mixed_precision": self.precision}

    def scales_fp16_loss(self) -> bool:
        """Whether fp16 has the loss scaler it needs: accelerate makes none on a CPU."""
        return self.accelerator.scaler is not None

    @property
    def scaler(self) -> Any:
        """fp16's loss scaler when accelerate keeps it (its scale is checkpointed); None otherwise."""
        return self.accelerator.scaler

    @property
    def reads_optimizer_state(self) -> bool:
        """Whether this process reads a checkpoint's optimizer state itself (else the main process sends it)."""
        return self.main_process or not self.main_reads_state

    def shard(self, model: torch.nn.Module) -> None:
        """Spread the model over the processes, before its optimizer is built (nothing when it is replicated)."""

    def prepare(
        self, model: torch.nn.Module, optimizer: torch.optim.Optimizer
    ) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
        """The model and optimizer to train with (accelerate's wrappers: DDP over several processes)."""
        self.implementation = _implementation(optimizer)
        return self._keep(*self.accelerator.prepare(model, optimizer))

    def _keep(
        self, model: torch.nn.Module, optimizer: torch.optim.Optimizer
    ) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
        self.model, self.optimizer = model, optimizer
        self.trainable = [p for p in model.parameters() if p.requires_grad]
        return model, optimizer

    @contextmanager
    def micro_batch(self, last: bool) -> Iterator[None]:
        """Around one micro-batch's forward and backward; `last`: it ends the optimizer step. Replicated (DDP), the
        gradients are averaged over the processes once per step, after the last micro-batch, not after each
        (accelerate's no_sync; nothing for one process)."""
        with nullcontext() if last else self.accelerator.no_sync(self.model):
            yield

    def backward(self, loss: torch.Tensor) -> None:
        self.accelerator.backward(loss)

    def clip_and_step(self, grad_clip: float | None, check_norm: NormCheck) -> tuple[float | None, bool]:
        """Clip the gradients to `grad_clip` (their norm checked by `check_norm` first) and apply them; return the
        gradient norm before clipping (None: not clipped) and whether fp16's loss scaler skipped the step."""
        grad_norm = None
        if grad_clip is not None:
            # sharded gradients (DTensors) give a DTensor norm over all shards: the global norm, gathered
            grad_norm = float(as_plain(self.accelerator.clip_grad_norm_(self.trainable, grad_clip)))
        check_norm(grad_norm)
        scaler = self.accelerator.scaler  # fp16 only
        scale = scaler.get_scale() if scaler is not None else None
        self.optimizer.step()
        # fp16: the loss scaler skipped a step that overflowed (and lowered its scale). accelerate's
        # step_was_skipped misses it with a fused optimizer, which skips the update itself (accelerate#4242)
        skipped = self.fp16 and (
            scaler.get_scale() < scale if scale is not None else bool(self.optimizer.step_was_skipped)
        )
        return grad_norm, skipped

    def gather_for_checkpoint(self) -> tuple[dict[str, torch.Tensor] | None, dict[str, Any]]:
        """The weights to save (None: the live model saves itself) and the optimizer state, on the main process.
        A collective where the state is spread over the processes: every process must call it."""
        return None, self.optimizer.state_dict()

    def load_optimizer_state(self, state: dict[str, Any], where: Path) -> None:
        """Resume the optimizer from a checkpoint's `state`, read from `where` ({} on a process other than the main
        one when the main process alone reads it)."""
        if self.main_reads_state:
            wait_for_everyone()  # while the main process reads the moments (2× the model): the long-wait group
        zero.check_resumable(state if self.reads_optimizer_state else None, self._engine(), self.world, str(where))
        self._load_optimizer_state(state)
        for group in self.optimizer.param_groups:
            group.update(self.implementation)

    def _engine(self) -> Any:
        """DeepSpeed's engine, None without it: what `zero.check_resumable` compares the checkpoint with."""
        return None

    def _load_optimizer_state(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state)


class Replicated(Backend):
    """One process, or the model replicated on each of several (DDP), through accelerate."""

    def __init__(self, precision: str, launched: int, fsdp_asked_by: str | None = None) -> None:
        super().__init__(precision, launched)
        self.fsdp_asked_by = fsdp_asked_by  # the run that asked for fsdp with one process (None: it did not)

    def shard(self, model: torch.nn.Module) -> None:
        if self.fsdp_asked_by and self.main_process:
            tqdm.write(f"  {self.fsdp_asked_by}: sharding fsdp with one process: training unsharded")


class Sharded(Backend):
    """Weights, gradients and optimizer moments sharded over the processes (FSDP2, `dapt.train.sharding`)."""

    name = "fsdp"
    main_reads_state = True

    def _accelerator_options(self, settings: Any) -> dict[str, Any]:
        # FSDP itself computes in bf16 (MixedPrecisionPolicy), from fp32 master weights
        return {**super()._accelerator_options(settings), "mixed_precision": "no"}

    def shard(self, model: torch.nn.Module) -> None:
        # before the optimizer is built: it must hold the shards (DTensors), not the full parameters
        shard_model(model, self.accelerator.device, self.world, bf16=self.precision == "bf16")

    def prepare(
        self, model: torch.nn.Module, optimizer: torch.optim.Optimizer
    ) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
        self.implementation = _implementation(optimizer)
        return self._keep(model, optimizer)  # not handed to accelerate, which would wrap it in DDP

    @contextmanager
    def micro_batch(self, last: bool) -> Iterator[None]:
        yield  # FSDP reduces each micro-batch's gradient shards as they come

    def gather_for_checkpoint(self) -> tuple[dict[str, torch.Tensor] | None, dict[str, Any]]:
        # every process sends its shards to the main process (collectives: all must take part)
        return full_model_state(self.model), full_optimizer_state(self.model, self.optimizer)

    def _load_optimizer_state(self, state: dict[str, Any]) -> None:
        load_full_optimizer_state(self.model, self.optimizer, state)


class DeepSpeedZero(Backend):
    """DeepSpeed's engine with ZeRO stage 1 or 2 (`dapt.train.zero`): the model becomes its engine, the optimizer
    DeepSpeed's ZeRO optimizer around dapt's (whose param groups the scheduler keeps setting)."""

    main_reads_state = True

    def _accelerator_options(self, settings: Any) -> dict[str, Any]:
        return {
            # a DeepSpeed launch on CPUs (tests) finds the gloo group `join()` made: told cpu=True, accelerate would
            # train without DeepSpeed
            "cpu": False,
            "mixed_precision": self.precision,
            "deepspeed_plugin": zero.plugin_for(
                rows_per_process=(settings.micro_batch_size or self.launched) // self.launched,
                grad_accum_steps=settings.grad_accum_steps,
                grad_clip=settings.grad_clip,
                world=self.launched,
                precision=self.precision,
            ),
        }

    def scales_fp16_loss(self) -> bool:
        return self.accelerator.device.type != "cpu"  # DeepSpeed scales the loss itself, but not on CPUs

    def prepare(
        self, model: torch.nn.Module, optimizer: torch.optim.Optimizer
    ) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
        prepared = super().prepare(model, optimizer)
        self.name = f"deepspeed-zero{zero.stage_of(self.model)}"
        return prepared

    @contextmanager
    def micro_batch(self, last: bool) -> Iterator[None]:
        self.model.set_gradient_accumulation_boundary(last)  # told which micro-batch ends the step: it steps after it
        yield

    def backward(self, loss: torch.Tensor) -> None:
        self.model.backward(loss, scale_wrt_gas=False)  # the loss comes divided by the accumulation steps

    def clip_and_step(self, grad_clip: float | None, check_norm: NormCheck) -> tuple[float | None, bool]:
        # DeepSpeed clips and steps in one (skipping a step whose gradients are not finite), so its norm is checked
        # after it: the weights in memory are then dropped, the last checkpoint is intact
        norm = zero.step(self.model)
        grad_norm = norm if grad_clip is not None else None
        check_norm(grad_norm)
        return grad_norm, self.fp16 and bool(self.optimizer.step_was_skipped)

    def gather_for_checkpoint(self) -> tuple[dict[str, torch.Tensor] | None, dict[str, Any]]:
        # in 16 bits, the fp32 master weights instead of the 16-bit ones (collectives: all must take part)
        weights = zero.full_fp32_weights(self.model.module, self.main_process)
        return weights, zero.gathered_optimizer_state(self.model, self.main_process)

    def _engine(self) -> Any:
        return self.model

    def _load_optimizer_state(self, state: dict[str, Any]) -> None:
        zero.load_optimizer_state(self.model, state, self.main_process)
