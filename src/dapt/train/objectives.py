"""Losses, one per kind of stage. Each takes (model, batch) and returns (mean loss, units counted)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def causal_lm_loss(model: torch.nn.Module, windows: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Next-token prediction on packed windows.

    windows: (batch, seq_len + 1) token ids; inputs are [:, :-1], targets [:, 1:].
    """
    inputs, targets = windows[:, :-1], windows[:, 1:]
    logits = model(input_ids=inputs).logits  # (batch, seq_len, vocab)
    loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())
    return loss, targets.numel()


@torch.no_grad()
def mean_lm_loss(model: torch.nn.Module, windows: list[torch.Tensor], batch_size: int = 4) -> float:
    """Mean next-token loss (nats per token) over fixed held-out windows; exp() of it is the perplexity."""
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for start in range(0, len(windows), batch_size):
        batch = torch.stack(windows[start : start + batch_size]).to(device)
        logits = model(input_ids=batch[:, :-1]).logits
        targets = batch[:, 1:]
        total += F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), reduction="sum").item()
        count += targets.numel()
    return total / count


def perplexity(loss: float) -> float:
    return math.exp(min(loss, 50.0))  # exp(50) already means "knows nothing"; avoid overflow to inf


def classification_loss(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int]:
    """logits: (batch, classes); labels: (batch,) class indices."""
    return F.cross_entropy(logits.float(), labels), int(labels.numel())
