"""What a running stage sees (`StageContext`), and `say`, the progress line every stage and command prints.

The pipeline (`dapt.pipeline`) builds a context for each stage it runs; the stages import it from here, below
the pipeline, so that no stage imports the module that imports every stage.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from dapt.artifacts import Artifact
from dapt.config import PipelineConfig, Section

S = TypeVar("S", bound=Section)


def say(message: str) -> None:
    """Progress for people: stderr, flushed, so it interleaves correctly with progress bars; once per run, from
    the main process, when launched over several."""
    if os.environ.get("RANK", "0") == "0":
        print(message, file=sys.stderr, flush=True)


@dataclass
class StageContext:
    """What a running stage sees: its output folder, its config (as its cache key holds it, and its typed section),
    its finished inputs."""

    name: str
    out: Path
    config: dict[str, Any]
    inputs: dict[str, Artifact]
    pipeline: PipelineConfig | None  # None: a stage a command runs without a pipeline (`dapt curate PATH...`)
    section: Section | None = None  # the typed section the stage was planned with (`section_of`)

    def section_of(self, kind: type[S]) -> S:
        """The stage's typed config section, e.g. `context.section_of(PretrainConfig)`: the one it was planned with
        (a `dapt plan` pilot's differs from the pipeline's own), whose cache key is in `config`."""
        if not isinstance(self.section, kind):
            raise TypeError(f"stage {self.name!r} was planned with {type(self.section).__name__}, not {kind.__name__}")
        return self.section

    def log(self, message: str) -> None:
        say(f"  {message}")
