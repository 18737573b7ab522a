"""Learning-rate schedules: a multiplier of the peak lr for every optimizer step.

Continued pretraining re-warms from zero: the base was trained to the end of its own schedule, and a
sudden jump to the peak lr destabilises it (Gupta et al. 2023, "Continual Pre-Training of LLMs").
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch.optim.lr_scheduler import LambdaLR

Schedule = Literal["cosine", "wsd"]


def warmup_cosine_factor(step: int, warmup_steps: int, total_steps: int, min_ratio: float) -> float:
    """Linear warmup, then cosine decay down to min_ratio at `total_steps`."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_stable_decay_factor(
    step: int, warmup_steps: int, total_steps: int, min_ratio: float, decay_fraction: float
) -> float:
    """Warmup-stable-decay (Hu et al. 2024, MiniCPM): linear warmup, constant peak, then a linear decay to
    min_ratio over the last `decay_fraction` of the steps. The stable phase can be extended without
    knowing the final length in advance, which suits open-ended continued pretraining."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    decay_start = max(warmup_steps, round(total_steps * (1.0 - decay_fraction)))
    if step < decay_start:
        return 1.0
    progress = min(1.0, (step - decay_start) / max(1, total_steps - decay_start))
    return 1.0 - (1.0 - min_ratio) * progress


def lr_schedule(
    optimizer: torch.optim.Optimizer,
    schedule: Schedule,
    warmup_steps: int,
    total_steps: int,
    min_ratio: float,
    decay_fraction: float = 0.2,
) -> LambdaLR:
    """The scheduler for `schedule`; it scales every parameter group's own lr (e.g. a lower embedding lr)."""
    if schedule == "wsd":
        return LambdaLR(
            optimizer,
            lambda step: warmup_stable_decay_factor(step, warmup_steps, total_steps, min_ratio, decay_fraction),
        )
    return LambdaLR(optimizer, lambda step: warmup_cosine_factor(step, warmup_steps, total_steps, min_ratio))


Shape = Literal["constant", "linear", "cosine", "wsd"]


@dataclass(frozen=True)
class ScheduleSegment:
    """The schedule over one data stage (`pretrain.stages`), as multipliers of the peak lr: `steps` optimizer steps,
    the first `warmup_steps` rising linearly from `start` (where the previous stage ended; 0 in the first) to `peak`,
    then `shape`: held (constant), or decayed to `end` linearly, by a cosine, or linearly over the last
    `decay_fraction` of the steps (wsd). A first stage from 0 to 1 to `min_ratio` is `warmup_cosine_factor` /
    `warmup_stable_decay_factor` step for step."""

    steps: int
    warmup_steps: int
    start: float
    peak: float
    end: float
    shape: Shape
    decay_fraction: float = 0.2

    def factor(self, step: int) -> float:
        """The multiplier at `step` of the segment (0: its first optimizer step)."""
        if step < self.warmup_steps:
            return self.start + (self.peak - self.start) * (step + 1) / self.warmup_steps
        if self.shape == "constant":
            return self.peak
        decay_start = self.warmup_steps
        if self.shape == "wsd":
            decay_start = max(self.warmup_steps, round(self.steps * (1.0 - self.decay_fraction)))
            if step < decay_start:
                return self.peak
        progress = min(1.0, (step - decay_start) / max(1, self.steps - decay_start))
        if self.shape == "cosine":
            return self.end + (self.peak - self.end) * 0.5 * (1.0 + math.cos(math.pi * progress))
        return self.peak - (self.peak - self.end) * progress


class StagedSchedule:
    """Segments in sequence: the multiplier of the peak lr at every optimizer step of a staged run. A function of the
    step alone, so the scheduler's step count (in every checkpoint) resumes it exactly, across stage boundaries too."""

    def __init__(self, segments: Sequence[ScheduleSegment]) -> None:
        self.segments = list(segments)
        self.ends = list(itertools.accumulate(segment.steps for segment in self.segments))

    def factor(self, step: int) -> float:
        index = min(bisect.bisect_right(self.ends, step), len(self.segments) - 1)  # past the end: the last's end
        first = self.ends[index] - self.segments[index].steps
        return self.segments[index].factor(step - first)


def staged_lr_schedule(optimizer: torch.optim.Optimizer, segments: Sequence[ScheduleSegment]) -> LambdaLR:
    """The scheduler of a staged run; like `lr_schedule`, it scales every parameter group's own lr."""
    schedule = StagedSchedule(segments)
    # a plain function (not the object): LambdaLR then keeps nothing of it in its state_dict, only the step count
    return LambdaLR(optimizer, lambda step: schedule.factor(step))
