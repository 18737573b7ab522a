"""Stopping a run cleanly when asked to: SIGTERM (a preempted spot machine, a cluster scheduler's time limit,
`kill`) or a first Ctrl-C (SIGINT) while a resumable run trains.

The signal only raises a flag; the loop finishes the optimizer step under way (or the last evaluation), writes a
checkpoint, and stops with `TrainingStopped`, so the same command resumes from that very step and loses no work
(a SIGKILL, which cannot be caught, loses what came after the last periodic checkpoint). A second Ctrl-C quits
as soon as Python runs again (not inside a collective or a file write). A signal the process was started to
ignore (SIGINT in a background job of a shell script) stays ignored.

Over several processes the signal may reach only some of them (a scheduler may signal one process, a terminal
all): the processes agree at every step boundary on whether any was signalled, so all checkpoint the same step
together, and none is left waiting in a collective for one that stopped.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from types import FrameType, TracebackType
from typing import Any

import torch

from dapt.errors import TrainingError

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class TrainingStopped(TrainingError):
    """Training stopped on a signal after writing a checkpoint; exit code 128 + the signal's number, as a shell
    reports a process ended by it (130 for Ctrl-C, 143 for SIGTERM)."""

    label = "stopped"
    on_every_process = True  # the processes agree on the stop (`StopRequests.agreed`)

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum


class StopRequests:
    """While entered (in the main thread), SIGTERM and SIGINT set `signum` instead of ending the process;
    the handlers in place before are put back on exit."""

    def __init__(self, description: str) -> None:
        self.description = description
        self.signum: int | None = None
        self.acted_on = False  # the loop stopped on it; otherwise the signal is passed on when leaving
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopRequests:
        if threading.current_thread() is threading.main_thread():  # Python only lets the main thread set handlers
            for signum in SIGNALS:
                if signal.getsignal(signum) is not signal.SIG_IGN:  # ignored (SIGINT of `cmd &` in a script): stays so
                    self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)  # None: not set from Python
        self._previous.clear()
        if kind is None and self.signum is not None and not self.acted_on:
            # it came too late to stop training (during the last evaluation, say): what was asked happens now
            signal.raise_signal(self.signum)

    def agreed(self, world: int, device: torch.device) -> int | None:
        """The signal this or any other process received (the same answer on every process), or None.

        Over several processes every one must call it at the same point: it is a collective.
        """
        if world == 1:
            return self.signum
        flag = torch.tensor([self.signum or 0], device=device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return int(flag.item()) or None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # the second Ctrl-C: now
        if self.signum is None:
            # os.write, not print: the signal may have come in the middle of a print to stderr (the progress bar's)
            os.write(
                sys.stderr.fileno(),
                f"\n  {self.description}: {signal.Signals(signum).name} received: stopping after this step with a "
                "checkpoint (Ctrl-C again to quit at once)\n".encode(),
            )
        self.signum = self.signum or signum
