"""DeepSpeed ZeRO stages 1 and 2 for the pretrain stage, through accelerate.

`accelerate launch --config_file src/dapt/launch/zero2-gpu.yaml -m dapt.cli run pipeline.yaml` (or any accelerate
config with `distributed_type: DEEPSPEED`, or torchrun with ACCELERATE_USE_DEEPSPEED=true and
ACCELERATE_DEEPSPEED_ZERO_STAGE / ACCELERATE_DEEPSPEED_CONFIG_FILE) trains the pretrain stage with DeepSpeed's
engine: stage 1 partitions the optimizer moments and fp32 master weights over the processes, stage 2 the gradients
too, and `offload_optimizer` moves them to host memory. The weights themselves stay whole on every process, so
evaluation, checkpoints of the weights and the exported base are those of a DDP run. Stage 3 (partitioned
weights) is refused: `pretrain.sharding: fsdp` does that with torch's FSDP2, with checkpoints that resume
anywhere.

dapt keeps its own optimizer (AdamW with its weight-decay and embedding groups), LR schedule, batch sizes and
clipping: a DeepSpeed config with an `optimizer` or `scheduler` section is refused, and the batch sizes,
gradient accumulation and clipping are set from the pretrain config (a value in the DeepSpeed config that
differs is replaced, with a note). Precision is `pretrain.precision` too: bf16 / fp16 under DeepSpeed cast the
weights themselves to 16 bits (fp32 master copies live in the optimizer state); checkpoints, and so the
exported base, hold the fp32 master weights, as under accelerate's bf16.

A checkpoint keeps every process's partition of the optimizer state (DeepSpeed's own `state_dict`), gathered
by the main process into `training_state.pt`; on resume the main process reads it and sends each process its
partition. It resumes only under the same ZeRO stage and number of processes: anything else is a
CheckpointError that says so.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import sys
from typing import Any

import torch
from tqdm.auto import tqdm

from dapt.errors import CheckpointError, TrainingError, raised_everywhere
from dapt.train.distributed import collective_timeout, waiting_group

USE_DEEPSPEED = "ACCELERATE_USE_DEEPSPEED"  # set by `accelerate launch` with a DeepSpeed config
SUPPORTED_STAGES = (1, 2)
STATE_KEY = "deepspeed_zero"  # the optimizer entry of a checkpoint written under DeepSpeed


def launched_with_deepspeed() -> bool:
    """True when accelerate was told to train with DeepSpeed (and not set aside by `distributed.alone()`)."""
    return os.environ.get(USE_DEEPSPEED, "false").lower() == "true"


def _config_source() -> str:
    """Where the DeepSpeed settings come from, for messages."""
    path = os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE", "none")
    return f"the DeepSpeed config {path}" if path != "none" else "the accelerate launch config (deepspeed_config)"


def check_launch(sharding: str, compile: bool) -> None:
    """Under a DeepSpeed launch: deepspeed is installed and the settings are ones dapt's loop trains with."""
    if not launched_with_deepspeed():
        return
    if importlib.util.find_spec("deepspeed") is None:
        raise TrainingError(
            f"launched with DeepSpeed ({USE_DEEPSPEED}=true) but deepspeed is not installed: pip install deepspeed"
        )
    if sharding == "fsdp":
        raise TrainingError(
            "launched with DeepSpeed and pretrain.sharding: fsdp: choose one; set pretrain.sharding: none to train "
            "with DeepSpeed ZeRO, or launch without the DeepSpeed config to shard with FSDP"
        )
    if compile:
        raise TrainingError("pretrain.compile is not supported under DeepSpeed; set compile: false")
    _plugin()


def _plugin() -> Any:
    """accelerate's DeepSpeedPlugin from the launch's variables (config file, stage, offload), checked."""
    from accelerate.utils import DeepSpeedPlugin

    try:
        plugin = DeepSpeedPlugin()
    except (ValueError, OSError) as error:  # a missing file, no zero_optimization section
        raise TrainingError(f"{_config_source()}: {error}") from error
    config = plugin.deepspeed_config
    stage = int(config.get("zero_optimization", {}).get("stage", 0))
    if stage not in SUPPORTED_STAGES:
        raise TrainingError(
            f"{_config_source()}: zero_optimization.stage {stage} is not supported by dapt's loop (stages 1 and 2 "
            "are). Stage 0 is plain data parallelism: launch without DeepSpeed (torchrun, or accelerate launch "
            "with src/dapt/launch/ddp-gpu.yaml); stage 3 partitions the weights themselves: set "
            "pretrain.sharding: fsdp and launch without DeepSpeed"
        )
    elastic = str(config["zero_optimization"].get("elastic_checkpoint", False)).lower()
    if elastic in ("true", "1", "yes", "on", "y", "t"):  # what DeepSpeed's pydantic config reads as true
        raise TrainingError(
            f"{_config_source()}: zero_optimization.elastic_checkpoint is not supported (dapt's checkpoints resume "
            "under the same number of processes); remove it"
        )
    for section in ("optimizer", "scheduler"):
        if section in config:
            raise TrainingError(
                f"{_config_source()}: remove its `{section}` section: dapt trains with its own AdamW and LR "
                "schedule (pretrain.lr, schedule, warmup_steps, weight_decay)"
            )
    return plugin


def plugin_for(
    *, rows_per_process: int, grad_accum_steps: int, grad_clip: float | None, world: int, precision: str
) -> Any:
    """The DeepSpeedPlugin for one training loop: the launch's ZeRO settings, dapt's batch sizes, accumulation,
    clipping and `precision` (accelerate's mixed_precision: no, bf16, fp16)."""
    plugin = _plugin()
    config = plugin.deepspeed_config
    owned = {
        "train_micro_batch_size_per_gpu": rows_per_process,
        "gradient_accumulation_steps": grad_accum_steps,
        "train_batch_size": rows_per_process * grad_accum_steps * world,
        "gradient_clipping": grad_clip or 0.0,
    }
    for key, value in owned.items():
        given = config.get(key, "auto")
        if given not in ("auto", value) and not (key == "gradient_accumulation_steps" and given == 1):
            # accelerate writes gradient_accumulation_steps 1 when the launch config has none: no note for that
            tqdm.write(f"  {_config_source()}: {key} {given} replaced by dapt's {value} (from the pretrain config)")
        config[key] = value
    for dtype in ("bf16", "fp16"):
        enabled = str(config.get(dtype, {}).get("enabled", "auto")).lower()
        if enabled == "true" and precision != dtype:
            raise TrainingError(
                f"{_config_source()}: {dtype}.enabled is true but pretrain.precision gives "
                f'{"fp32" if precision == "no" else precision}; set {dtype}.enabled to "auto" (dapt sets it from '
                f"pretrain.precision) or set pretrain.precision: {dtype}"
            )
        config.setdefault(dtype, {})["enabled"] = precision == dtype
    if precision in ("bf16", "fp16") and grad_accum_steps > 1:
        # gradients summed over the micro-batches of a step in fp32, as under accelerate's autocast (DeepSpeed's
        # default is the weights' 16 bits); it costs an fp32 gradient buffer (ZeRO-1: of the whole model)
        config.setdefault("data_types", {}).setdefault("grad_accum_dtype", "fp32")
    if config["zero_optimization"].get("offload_optimizer", {}).get("device", "none") not in ("none", None):
        # DeepSpeed's fused CPU Adam is its own C++ build; torch's fused AdamW steps the moments in host memory as fast
        config["zero_force_ds_cpu_optimizer"] = False
    return plugin


def one_process_group() -> None:
    """Launched with DeepSpeed as one process (ZeRO-Offload on one GPU, or `dapt run` with the variables set):
    DeepSpeed wants a process group and a LOCAL_RANK and, without a launcher's variables, would look for MPI. Give
    it a group of one on a free local port, as process 0."""
    os.environ.setdefault("LOCAL_RANK", "0")
    if torch.distributed.is_initialized():
        return
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    torch.distributed.init_process_group(
        "nccl" if torch.cuda.is_available() else "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=0,
        world_size=1,
        timeout=collective_timeout(),
    )


def stage_of(engine: Any) -> int:
    return int(engine.zero_optimization_stage())


def step(engine: Any) -> float | None:
    """The optimizer step at the end of an accumulation (DeepSpeed clips, steps and zeroes the gradients);
    the gradient norm it measured before clipping: inf (or NaN) when the gradients were not finite, in which
    case DeepSpeed skipped the step (bf16 aside: the NaN guard stops training either way)."""
    try:
        engine.step()
    except Exception as error:  # DeepSpeed's fp16 scaler gives up at its minimum scale (the same step everywhere)
        if "loss scale already at minimum" not in str(error):
            raise
        raise raised_everywhere(
            TrainingError(
                "fp16: DeepSpeed's loss scaler reached its minimum scale and the gradients still overflow; training "
                "stopped. Lower the learning rate or use bf16; the last good checkpoint is kept."
            )
        ) from error
    norm = engine.get_global_grad_norm()
    if norm is None:
        return None
    norm = float(norm)
    return norm if norm >= 0 else float("nan")  # DeepSpeed's group norms report inf / NaN as -1


def full_fp32_weights(module: torch.nn.Module, main_process: bool) -> dict[str, torch.Tensor] | None:
    """The module's state with DeepSpeed's fp32 master weights in place of the 16-bit weights it trains (bf16 /
    fp16), on the main process (collective: all must call it; {} elsewhere); None when the weights are fp32.

    So a checkpoint, and the DAPT base copied from one, is the fp32 model accelerate's bf16 would write. Frozen
    weights (a LoRA base) have no master copy: DeepSpeed cast them to 16 bits, and so they are saved."""
    if all(parameter.dtype == torch.float32 for parameter in module.parameters()):
        return None
    from deepspeed.utils import safe_get_full_fp32_param

    masters = {}
    for name, parameter in module.named_parameters():  # the same order on every process: one gather each
        full = safe_get_full_fp32_param(parameter) if parameter.requires_grad else None
        if full is not None and main_process:
            masters[name] = full.detach().cpu()
    if not main_process:
        return {}
    return {
        name: masters.get(name, tensor.detach().cpu().float() if tensor.is_floating_point() else tensor.cpu())
        for name, tensor in module.state_dict().items()
    }


def _to_cpu(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return type(value)((key, _to_cpu(item)) for key, item in value.items())
    if isinstance(value, list | tuple):
        return type(value)(_to_cpu(item) for item in value)
    return value


def gathered_optimizer_state(engine: Any, main_process: bool) -> dict[str, Any]:
    """Every process's partition of the optimizer state, on the main process (collective: all must call it);
    {} on the others. Through host memory and the gloo group of long waits: no GPU memory on the main process."""
    partition = _to_cpu(engine.optimizer.state_dict())
    world = torch.distributed.get_world_size()
    partitions: list[Any] | None = [None] * world if main_process else None
    torch.distributed.gather_object(partition, partitions, dst=0, group=waiting_group())
    if not main_process:
        return {}
    return {STATE_KEY: {"stage": stage_of(engine), "processes": world, "partitions": partitions}}


def _layout(stage: int, processes: int) -> str:
    return f"under DeepSpeed ZeRO stage {stage} over {processes} processes"


def saved_layout(state: dict[str, Any]) -> str:
    """How a checkpoint's optimizer state was written, for messages."""
    if STATE_KEY in state:
        return _layout(state[STATE_KEY]["stage"], state[STATE_KEY]["processes"])
    return "without DeepSpeed"


def check_resumable(state: dict[str, Any] | None, engine: Any | None, world: int, where: str) -> None:
    """Raise a CheckpointError on every process unless the optimizer state the main process read (`state`; None
    on the others) resumes here: under DeepSpeed (`engine`) with the same stage and processes, or without it.
    Over several processes the main process's verdict is sent to all, so every one stops, or none."""
    verdict: str | None = None
    if state is not None:
        here = "without DeepSpeed" if engine is None else _layout(stage_of(engine), world)
        if saved_layout(state) != here:
            verdict = (
                f"{where}: this checkpoint's optimizer state was written {saved_layout(state)}; this run trains "
                f"{here}. Resume it the way it was written, or delete {os.path.dirname(where)} to start this stage "
                "over"
            )
    if world > 1:
        box = [verdict]
        torch.distributed.broadcast_object_list(box, src=0, group=waiting_group())
        verdict = box[0]
    if verdict is not None:
        raise raised_everywhere(CheckpointError(verdict))


def load_optimizer_state(engine: Any, state: dict[str, Any], main_process: bool) -> None:
    """Give each process its partition of the optimizer state the main process read (`state`, {} elsewhere);
    the fp32 master weights come from it too (exact, whatever the weights' precision)."""
    world = torch.distributed.get_world_size()
    partitions = state[STATE_KEY]["partitions"] if main_process else None
    mine: list[Any] = [None]
    torch.distributed.scatter_object_list(mine, partitions, src=0, group=waiting_group())
    rank = torch.distributed.get_rank()
    listed = [mine[0] if index == rank else None for index in range(world)]
    engine.optimizer.load_state_dict(listed, load_optimizer_states=True, load_from_fp32_weights=True)


def checkpoint_classes() -> list[Any]:
    """DeepSpeed's classes in its optimizer `state_dict`, allowed when a checkpoint is read with weights_only; none
    when deepspeed is not in use (not imported): a checkpoint written under it then fails to load, saying so."""
    if "deepspeed" not in sys.modules:
        return []
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]
