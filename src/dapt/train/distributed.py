"""Several processes (`torchrun` / `accelerate launch`): joining the process group, working alone, leaving.

The process group comes from accelerate (gloo on CPUs, NCCL on GPUs), so the training loop's `Accelerator`
finds it already set up. A pipeline runs its distributed stage (pretrain) on every process and the others on
the main process only, `alone()`: there accelerate sees a single process, so a stage that trains (a task
variant) does not wait for processes that are not there. The pretrain stage replicates the model on each process
(DDP) or, with `pretrain.sharding: fsdp`, shards it over them (`dapt.train.sharding`); either way the main
process writes full checkpoints.

A process must leave the group before the interpreter exits: gloo's worker threads can still hold the last
collective's tensors, and if the interpreter is torn down first, releasing them from that thread aborts the
process (SIGABRT, exit code -6 under torchrun), now and then, more often under load. `leave()` waits for
every process, then destroys the group while Python is still fully alive.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

import torch
from accelerate import PartialState
from accelerate.state import AcceleratorState

from dapt.errors import DaptError

# A non-training stage (curation of a large corpus, say) runs on the main process while the others wait in a
# barrier; the default 30-minute collective timeout would end such a wait too early.
WAIT_TIMEOUT = timedelta(hours=24)


def launched_world_size() -> int:
    """How many processes the launcher started (1 when not launched by torchrun / accelerate launch)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def join() -> PartialState:
    """Join the launcher's process group (gloo when there is no GPU) with a long wait timeout."""
    return PartialState(cpu=not torch.cuda.is_available(), timeout=WAIT_TIMEOUT)


def is_main_process() -> bool:
    """True in the process that writes artifacts and prints progress: rank 0, or the only process."""
    return os.environ.get("RANK", "0") == "0"


LAUNCH_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")


@contextmanager
def alone() -> Iterator[None]:
    """Within: this process looks launched alone to accelerate (and to the loop); the process group stays up.

    accelerate keeps one state per process, made from the launcher's variables; both are set aside and put back.
    """
    saved_variables = {name: os.environ.pop(name) for name in LAUNCH_VARIABLES if name in os.environ}
    saved_partial, saved_accelerator = dict(PartialState._shared_state), dict(AcceleratorState._shared_state)
    PartialState._shared_state.clear()
    AcceleratorState._shared_state.clear()
    try:
        yield
    finally:
        os.environ.update(saved_variables)
        for shared, saved in (
            (PartialState._shared_state, saved_partial),
            (AcceleratorState._shared_state, saved_accelerator),
        ):
            shared.clear()
            shared.update(saved)


class OtherProcessStopped(DaptError):
    """A process failed while this one waited for it; its own error says why."""

    exit_code = 1


def wait_for_everyone() -> None:
    """A barrier over all processes; nothing when there is only one, or `alone()`.

    When another process fails meanwhile (a bad config found by the main process, say), this one stops with a
    one-line pointer to that error instead of a second, misleading traceback.
    """
    if launched_world_size() > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
        try:
            torch.distributed.barrier()
        except RuntimeError as error:
            raise OtherProcessStopped(
                f"process {os.environ.get('RANK', '?')}: another process stopped while this one waited for it "
                "(its error is printed above)"
            ) from error


def leave() -> None:
    """Wait for every process, then destroy the process group (see the module docstring for why)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
