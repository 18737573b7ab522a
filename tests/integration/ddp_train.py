"""Train a tiny model with dapt's loop, logging to METRICS_FILE: run alone, or under torchrun.

`ddp_train.py METRICS_FILE [none|fsdp] [nan-gradient|nan-loss-rank-1]`: with fsdp, each process also writes
METRICS_FILE.rankN.json with the share of a decoder layer's weight elements it holds after training; with
nan-gradient, the gradients of step 3 are NaN while its loss stays finite; with nan-loss-rank-1, the loss of
step 3 is NaN on the second process only.
"""

import json
import sys
from pathlib import Path

import torch
from torch.distributed.tensor import DTensor

from dapt.config import BaseConfig, PresetConfig
from dapt.model.load import load_original_base
from dapt.train.distributed import leave
from dapt.train.loop import LoopSettings, train_loop
from dapt.train.objectives import causal_lm_loss, lm_batch


def nan_gradient_at_step_3(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """The causal LM loss, plus at the third step a term that is 0 but whose gradient is NaN (sqrt'(0) · |x|'(0))."""
    loss, units = causal_lm_loss(model, batch)
    nan_gradient_at_step_3.calls += 1
    if nan_gradient_at_step_3.calls == 3:
        logits = model(input_ids=batch["input_ids"], use_cache=False).logits
        loss = loss + torch.sqrt((logits - logits.detach()).abs().sum())
    return loss, units


nan_gradient_at_step_3.calls = 0


def nan_loss_on_rank_1_at_step_3(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """The causal LM loss, NaN at the third step on the second process only (a bad row in its share)."""
    loss, units = causal_lm_loss(model, batch)
    nan_loss_on_rank_1_at_step_3.calls += 1
    if nan_loss_on_rank_1_at_step_3.calls == 3 and torch.distributed.get_rank() == 1:
        loss = loss * float("nan")
    return loss, units


nan_loss_on_rank_1_at_step_3.calls = 0


def main(metrics_file: Path, sharding: str, fault: str | None) -> None:
    torch.manual_seed(0)
    model, tokenizer, _ = load_original_base(BaseConfig(preset=PresetConfig(num_layers=2)))
    windows = (torch.arange(64 * 33) * 7 % 50 + 1).view(64, 33)  # a learnable pattern
    step = {"i": 0}

    def next_batch():  # the same global batch of 8 rows in every process; the loop keeps each rank's share
        start = step["i"] * 8 % len(windows)
        step["i"] += 1
        return lm_batch(windows[start : start + 8], tokenizer.eos_token_id)

    settings = LoopSettings(max_steps=8, lr=3e-3, warmup_steps=2, sharding=sharding)
    loss_fn = {"nan-gradient": nan_gradient_at_step_3, "nan-loss-rank-1": nan_loss_on_rank_1_at_step_3}.get(
        fault, causal_lm_loss
    )
    result = train_loop(model, next_batch, loss_fn, settings, metrics_file=metrics_file, description="ddp")
    if sharding == "fsdp":
        weight = model.model.layers[0].mlp.up_proj.weight
        held = weight.to_local().numel() if isinstance(weight, DTensor) else weight.numel()
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        shard_file = metrics_file.with_name(f"{metrics_file.name}.rank{rank}.json")
        shard_file.write_text(json.dumps({"held": held, "of": weight.numel(), "sharding": result.sharding}))
    leave()  # without it, a rank can abort at interpreter exit (SIGABRT), now and then


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else "none", sys.argv[3] if len(sys.argv) > 3 else None)
