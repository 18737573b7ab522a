"""Train a tiny model with dapt's loop, logging to METRICS_FILE: run alone, or under torchrun."""

import sys
from pathlib import Path

import torch

from dapt.config import BaseConfig, PresetConfig
from dapt.model.load import load_original_base
from dapt.train.distributed import leave
from dapt.train.loop import LoopSettings, train_loop
from dapt.train.objectives import causal_lm_loss, lm_batch


def main(metrics_file: Path) -> None:
    torch.manual_seed(0)
    model, tokenizer, _ = load_original_base(BaseConfig(preset=PresetConfig(num_layers=2)))
    windows = (torch.arange(64 * 33) * 7 % 50 + 1).view(64, 33)  # a learnable pattern
    step = {"i": 0}

    def next_batch():  # the same global batch of 8 rows in every process; the loop keeps each rank's share
        start = step["i"] * 8 % len(windows)
        step["i"] += 1
        return lm_batch(windows[start : start + 8], tokenizer.eos_token_id)

    settings = LoopSettings(max_steps=8, lr=3e-3, warmup_steps=2)
    train_loop(model, next_batch, causal_lm_loss, settings, metrics_file=metrics_file, description="ddp")
    leave()  # without it, a rank can abort at interpreter exit (SIGABRT), now and then


if __name__ == "__main__":
    main(Path(sys.argv[1]))
