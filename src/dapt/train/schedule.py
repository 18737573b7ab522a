"""Learning-rate schedules: a multiplier of the peak lr for every optimizer step.

Continued pretraining re-warms from zero: the base was trained to the end of its own schedule, and a
sudden jump to the peak lr destabilises it (Gupta et al. 2023, "Continual Pre-Training of LLMs").
"""

from __future__ import annotations

import math
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
