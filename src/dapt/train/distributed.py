"""Several processes (`torchrun` / `accelerate launch`): joining the process group, and leaving it cleanly.

The process group comes from accelerate (gloo on CPUs, NCCL on GPUs), so the training loop's `Accelerator`
finds it already set up. A process must leave the group before the interpreter exits: gloo's worker threads
can still hold the last collective's tensors, and if the interpreter is torn down first, releasing them from
that thread aborts the process (SIGABRT, exit code -6 under torchrun), now and then, more often under load.
`leave()` waits for every process, then destroys the group while Python is still fully alive.
"""

from __future__ import annotations

import os
from datetime import timedelta

import torch
from accelerate import PartialState

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
    """True in the process that writes artifacts: rank 0, or the only process."""
    if not torch.distributed.is_available() or not torch.distributed.is_initialized():
        return int(os.environ.get("RANK", "0")) == 0
    return torch.distributed.get_rank() == 0


def wait_for_everyone() -> None:
    """A barrier over all processes; nothing when there is only one."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


def leave() -> None:
    """Wait for every process, then destroy the process group (see the module docstring for why)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
