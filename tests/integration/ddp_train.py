"""Train a tiny model with dapt's loop, logging to METRICS_FILE: run alone, or under torchrun.

`ddp_train.py METRICS_FILE [none|fsdp] [nan-gradient|nan-loss-rank-1|crash-and-resume[-deeper]|accumulate]`;
launched with ACCELERATE_USE_DEEPSPEED=true, the loop trains with DeepSpeed ZeRO (in DDP_TRAIN_PRECISION, if set;
DDP_TRAIN_MICRO_BATCHES per step, if set). Launched over several processes, each process also writes
METRICS_FILE.rankN.json with the share of a decoder layer's weight elements it holds after training; with
nan-gradient, the gradients of step 3 are NaN while its loss stays finite; with nan-loss-rank-1, the loss of step 3
is NaN on the second process only; with crash-and-resume, training checkpoints every 4 steps (next to METRICS_FILE),
every process crashes in step 5, and a fresh model resumes from step 4 to the end; the rank file then also counts
the checkpoint files this process read in full (`reads`); -deeper resumes a model with one layer more, which the
checkpoint does not fit; with accumulate, each step accumulates the gradients of 2 micro-batches. With
DDP_TRAIN_MAX_LOGITS_BYTES set, the loss is computed a chunk of positions at a time above that many bytes of logits
(dapt.model.chunked_loss); with DDP_TRAIN_CONTEXT_PARALLEL=N, N processes split each row's sequence
(dapt.model.context_parallel).
"""

import json
import os
import sys
from collections import Counter
from functools import partial
from pathlib import Path

import torch
from torch.distributed.tensor import DTensor

import dapt.train.checkpoint
from dapt.config import BaseConfig, PresetConfig
from dapt.model.load import load_original_base
from dapt.train.checkpoint import Checkpointer, load_full_weights
from dapt.train.distributed import leave
from dapt.train.loop import LoopSettings, train_loop
from dapt.train.objectives import MAX_LOGITS_BYTES as MAX_LOGITS_BYTES_DEFAULT
from dapt.train.objectives import causal_lm_loss, lm_batch
from dapt.train.sharding import without_tied_copies


def nan_gradient_at_step_3(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """The causal LM loss, plus at the third step a term that is 0 but whose gradient is NaN (sqrt'(0) · |x|'(0))."""
    loss, units = causal_lm_loss(model, batch)
    nan_gradient_at_step_3.calls += 1
    if nan_gradient_at_step_3.calls == 3:
        logits = model(input_ids=batch["input_ids"], use_cache=False).logits
        loss = loss + torch.sqrt((logits - logits.detach()).abs().sum())
    return loss, units


nan_gradient_at_step_3.calls = 0


def nan_loss_on_rank_1_at_step_3(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """The causal LM loss, NaN at the third step on the second process only (a bad row in its share)."""
    loss, units = causal_lm_loss(model, batch)
    nan_loss_on_rank_1_at_step_3.calls += 1
    if nan_loss_on_rank_1_at_step_3.calls == 3 and torch.distributed.get_rank() == 1:
        loss = loss * float("nan")
    return loss, units


nan_loss_on_rank_1_at_step_3.calls = 0


class Crash(Exception):
    """A process dying mid-step (on every process at the same step)."""


def crash_in_step_5(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    crash_in_step_5.calls += 1
    if crash_in_step_5.calls == 4 * MICRO_BATCHES + 1:  # the first micro-batch of step 5
        raise Crash
    return causal_lm_loss(model, batch)


crash_in_step_5.calls = 0
MICRO_BATCHES = int(os.environ.get("DDP_TRAIN_MICRO_BATCHES", "1"))  # per step (accumulate: 2)
# the loss a chunk of positions at a time above this many bytes of logits (dapt.model.chunked_loss); default: never here
MAX_LOGITS_BYTES = int(os.environ.get("DDP_TRAIN_MAX_LOGITS_BYTES", str(MAX_LOGITS_BYTES_DEFAULT)))


class Batches:
    """The same global batch of 8 rows in every process (the loop keeps each rank's share); resumable."""

    def __init__(self, windows: torch.Tensor, eos_id: int) -> None:
        self.windows, self.eos_id, self.drawn = windows, eos_id, 0

    def __call__(self) -> dict[str, torch.Tensor]:
        start = self.drawn * 8 % len(self.windows)
        self.drawn += 1
        return lm_batch(self.windows[start : start + 8], self.eos_id)

    def state_dict(self) -> dict[str, int]:
        return {"drawn": self.drawn}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.drawn = state["drawn"]


def counting_checkpoint_reads() -> Counter:
    """Count each checkpoint file this process reads in full from now on, by name; a memory-mapped torch.load
    (which reads only the tensors touched) is counted apart."""
    reads: Counter = Counter()
    load_file, torch_load = dapt.train.checkpoint.load_file, torch.load

    def counted_load_file(path, *args, **kwargs):
        reads[Path(path).name] += 1
        return load_file(path, *args, **kwargs)

    def counted_torch_load(source, *args, mmap=None, **kwargs):
        if isinstance(source, str | Path):  # not the in-memory buffers of broadcast_object_list
            reads[Path(source).name + (" memory-mapped" if mmap else "")] += 1
        return torch_load(source, *args, mmap=mmap, **kwargs)

    dapt.train.checkpoint.load_file = counted_load_file
    torch.load = counted_torch_load
    return reads


def fresh_model(num_layers: int = 2) -> tuple[torch.nn.Module, object]:
    torch.manual_seed(0)
    model, tokenizer, _ = load_original_base(BaseConfig(preset=PresetConfig(num_layers=num_layers)))
    return model, tokenizer


def checkpointer_of(model: torch.nn.Module, folder: Path) -> Checkpointer:
    """Full checkpoints of `model` every 4 steps in `folder`, as the pretrain stage writes them."""

    def save_model(path: Path, weights: dict[str, torch.Tensor] | None) -> None:
        state = None if weights is None else without_tied_copies(model, weights)
        model.save_pretrained(path, safe_serialization=True, state_dict=state)

    return Checkpointer(folder, save_model, lambda path: load_full_weights(model, path), every=4)


def main(metrics_file: Path, sharding: str, fault: str | None) -> None:
    model, tokenizer = fresh_model()
    windows = (torch.arange(64 * 33) * 7 % 50 + 1).view(64, 33)  # a learnable pattern
    next_batch = Batches(windows, tokenizer.eos_token_id)
    settings = LoopSettings(
        max_steps=8,
        lr=3e-3,
        warmup_steps=2,
        sharding=sharding,
        grad_accum_steps=2 if fault == "accumulate" else MICRO_BATCHES,
        precision=os.environ.get("DDP_TRAIN_PRECISION", "auto"),
        context_parallel=int(os.environ.get("DDP_TRAIN_CONTEXT_PARALLEL", "1")),
    )
    reads = None
    if fault is not None and fault.startswith("crash-and-resume"):
        checkpoints = metrics_file.with_name("checkpoints")
        try:
            train_loop(
                model,
                next_batch,
                crash_in_step_5,
                settings,
                metrics_file=metrics_file,
                checkpointer=checkpointer_of(model, checkpoints),
                description="ddp",
            )
        except Crash:
            pass
        model, _ = fresh_model(num_layers=3 if fault.endswith("deeper") else 2)
        reads = counting_checkpoint_reads()
        result = train_loop(
            model,
            next_batch,
            causal_lm_loss,
            settings,
            metrics_file=metrics_file,
            checkpointer=checkpointer_of(model, checkpoints),
            description="ddp",
        )
        assert result.resumed_from == 4
    else:
        loss_fn = {"nan-gradient": nan_gradient_at_step_3, "nan-loss-rank-1": nan_loss_on_rank_1_at_step_3}.get(
            fault, partial(causal_lm_loss, max_logits_bytes=MAX_LOGITS_BYTES)
        )
        result = train_loop(model, next_batch, loss_fn, settings, metrics_file=metrics_file, description="ddp")
    if torch.distributed.is_initialized():
        weight = model.model.layers[0].mlp.up_proj.weight
        held = weight.to_local().numel() if isinstance(weight, DTensor) else weight.numel()
        rank = torch.distributed.get_rank()
        shard_file = metrics_file.with_name(f"{metrics_file.name}.rank{rank}.json")
        shard = {"held": held, "of": weight.numel(), "sharding": result.sharding, "reads": reads}
        shard["context_parallel"] = result.context_parallel
        shard_file.write_text(json.dumps(shard))
    leave()  # without it, a rank can abort at interpreter exit (SIGABRT), now and then


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else "none", sys.argv[3] if len(sys.argv) > 3 else None)
