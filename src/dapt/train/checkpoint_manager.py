"""The training loop's checkpoints: what every process gathers, what the main process writes, and resuming.

The files are the `Checkpointer`'s (`dapt.train.checkpoint`); the backend (`dapt.train.backends`) gathers the
weights and optimizer state for it and loads the optimizer state back. The loop's own state (its result so far and
counters) comes from the loop; the data stream's position is added here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dapt.train.backends import Backend
from dapt.train.checkpoint import Checkpointer
from dapt.train.distributed import wait_for_everyone


class CheckpointManager:
    """Saves and resumes one training run through `checkpointer`: its `backend`, LR `scheduler` and `data` (a
    batch source; with `state_dict`/`load_state_dict`, its position resumes too)."""

    def __init__(self, checkpointer: Checkpointer, backend: Backend, scheduler: Any, data: Any) -> None:
        self.checkpointer, self.backend, self.scheduler, self.data = checkpointer, backend, scheduler, data
        self.saved_step = -1  # the newest checkpoint this run wrote

    def due(self, step: int) -> bool:
        """Whether `step` is one of the periodic checkpoints (evaluations always checkpoint)."""
        return bool(self.checkpointer.every and step % self.checkpointer.every == 0)

    def folder(self, step: int) -> Path:
        return self.checkpointer.step_folder(step)

    def latest(self) -> Path | None:
        """The newest checkpoint to resume from, or None."""
        return self.checkpointer.latest_resumable()

    def save(self, step: int, loop_state: dict[str, Any], best_step: int | None) -> None:
        """Checkpoint `step` with the loop's state. Every process must call it: gathering the state of a sharded or
        partitioned run is a collective; the main process writes."""
        loop_state = {**loop_state, "data": self.data.state_dict() if hasattr(self.data, "state_dict") else None}
        weights, optimizer_state = self.backend.gather_for_checkpoint()
        wait_for_everyone()
        if self.backend.main_process:
            scaler = self.backend.scaler  # fp16 without DeepSpeed: its scale resumes too
            self.checkpointer.save(step, optimizer_state, self.scheduler, loop_state, best_step, weights, scaler)
        wait_for_everyone()  # a long wait for a large model: on the waiting group, not a collective's timeout
        self.saved_step = step

    def restore(self, path: Path) -> dict[str, Any]:
        """Load the weights, optimizer, scheduler, RNG and data position of checkpoint `path`; return the loop state
        saved with them."""
        loop_state = self.checkpointer.restore(
            path,
            self.backend.load_optimizer_state,
            self.scheduler,
            reads_optimizer_state=self.backend.reads_optimizer_state,
            scaler=self.backend.scaler,  # fp16 without DeepSpeed (DeepSpeed's is in its optimizer state)
        )
        if hasattr(self.data, "load_state_dict"):
            self.data.load_state_dict(loop_state["data"])
        return loop_state
