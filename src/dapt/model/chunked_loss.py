"""Next-token loss without a window's full logits: the LM head and the cross-entropy, a chunk of positions at a time.

A causal LM's last step turns each position's hidden state (hidden_size numbers) into logits over the vocabulary
(vocab_size numbers) and the loss takes a softmax over them. At long windows those logits are the largest tensor of
the step: 8,192 tokens × 49,152 vocabulary entries is 1.6 GB in fp32, held for backward with its gradient beside it,
while the hidden states they come from are 19 MB (SmolLM2's 576 numbers per position). Here the model's LM head is
swapped, for the duration of one forward pass, for a function that takes the hidden states and returns each
position's loss: it computes the logits of `chunk` positions, their cross-entropy, and drops the logits; in backward
each chunk's logits are recomputed (torch.utils.checkpoint), so only one chunk's logits exist at any time. The
price is the LM head's forward once more in backward (measured in bench/long_context.py).

The swap happens inside the model's own forward (its `lm_head` is called by the model as usual), so wrappers that
hook the whole model (DDP, FSDP2, DeepSpeed) see an ordinary forward. It is exact only for an LM head that is a plain
linear layer whose output is the logits: models that scale or soft-cap the logits after the head (Gemma 2's
`final_logit_softcapping`, Cohere's `logit_scale`, Granite's `logits_scaling`) are refused with an error.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from dapt.errors import ConfigError
from dapt.model.packed_attention import transformers_model

# config attributes of models that transform the logits after the LM head, with the value that means "no change"
_LOGIT_TRANSFORMS = {"final_logit_softcapping": None, "logit_scale": 1.0, "logits_scaling": 1.0}


def chunk_positions(vocab_size: int, max_logits_bytes: int) -> int:
    """How many positions' fp32 logits fit in `max_logits_bytes` (at least one)."""
    return max(1, max_logits_bytes // (4 * vocab_size))


def logits_bytes(positions: int, vocab_size: int) -> int:
    """The size of `positions` positions' logits in fp32, as the loss computes them."""
    return 4 * positions * vocab_size


def logit_transform(model: torch.nn.Module) -> str | None:
    """The setting by which `model` changes its logits after the LM head (e.g. "final_logit_softcapping = 30.0"),
    or None when its logits are the head's output."""
    config = getattr(transformers_model(model), "config", None)
    for name, neutral in _LOGIT_TRANSFORMS.items():
        value = getattr(config, name, neutral)
        if value is not None and value != neutral:
            return f"{name} = {value}"
    return None


def _check_plain_head(model: torch.nn.Module, head: torch.nn.Module | None) -> torch.nn.Linear:
    transform = logit_transform(model)
    if transform is not None:
        model_type = getattr(getattr(transformers_model(model), "config", None), "model_type", "?")
        raise ConfigError(
            f"pretrain.max_logits_mb: this model ({model_type}) changes its logits after the LM head ({transform}), "
            "so its loss cannot be computed a chunk of positions at a time here. Set pretrain.max_logits_mb: 0 to "
            "compute the whole window's logits at once."
        )
    if not isinstance(head, torch.nn.Linear):
        raise ConfigError(
            f"pretrain.max_logits_mb: this model's output layer is {type(head).__name__}, not a plain linear layer "
            "(a LoRA adapter on the LM head?), so its loss cannot be computed a chunk of positions at a time. "
            "Set pretrain.max_logits_mb: 0, or leave the LM head out of lora.target_modules."
        )
    return head


def _chunk_losses(
    hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, targets: torch.Tensor
) -> torch.Tensor:
    logits = F.linear(hidden, weight, bias).float()
    return F.cross_entropy(logits, targets, ignore_index=-100, reduction="none")


def token_cross_entropy(hidden: torch.Tensor, head: torch.nn.Linear, targets: torch.Tensor, chunk: int) -> torch.Tensor:
    """Each position's next-token loss (0 where the target is -100), same shape as `targets`, computing the logits
    of `chunk` positions at a time. hidden: (..., hidden_size); targets: (...)."""
    flat_hidden, flat_targets = hidden.reshape(-1, hidden.shape[-1]), targets.reshape(-1)
    pieces = []
    for start in range(0, flat_targets.numel(), chunk):
        args = (flat_hidden[start : start + chunk], head.weight, head.bias, flat_targets[start : start + chunk])
        if torch.is_grad_enabled():
            pieces.append(checkpoint(_chunk_losses, *args, use_reentrant=False))
        else:
            pieces.append(_chunk_losses(*args))
    return torch.cat(pieces).view(targets.shape)


@contextmanager
def head_returns_losses(model: torch.nn.Module, targets: torch.Tensor, chunk: int) -> Iterator[None]:
    """While inside, `model(...).logits` holds each position's next-token loss against `targets` (batch, seq)
    instead of the logits (batch, seq, vocab), computed `chunk` positions at a time (`token_cross_entropy`)."""
    inner = transformers_model(model)
    head = _check_plain_head(model, inner.get_output_embeddings() if inner is not None else None)
    had_own_forward = "forward" in head.__dict__
    own_forward = head.__dict__.get("forward")
    head.forward = lambda hidden: token_cross_entropy(hidden, head, targets.to(hidden.device), chunk)
    try:
        yield
    finally:
        if had_own_forward:
            head.forward = own_forward
        else:
            del head.forward
