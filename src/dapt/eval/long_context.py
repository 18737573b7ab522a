"""What a context extension bought and what it cost, offline: passkey retrieval, loss by position, short-context loss.

- **Passkey retrieval** (the synthetic test of Mohtashami & Jaggi 2023, as Llama 3 and YaRN report it): a random
  5-digit key stated once, at a given depth, inside filler text of a given length, then asked for; greedy answer,
  correct when the key's digits come back. Generated here, from a seed: no data to download.
- **Loss by position in the document**: held-out documents packed into windows of the new length (documents kept
  apart), each token's loss bucketed by its position in its document. Does the loss keep falling past the old
  window, as a model that uses the longer context should show?
- **Short-context retention**: the loss at the original window on the same held-out text, before and after (the
  Llama 3 criterion: each extension stage was accepted only once short-context quality had recovered).
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

FILLER = (
    "The river runs past the old mill and on towards the sea. The fields on either side are quiet in the evening. "
    "A cart goes by on the road, and then the road is empty again. "
)
DEPTHS = (0.1, 0.5, 0.9)
TRIALS = 2  # per length and depth: a smoke signal on CPUs, not a benchmark; raise it on real hardware
# The Llama 3 criterion, as dapt applies it: short-context quality has recovered when the DAPT base's loss at the
# original window is no more than 1% above the original base's.
RECOVERY_TOLERANCE = 0.01


def passkey_lengths(old_window: int, new_window: int) -> list[int]:
    """The prompt lengths tested: half the old window, the old window, then doubling up to the new one."""
    lengths = [max(64, old_window // 2), old_window]
    while lengths[-1] * 2 < new_window:
        lengths.append(lengths[-1] * 2)
    return sorted(set(lengths + [new_window]))


def passkey_prompt(tokenizer: Any, length: int, depth: float, key: int) -> list[int]:
    """Token ids of about `length` tokens: the task, filler with the key stated at `depth`, the question."""
    task = tokenizer.encode(
        "A pass key is hidden in the text below. Find it and remember it.\n", add_special_tokens=False
    )
    needle = tokenizer.encode(f" The pass key is {key}. Remember it: {key} is the pass key. ", add_special_tokens=False)
    question = tokenizer.encode("\nWhat is the pass key? The pass key is", add_special_tokens=False)
    filler_ids = tokenizer.encode(FILLER, add_special_tokens=False)
    room = max(0, length - len(task) - len(needle) - len(question))
    filler = (filler_ids * (room // max(len(filler_ids), 1) + 1))[:room]
    cut = int(round(depth * len(filler)))
    return task + filler[:cut] + needle + filler[cut:] + question


@torch.no_grad()
def passkey_accuracy(model: torch.nn.Module, tokenizer: Any, lengths: list[int], seed: int = 0) -> dict[str, Any]:
    """Accuracy per prompt length and depth (TRIALS keys each), and over all."""
    rng = random.Random(seed)
    fixed = len(passkey_prompt(tokenizer, 0, 0.5, 10_000))  # the task, key and question alone
    lengths = [length for length in lengths if length >= fixed + 16]  # a prompt needs some filler to hide in
    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    accuracy: list[list[float]] = []
    for length in lengths:
        row = []
        for depth in DEPTHS:
            correct = 0
            for _ in range(TRIALS):
                key = rng.randrange(10_000, 100_000)
                prompt = torch.tensor([passkey_prompt(tokenizer, length, depth, key)], device=device)
                answer = model.generate(
                    prompt,
                    attention_mask=torch.ones_like(prompt),
                    max_new_tokens=len(tokenizer.encode(f" {key}", add_special_tokens=False)) + 2,
                    do_sample=False,
                    pad_token_id=pad_id,
                )
                correct += str(key) in tokenizer.decode(answer[0, prompt.shape[1] :], skip_special_tokens=True)
            row.append(correct / TRIALS)
        accuracy.append(row)
    return {
        "lengths": lengths,
        "depths": list(DEPTHS),
        "trials": TRIALS,
        "accuracy": accuracy,
        "mean": float(np.mean(accuracy)),
    }


def position_edges(old_window: int, new_window: int) -> list[int]:
    """Bucket edges: quarters of the old window, then doublings up to the new one."""
    edges = [0, old_window // 4, old_window // 2, old_window]
    while edges[-1] < new_window:
        edges.append(min(edges[-1] * 2, new_window))
    return edges


def loss_by_position(losses: np.ndarray, positions: np.ndarray, edges: list[int]) -> dict[str, Any]:
    """Mean loss of the tokens whose position in their document falls in each [edge, next edge) bucket."""
    buckets = []
    for low, high in zip(edges[:-1], edges[1:], strict=True):
        chosen = (positions >= low) & (positions < high)
        buckets.append(
            {
                "from": low,
                "to": high,
                "tokens": int(chosen.sum()),
                "loss": float(losses[chosen].mean()) if chosen.any() else None,
            }
        )
    return {"buckets": buckets}


def short_context_recovered(original: dict[str, Any], dapt: dict[str, Any]) -> dict[str, Any]:
    """Per held-out split: the DAPT base's loss at the old window against the original base's, and whether it is
    within RECOVERY_TOLERANCE (relative) of it or better."""
    verdict: dict[str, Any] = {"tolerance": RECOVERY_TOLERANCE}
    for key, before in original.items():
        if not key.endswith("_loss_at_old_window") or before is None or dapt.get(key) is None:
            continue
        name = key.removesuffix("_loss_at_old_window")
        change = dapt[key] / before - 1
        verdict[name] = {
            "original": before,
            "dapt": dapt[key],
            "change": change,
            "recovered": change <= RECOVERY_TOLERANCE,
        }
    return verdict
