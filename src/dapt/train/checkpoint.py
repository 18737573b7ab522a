"""Checkpoints that a run can resume from exactly.

A checkpoint is a folder `step-NNNNNN/` holding the model as a Hugging Face folder (config.json,
model.safetensors, tokenizer files) plus, for the newest one only, the state that makes resuming exact:
`training_state.pt` (optimizer, LR scheduler, torch RNG) and `loop_state.json` (step, counters, best
so far, evaluation history, the data stream's position). It is written under a temporary name and
renamed, so a folder named `step-*` is always complete; a process killed mid-write leaves only a
`.partial` folder, which is ignored and cleaned up.

Older checkpoints lose their training state (it is 2× the model's size in AdamW moments) and only the
last `keep_last` and the best one are kept.

The files are the same for one process, DDP and FSDP: with sharded weights (`dapt.train.sharding`) every
process takes part in gathering the full weights and optimizer state, the main process writes them with this
class; on resume the main process alone reads them and sends every other process its shard. Under DeepSpeed
ZeRO (`dapt.train.zero`) the optimizer state is DeepSpeed's partitions of it, one per process, which resume
under the same stage and number of processes only.

A checkpoint that does not fit the model (another base, architecture or LoRA setting) or a damaged file is a
`CheckpointError` naming the folder and what to do; the weights' names and shapes are checked, from the file's
header, before any of them is loaded.
"""

from __future__ import annotations

import json
import pickle
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, PreTrainedModel
from transformers.core_model_loading import revert_weight_conversion

from dapt.artifacts import fsync_directory, fsync_tree
from dapt.errors import CheckpointError, raised_everywhere
from dapt.train import zero
from dapt.train.distributed import wait_for_everyone
from dapt.train.sharding import is_sharded, load_full_model_state, tied_copies, without_tied_copies

WEIGHTS = "model.safetensors"
TRAINING_STATE = "training_state.pt"
LOOP_STATE = "loop_state.json"


@dataclass
class Checkpointer:
    """Saves and restores checkpoints in `folder`.

    save_model(path, weights) writes the model (and tokenizer) as an HF folder: `weights` is the full state dict
    gathered from a sharded model, or None to save the live model as it is. load_weights(path) reads the
    weights back into the live model; the caller knows how (full weights, or LoRA adapters).
    """

    folder: Path
    save_model: Callable[[Path, dict[str, torch.Tensor] | None], None]
    load_weights: Callable[[Path], None]
    every: int | None = None  # also checkpoint every N steps (evaluations always checkpoint)
    keep_last: int = 1

    def step_folder(self, step: int) -> Path:
        return self.folder / f"step-{step:06d}"

    def saved_steps(self) -> list[int]:
        if not self.folder.is_dir():
            return []
        return sorted(int(p.name.removeprefix("step-")) for p in self.folder.glob("step-*") if p.is_dir())

    def latest_resumable(self) -> Path | None:
        """The newest checkpoint that still holds its training state, or None."""
        if self.folder.is_dir():
            self._recover()
        for step in reversed(self.saved_steps()):
            path = self.step_folder(step)
            if (path / TRAINING_STATE).is_file() and (path / LOOP_STATE).is_file():
                return path
        return None

    def save(
        self,
        step: int,
        optimizer_state: dict[str, Any],
        scheduler: Any,
        loop_state: dict[str, Any],
        best_step: int | None,
        weights: dict[str, torch.Tensor] | None = None,
        scaler: Any = None,
    ) -> Path:
        """Write checkpoint `step`: `optimizer_state` is a full `optimizer.state_dict()` (gathered when sharded),
        `weights` the full model state gathered from a sharded model (None: the live model saves itself); `scaler`
        fp16's loss scaler (accelerate's GradScaler), whose scale resumes too."""
        self.folder.mkdir(parents=True, exist_ok=True)
        self._recover()
        for stale in [*self.folder.glob(".*.partial"), *self.folder.glob(".*.replaced")]:
            shutil.rmtree(stale)
        final = self.step_folder(step)
        partial = self.folder / f".step-{step:06d}.partial"
        self.save_model(partial, weights)
        torch.save(
            {
                "optimizer": optimizer_state,
                "scheduler": scheduler.state_dict(),
                **({"scaler": scaler.state_dict()} if scaler is not None else {}),
                "torch_rng": torch.get_rng_state(),
                # the accelerator's generator too (dropout on a GPU): the same on every process of a launch
                **({"cuda_rng": torch.cuda.get_rng_state()} if torch.cuda.is_available() else {}),
            },
            partial / TRAINING_STATE,
        )
        (partial / LOOP_STATE).write_text(json.dumps(loop_state, indent=1) + "\n")
        fsync_tree(partial)  # on disk before its name says it is complete
        # Re-saving a step (the end of training right after a checkpoint): the old folder goes only once the new
        # one is written, so there is always a resumable checkpoint (`_recover` finishes a swap cut short).
        replaced = self.folder / f".step-{step:06d}.replaced"
        if final.exists():
            final.rename(replaced)
        partial.rename(final)
        fsync_directory(self.folder)
        shutil.rmtree(replaced, ignore_errors=True)
        self._prune(step, best_step)
        return final

    def _recover(self) -> None:
        """A process killed between the two renames of a re-save left `.step-N.replaced` and no `step-N`: put it
        back. Safe when several processes do it at once (the rename of one of them wins)."""
        for replaced in self.folder.glob(".step-*.replaced"):
            target = self.folder / replaced.name.removeprefix(".").removesuffix(".replaced")
            if not target.exists():
                try:
                    replaced.rename(target)
                except OSError:  # another process put it back first
                    pass

    def _prune(self, newest: int, best_step: int | None) -> None:
        steps = self.saved_steps()
        for step in steps:
            if step != newest:
                for name in (TRAINING_STATE, LOOP_STATE):
                    (self.step_folder(step) / name).unlink(missing_ok=True)
        for step in steps[: -self.keep_last]:
            if step != best_step:
                shutil.rmtree(self.step_folder(step))

    def restore(
        self,
        path: Path,
        load_optimizer_state: Callable[[dict[str, Any], Path], None],
        scheduler: Any,
        reads_optimizer_state: bool = True,
        scaler: Any = None,
    ) -> dict[str, Any]:
        """Load weights, optimizer (through `load_optimizer_state`, given the full `optimizer.state_dict()`
        saved, or DeepSpeed's partitions of it, and the file's path), scheduler and RNG from `path`; return the
        loop state saved with them.

        Without `reads_optimizer_state` (under FSDP, a process other than the main one, which receives its shards
        of the moments from it), `load_optimizer_state` is given {}: `training_state.pt` is memory-mapped, and
        only the scheduler and RNG state this process needs too (a few bytes) are read from it, never the moments
        (2× the model). The main process (and an unsharded one) reads the file whole: its optimizer keeps those
        tensors, and they must not stay mapped to a file that pruning deletes. A damaged file fails to load in
        every process alike (the zip directory at its end is read either way), so none is left waiting.
        """
        self.load_weights(path)
        try:
            # DeepSpeed's optimizer state holds a few of its own classes (its loss scaler, the ZeRO stage)
            with torch.serialization.safe_globals(zero.checkpoint_classes()):
                state = torch.load(path / TRAINING_STATE, weights_only=True, mmap=not reads_optimizer_state)
        except pickle.UnpicklingError as error:
            if "deepspeed" not in str(error):
                raise CheckpointError.unreadable(path / TRAINING_STATE, error) from error
            raise raised_everywhere(  # every process reads the file (the others memory-mapped): all fail alike
                CheckpointError(
                    f"{path / TRAINING_STATE}: this checkpoint was written under DeepSpeed (its optimizer state is "
                    "DeepSpeed's) and this run is not launched with DeepSpeed: resume it with the same DeepSpeed "
                    f"launch config and number of processes, or delete {path.parent} to start this stage over"
                )
            ) from error
        except (OSError, RuntimeError, EOFError) as error:
            raise CheckpointError.unreadable(path / TRAINING_STATE, error) from error
        load_optimizer_state(state["optimizer"] if reads_optimizer_state else {}, path / TRAINING_STATE)
        scheduler.load_state_dict(state["scheduler"])
        if scaler is not None and "scaler" in state:
            scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["torch_rng"])
        if "cuda_rng" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state(state["cuda_rng"])
        return json.loads((path / LOOP_STATE).read_text())


def average_checkpoints(folders: list[Path], out: Path) -> Path:
    """Write `out`: the weights of `folders` (checkpoints of one model) averaged, tensor by tensor in fp64 and stored
    in each tensor's saved dtype, next to the other files (config, tokenizer) of the last of them. The training
    state is not copied: the average is a model, not a point to resume from."""
    if len(folders) < 2:
        raise CheckpointError(f"averaging needs two checkpoints or more; got {[str(f) for f in folders]}")
    shutil.rmtree(out, ignore_errors=True)
    partial = out.with_name(f".{out.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    for file in folders[-1].iterdir():
        if file.name not in (WEIGHTS, TRAINING_STATE, LOOP_STATE):
            shutil.copy2(file, partial / file.name)
    summed: dict[str, torch.Tensor] = {}
    dtypes: dict[str, torch.dtype] = {}
    for folder in folders:
        try:
            weights = load_file(folder / WEIGHTS)
        except (SafetensorError, OSError) as error:
            raise CheckpointError.unreadable(folder / WEIGHTS, error) from error
        if summed and weights.keys() != summed.keys():
            raise CheckpointError(f"{folder}: its tensors are not those of {folders[0]}; they cannot be averaged")
        for name, tensor in weights.items():
            dtypes.setdefault(name, tensor.dtype)
            summed[name] = summed[name] + tensor.double() if name in summed else tensor.double()
    averaged = {name: (total / len(folders)).to(dtypes[name]).contiguous() for name, total in summed.items()}
    save_file(averaged, partial / WEIGHTS, metadata={"format": "pt"})
    fsync_tree(partial)
    partial.rename(out)
    return out


def saved_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """The name and shape of each tensor of a safetensors file, from its header alone (no tensor is read).

    A missing, truncated or damaged file is a CheckpointError: safetensors checks the header against the size.
    """
    try:
        with safe_open(path, "pt") as weights:
            return {name: tuple(weights.get_slice(name).get_shape()) for name in weights.keys()}
    except (SafetensorError, OSError) as error:
        raise CheckpointError.unreadable(path, error) from error


def as_saved(model: torch.nn.Module, live: dict[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    """The names and shapes `save_pretrained` writes for `model`, whose state (less tied copies) is `live`.
    transformers converts some on the way (GPT-NeoX's `lm_head` is `embed_out` on disk, the fused experts of
    Mixtral and Qwen2-MoE are split per expert): its own reverse conversion works them out, here on the meta
    device (no memory, nothing copied)."""
    meta = {name: torch.empty(tuple(tensor.shape), dtype=tensor.dtype, device="meta") for name, tensor in live.items()}
    if isinstance(model, PreTrainedModel):
        meta = revert_weight_conversion(model, meta)
    return {name: tuple(tensor.shape) for name, tensor in meta.items()}


def _check_fits(model: torch.nn.Module, folder: Path) -> bool:
    """Raise a CheckpointError unless `folder`'s weights are what saving this model writes (names and shapes, from
    the file's header); return whether they are stored under the live model's own names (else loading converts)."""
    live = without_tied_copies(model, model.state_dict())  # a tied LM head is saved once, as the embeddings
    saved, expected = saved_shapes(folder / WEIGHTS), as_saved(model, live)
    tied = tied_copies(model)
    missing = [name for name in expected if name not in saved]
    unexpected = [name for name in saved if name not in expected and name not in tied]
    reshaped = [
        f"{name} {'×'.join(map(str, saved[name]))} saved vs {'×'.join(map(str, expected[name]))} here"
        for name in saved
        if name in expected and saved[name] != expected[name]
    ]
    if missing or unexpected or reshaped:
        raise CheckpointError.mismatch(folder, missing, unexpected, reshaped)
    return set(saved) - tied == set(live)


def _live_weights(folder: Path, stored_as_live: bool) -> dict[str, torch.Tensor]:
    """The weights of `folder` under the live model's names: as stored, or converted back by transformers."""
    if stored_as_live:
        return load_file(folder / WEIGHTS)
    converted = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    return without_tied_copies(converted, converted.state_dict())


def load_full_weights(model: torch.nn.Module, folder: Path) -> None:
    """Load the weights of an HF folder written by `save_pretrained` into a live model of the same architecture.

    The file's names and shapes are checked first, from its header, against what saving this model writes: a
    checkpoint of another model is a CheckpointError. Sharded (FSDP), every process must call it: the main process
    alone checks and reads the file, tells the others its verdict (so all stop, or none) and sends them their
    shards; they wait for it on the long-wait group, however long a large file takes to read.
    """
    sharded = is_sharded(model)
    main = not sharded or torch.distributed.get_rank() == 0
    verdict: bool | CheckpointError | None = None
    if main:
        try:
            verdict = _check_fits(model, folder)
        except CheckpointError as error:
            verdict = error
    if sharded:
        box = [verdict]
        torch.distributed.broadcast_object_list(box, src=0)
        verdict = box[0]
    if isinstance(verdict, CheckpointError):
        raise raised_everywhere(verdict)  # every process raises it here, together
    weights = _live_weights(folder, bool(verdict)) if main else {}
    if sharded:
        wait_for_everyone()
        load_full_model_state(model, weights)
    else:
        model.load_state_dict(weights, strict=False)  # strict=False: the tied LM head is saved once
