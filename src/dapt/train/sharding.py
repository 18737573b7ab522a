"""FSDP: weights, gradients and optimizer moments sharded over the processes, with torch's own FSDP2.

`shard_model` wraps each decoder layer (`fully_shard`), then the root module (embeddings, final norm, LM head):
a layer's weights are gathered just before its forward / backward and freed right after, so a process holds
about 1/N of the model at rest. Parameters become DTensors; an optimizer built afterwards keeps 1/N of the
moments.

A checkpoint stays the format a single process writes: every process takes part in gathering the full model
and optimizer state (`full_model_state`, `full_optimizer_state`, collectives), the main process writes it.
On resume the main process alone reads the full state and sends every other process its shards, tensor by
tensor (`load_full_model_state`, `load_full_optimizer_state`): N processes on a node hold one full copy in
host memory, not N (8 × ~84 GB for a 7B model and its AdamW moments). The optimizer state is kept indexed by
parameter position, as `optimizer.state_dict()` writes it, so a checkpoint of a sharded run resumes unsharded
and vice versa.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.tensor import DTensor

from dapt.errors import TrainingError
from dapt.train.distributed import launched_world_size, wait_for_everyone

# Gathered onto the CPU of the main process only: a full copy on every GPU would defeat sharding.
GATHER = StateDictOptions(full_state_dict=True, cpu_offload=True)
# The main process holds the full state (of the base, or of the checkpoint it read) and broadcasts it; each process
# keeps its own shard. Not strict, as a saved model lacks the tied LM head (`checkpoint.load_full_weights` has
# checked the names first, on the main process, and told every process its verdict).
BROADCAST = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True, strict=False)


def shards_over_processes(sharding: str) -> bool:
    """Whether `sharding` shards in this launch: fsdp over more than one process (alone, it trains unsharded)."""
    return sharding == "fsdp" and launched_world_size() > 1


def is_sharded(model: torch.nn.Module) -> bool:
    """True when the model's parameters are FSDP shards (DTensors)."""
    return any(isinstance(parameter, DTensor) for parameter in model.parameters())


def decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The model's repeated blocks: the modules whose class transformers lists in `_no_split_modules`."""
    names = set(getattr(model, "_no_split_modules", None) or ())
    layers = [module for module in model.modules() if type(module).__name__ in names]
    if not layers:
        raise TrainingError(
            f"pretrain.sharding fsdp: cannot find the decoder layers of {type(model).__name__} (its "
            f"_no_split_modules is {sorted(names) or 'empty'}); use pretrain.sharding: none"
        )
    return layers


def shard_model(model: torch.nn.Module, device: torch.device, world: int, bf16: bool) -> None:
    """Shard `model` in place over `world` processes on `device`'s kind (cpu: gloo, cuda: NCCL), every process
    starting from the main process's weights: the others may be built empty (`load_causal_lm(weights=False)`).

    With `bf16`, layers compute in bf16 from fp32 master weights and gradients are reduced in fp32.
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(device.type, (world,))
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 else None
    options: dict[str, Any] = {"mesh": mesh, **({"mp_policy": policy} if policy else {})}
    main = torch.distributed.get_rank() == 0
    wait_for_everyone()  # the main process may have taken long to read the base's weights (the long-wait group)
    if main and any(parameter.is_meta for parameter in model.parameters()):
        raise TrainingError("sharding fsdp: the main process must hold the weights; only the others may be empty")
    _check_same_model_everywhere(model, world)
    # the main process's weights, sent to every process once sharded: a process built empty (its parameters on
    # the meta device, `load_causal_lm(weights=False)`) never reads the weight file, and none holds a second copy
    weights = without_tied_copies(model, model.state_dict()) if main else {}
    buffers = {name: buffer.clone() for name, buffer in model.named_buffers()}  # real everywhere (rotary tables)
    if main:
        model.to(device)
    for layer in decoder_layers(model):
        fully_shard(layer, **options)
    fully_shard(model, **options)
    if not main:
        model.to_empty(device=device)  # storage for this process's shards only (and the buffers), filled below
        with torch.no_grad():
            for name, buffer in model.named_buffers():
                buffer.copy_(buffers[name])
    set_model_state_dict(model, weights, options=BROADCAST)


def _check_same_model_everywhere(model: torch.nn.Module, world: int) -> None:
    """Every process must hold the same parameters (names, shapes, ties): otherwise FSDP's collectives exchange
    buffers of different sizes and gloo aborts the processes. A TrainingError on every process instead."""
    layout = [(name, tuple(p.shape)) for name, p in model.named_parameters(remove_duplicate=False)]
    layout += [("tied", name) for name in sorted(tied_copies(model))]
    layouts: list[Any] = [None] * world
    torch.distributed.all_gather_object(layouts, layout)
    for rank, other in enumerate(layouts):
        if other != layouts[0]:
            differing = sorted({str(item) for item in set(map(tuple, other)) ^ set(map(tuple, layouts[0]))})
            raise TrainingError(
                f"sharding fsdp: process {rank} built another model than process 0 (differs in: "
                f"{', '.join(differing[:3])}); every process must load the same base with the same transformers"
            )


def as_plain(tensor: torch.Tensor) -> torch.Tensor:
    """A DTensor (e.g. a gradient norm over shards) as the plain tensor it stands for; others unchanged."""
    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def full_model_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The full weights on the main process's CPU (empty elsewhere). Every process must call it."""
    return get_model_state_dict(model, options=GATHER)


def tied_copies(model: torch.nn.Module) -> set[str]:
    """The second name of each tied parameter (lm_head.weight when it is the input embeddings)."""
    every_name = {name for name, _ in model.named_parameters(remove_duplicate=False)}
    return every_name - {name for name, _ in model.named_parameters()}


def without_tied_copies(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`state` less the `tied_copies`, as `save_pretrained` of the live model writes it: gathered, the two names
    hold two copies it cannot tell apart."""
    copies = tied_copies(model)
    return {name: tensor for name, tensor in state.items() if name not in copies}


def _parameter_names(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    """The names of the optimizer's parameters, in the order `optimizer.state_dict()` numbers them."""
    name_of = {parameter: name for name, parameter in model.named_parameters()}
    return [name_of[parameter] for group in optimizer.param_groups for parameter in group["params"]]


def _renamed(state: dict[str, Any], rename: Callable[[Any], Any]) -> dict[str, Any]:
    """An optimizer state dict with its parameter keys mapped through `rename` (positions <-> names)."""
    groups = [{**group, "params": [rename(key) for key in group["params"]]} for group in state["param_groups"]]
    return {"state": {rename(key): moments for key, moments in state["state"].items()}, "param_groups": groups}


def full_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The full optimizer state, as `optimizer.state_dict()` of an unsharded run writes it, on the main
    process (empty elsewhere). Every process must call it."""
    by_name = get_optimizer_state_dict(model, optimizer, options=GATHER)
    if not by_name:
        return {}
    index_of = {name: index for index, name in enumerate(_parameter_names(model, optimizer))}
    return _renamed(by_name, index_of.__getitem__)


def load_full_model_state(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Set every process's shard from the full weights `state` that the main process read; the others pass {}
    and receive their shards from it. Every process must call it, with the names already checked."""
    set_model_state_dict(model, state, options=BROADCAST)


def load_full_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Set every process's shard of the optimizer moments from the full `optimizer.state_dict()`-style state the
    main process read; the others pass {} and receive their shards (and the hyperparameters) from it. Every
    process must call it."""
    by_name = _renamed(state, _parameter_names(model, optimizer).__getitem__) if state else {}
    set_optimizer_state_dict(
        model, optimizer, by_name, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
    )
