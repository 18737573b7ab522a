"""Errors meant for people. The CLI prints them without a traceback and exits with code 2."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TypeVar


class DaptError(Exception):
    """A problem the user can fix: bad config, bad input data, a missing file.

    The message says what is wrong, where (key, file, line) and how to fix it.
    """

    exit_code = 2
    label = "error"  # how the CLI introduces the message
    on_every_process = False  # raised by every process of a launch at the same point (they can leave together)


DaptErrorT = TypeVar("DaptErrorT", bound=DaptError)


def raised_everywhere(error: DaptErrorT) -> DaptErrorT:
    """`error`, marked as raised by every process of a launch at the same point (so they leave together)."""
    error.on_every_process = True
    return error


class ConfigError(DaptError):
    """The pipeline YAML or a command-line override is invalid."""


class DataError(DaptError):
    """An input file or record cannot be used as it is."""


class TrainingError(DaptError):
    """Training cannot go on (e.g. the loss became NaN); the last good checkpoint is kept."""


class CheckpointError(TrainingError):
    """A saved checkpoint (or LoRA adapter) cannot be loaded into the model being trained: it is from another
    base, architecture or LoRA setting, or a file of it is missing or damaged. The message names the folder, a
    few of the weights that differ, and how to go on."""

    @classmethod
    def mismatch(
        cls, folder: Path, missing: Sequence[str], unexpected: Sequence[str], reshaped: Sequence[str] = ()
    ) -> CheckpointError:
        """`folder`'s weights do not fit the model: names it lacks, names the model lacks, shapes that differ."""
        differences = [
            f"{len(names)} {what} ({_a_few(names)})"
            for what, names in (("missing", missing), ("unexpected", unexpected), ("of another shape", reshaped))
            if names
        ]
        return cls(
            f"{folder}: the checkpoint does not match the model: {'; '.join(differences)}. It was saved while "
            "training another base, architecture or LoRA setting: point `base:` (and `pretrain.lora`) back at "
            f"what it was trained with, or delete {folder.parent} to start this stage over"
        )

    @classmethod
    def unreadable(cls, path: Path, reason: object) -> CheckpointError:
        """`path`, a file of a checkpoint, is missing or cannot be read (`reason`)."""
        return cls(
            f"{path}: cannot load this checkpoint file ({reason}); it is missing, truncated or damaged (a full "
            f"disk, a copy cut short?). Delete {path.parent.parent} to start this stage over"
        )


def _a_few(names: Sequence[str], shown: int = 3) -> str:
    """The first `shown` names, and how many more: a model has thousands of weights."""
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more
