"""Checkpoints that a run can resume from exactly.

A checkpoint is a folder `step-NNNNNN/` holding the model as a Hugging Face folder (config.json,
model.safetensors, tokenizer files) plus, for the newest one only, the state that makes resuming exact:
`training_state.pt` (optimizer, LR scheduler, torch RNG) and `loop_state.json` (step, counters, best
so far, evaluation history, the data stream's position). It is written under a temporary name and
renamed, so a folder named `step-*` is always complete; a process killed mid-write leaves only a
`.partial` folder, which is ignored and cleaned up.

Older checkpoints lose their training state (it is 2× the model's size in AdamW moments) and only the
last `keep_last` and the best one are kept.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_model

TRAINING_STATE = "training_state.pt"
LOOP_STATE = "loop_state.json"


@dataclass
class Checkpointer:
    """Saves and restores checkpoints in `folder`.

    save_model(path) writes the model (and tokenizer) as an HF folder, load_weights(path) reads the weights
    back into the live model; the caller knows how (full weights, or LoRA adapters).
    """

    folder: Path
    save_model: Callable[[Path], None]
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
        for step in reversed(self.saved_steps()):
            path = self.step_folder(step)
            if (path / TRAINING_STATE).is_file() and (path / LOOP_STATE).is_file():
                return path
        return None

    def save(
        self,
        step: int,
        optimizer: torch.optim.Optimizer,
        scheduler: Any,
        loop_state: dict[str, Any],
        best_step: int | None,
    ) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        for stale in self.folder.glob(".*.partial"):
            shutil.rmtree(stale)
        final = self.step_folder(step)
        if final.exists():  # re-saving the same step (e.g. the end of training right after a checkpoint)
            shutil.rmtree(final)
        partial = self.folder / f".step-{step:06d}.partial"
        self.save_model(partial)
        torch.save(
            {
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "torch_rng": torch.get_rng_state(),
            },
            partial / TRAINING_STATE,
        )
        (partial / LOOP_STATE).write_text(json.dumps(loop_state, indent=1) + "\n")
        partial.rename(final)
        self._prune(step, best_step)
        return final

    def _prune(self, newest: int, best_step: int | None) -> None:
        steps = self.saved_steps()
        for step in steps:
            if step != newest:
                for name in (TRAINING_STATE, LOOP_STATE):
                    (self.step_folder(step) / name).unlink(missing_ok=True)
        for step in steps[: -self.keep_last]:
            if step != best_step:
                shutil.rmtree(self.step_folder(step))

    def restore(self, path: Path, optimizer: torch.optim.Optimizer, scheduler: Any) -> dict[str, Any]:
        """Load weights, optimizer, scheduler and RNG from `path`; return the loop state saved with them."""
        self.load_weights(path)
        state = torch.load(path / TRAINING_STATE, weights_only=True)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        return json.loads((path / LOOP_STATE).read_text())


def load_full_weights(model: torch.nn.Module, folder: Path) -> None:
    """Load `model.safetensors` of an HF folder into a live model of the same architecture."""
    missing, unexpected = load_model(model, folder / "model.safetensors", strict=False)
    tied = {name for name in missing if name.endswith("lm_head.weight")}  # tied to the input embeddings
    if set(missing) - tied or unexpected:
        raise RuntimeError(f"{folder}: checkpoint does not match the model (missing {missing}, extra {unexpected})")
