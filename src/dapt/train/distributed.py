"""Several processes (`torchrun` / `accelerate launch`): joining the process group, working alone, leaving.

The process group comes from accelerate (gloo on CPUs, NCCL on GPUs), so the training loop's `Accelerator`
finds it already set up. A pipeline runs its distributed stage (pretrain) on every process and the others on
the main process only, `alone()`: there accelerate sees a single process, so a stage that trains (a task
variant) does not wait for processes that are not there. The pretrain stage replicates the model on each process
(DDP) or, with `pretrain.sharding: fsdp`, shards it over them (`dapt.train.sharding`); either way the main
process writes full checkpoints.

Collectives time out after 30 minutes (DAPT_COLLECTIVE_TIMEOUT seconds to change it), so a run whose process
died or hung stops instead of holding every GPU for a day; the waits for the main process (`wait_for_everyone`)
use a separate gloo group that waits up to 24 hours.

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
from typing import Any

import torch
from accelerate import PartialState
from accelerate.state import AcceleratorState

from dapt.errors import DaptError

# A collective that takes longer than this has hung (a process died, a GPU fell off the bus): the others stop
# with an error instead of holding their GPUs. DAPT_COLLECTIVE_TIMEOUT (seconds) sets another.
COLLECTIVE_TIMEOUT = timedelta(minutes=30)
# A non-training stage (curation of a large corpus, say) or the main process writing a checkpoint of a large model
# can keep the others waiting far longer: `wait_for_everyone` waits on a separate gloo group with this timeout.
WAIT_TIMEOUT = timedelta(hours=24)


def collective_timeout() -> timedelta:
    """COLLECTIVE_TIMEOUT, or DAPT_COLLECTIVE_TIMEOUT seconds when set."""
    seconds = os.environ.get("DAPT_COLLECTIVE_TIMEOUT")
    if seconds is None:
        return COLLECTIVE_TIMEOUT
    try:
        return timedelta(seconds=float(seconds))
    except ValueError:
        raise DaptError(f"DAPT_COLLECTIVE_TIMEOUT={seconds!r}: give a number of seconds, e.g. 1800") from None


def launched_world_size() -> int:
    """How many processes the launcher started (1 when not launched by torchrun / accelerate launch)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def join() -> PartialState:
    """Join the launcher's process group (gloo when there is no GPU); its collectives time out after
    `collective_timeout()`."""
    return PartialState(cpu=not torch.cuda.is_available(), timeout=collective_timeout())


_waiting_groups: dict[int, Any] = {}  # the gloo group of long waits, per default process group


def waiting_group() -> Any:
    """A gloo group over every process with WAIT_TIMEOUT, made on first use (every process calls
    `wait_for_everyone` at the same points, so every one makes it at the same point, as it must)."""
    default = torch.distributed.group.WORLD
    if id(default) not in _waiting_groups:
        _waiting_groups.clear()
        _waiting_groups[id(default)] = torch.distributed.new_group(backend="gloo", timeout=WAIT_TIMEOUT)
    return _waiting_groups[id(default)]


def is_main_process() -> bool:
    """True in the process that writes artifacts and prints progress: rank 0, or the only process."""
    return os.environ.get("RANK", "0") == "0"


# what makes accelerate see a launch over several processes, and DeepSpeed (only the pretrain stage trains with it)
LAUNCH_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "ACCELERATE_USE_DEEPSPEED")


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
    """A barrier over all processes; nothing when there is only one, or `alone()`. It waits up to WAIT_TIMEOUT
    (a stage on the main process, a checkpoint being written), not the collectives' timeout.

    When another process fails meanwhile (a bad config found by the main process, say), this one stops with a
    one-line pointer to that error instead of a second, misleading traceback.
    """
    if launched_world_size() > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
        try:
            torch.distributed.barrier(group=waiting_group())
        except RuntimeError as error:
            raise OtherProcessStopped(
                f"process {os.environ.get('RANK', '?')}: another process stopped while this one waited for it "
                "(its error is printed above)"
            ) from error


def leave() -> None:
    """Wait for every process, then destroy the process group (see the module docstring for why)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier(group=waiting_group())
        _waiting_groups.clear()
        torch.distributed.destroy_process_group()  # the default group and every other one
