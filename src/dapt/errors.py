"""Errors meant for people. The CLI prints them without a traceback and exits with code 2."""

from __future__ import annotations

import errno
import os
import re
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
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


class DiskFullError(DaptError):
    """The disk filled up (or failed) while a stage wrote its files. What was finished is kept; the message says
    where, how much is free, and that the same command resumes once there is room."""


# What a full disk looks like, in the words of each writer: the OS (errno 28, or a quota), Arrow and safetensors
# ("No space left on device", "os error 28"), numpy ("N requested and M written"), and torch's zip writer, which
# only sees the short write ("[enforce fail at inline_container.cc:...] unexpected pos ...").
NO_SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
NO_SPACE_TEXT = re.compile(
    r"no space left on device|os error 28|errno 28|disk quota exceeded|inline_container\.cc.*(unexpected pos|"
    r"failed writing)|\d+ requested and \d+ written",
    re.IGNORECASE,
)
IO_ERRNOS = (errno.EIO, errno.EROFS)  # the disk failed or was remounted read-only under a running stage


def _causes(error: BaseException) -> Iterator[BaseException]:
    """The error and those it was raised from or during, nearest first."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def disk_problem(error: BaseException) -> str | None:
    """'no space left' or 'an I/O error' when `error` (or one it came from) is a full or failing disk, else None."""
    for cause in _causes(error):
        if isinstance(cause, DaptError):
            return None  # already explained
        number = getattr(cause, "errno", None)
        if number in NO_SPACE_ERRNOS or NO_SPACE_TEXT.search(str(cause)):
            return "no space left"
        if number in IO_ERRNOS:
            return f"an I/O error ({os.strerror(number)})"
    return None


def mount_of(path: Path) -> tuple[str, Path]:
    """(device, mount point) of the filesystem holding `path`, e.g. ('/dev/nvme0n1p2', Path('/data'))."""
    place = Path(os.path.abspath(path))
    while not place.exists():
        place = place.parent
    mount = place
    while not os.path.ismount(mount):
        mount = mount.parent
    device = str(mount)
    try:
        for line in Path("/proc/mounts").read_text().splitlines():
            fields = line.split()
            if len(fields) > 1 and fields[1] == str(mount):
                device = fields[0]  # the last one mounted there wins, as the kernel's view does
    except OSError:
        pass  # not Linux: the mount point names it
    return device, mount


def free_megabytes(path: Path) -> float:
    place = Path(os.path.abspath(path))
    while not place.exists():
        place = place.parent
    return shutil.disk_usage(place).free / 1e6


def disk_full(error: BaseException, folder: Path, then: str, needed_mb: float | None = None) -> DiskFullError | None:
    """The DiskFullError to raise for `error` met while writing into `folder`, or None when it is something else.

    `then` says what the same command does afterwards (e.g. 'resume from step-000060'); `needed_mb`, when known,
    what the stage needs in all.
    """
    problem = disk_problem(error)
    if problem is None:
        return None
    written = next((c.filename for c in _causes(error) if isinstance(c, OSError) and c.filename), None)
    device, mount = mount_of(folder)
    needed = f"needed ~{needed_mb:,.0f} MB, " if needed_mb else ""
    return DiskFullError(
        f"{problem} on {device} (mounted at {mount}) while writing {written or folder} ({needed}free "
        f"{free_megabytes(folder):,.1f} MB); finished stages are kept. Free space and run the same command again "
        f"to {then}"
    )


@contextmanager
def disk_full_reported(folder: Path, then: str, needed_mb: float | None = None) -> Iterator[None]:
    """Within: a full (or failing) disk, in whatever words the writer used, becomes a DiskFullError (see
    `disk_full`); any other error passes unchanged."""
    try:
        yield
    except Exception as error:
        explained = disk_full(error, folder, then, needed_mb)
        if explained is None:
            raise
        raise explained from error
