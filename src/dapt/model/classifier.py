"""Sequence classifiers on a decoder-only base, and the cheap "top blocks" recipe.

The classifier is `AutoModelForSequenceClassification` built from the base folder: the base's decoder
plus a linear `score` head read at the last non-padding token, so the variant exports as a plain HF
folder. The top-blocks recipe trains the last k decoder blocks, the final norm and the head, with the
rest frozen (as in Raschka, "Build a LLM from Scratch", ch. 6). The frozen part's output never changes,
so it is computed once per example and cached: each epoch then costs k blocks instead of all of them.
Needs a Llama-style decoder (`model.layers`, `model.norm`, `model.rotary_emb`): Llama, Mistral, Qwen2,
SmolLM, ... Other architectures use the `full` recipe.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from transformers import AutoModelForSequenceClassification, PreTrainedModel, PreTrainedTokenizerBase

from dapt.errors import ConfigError


def build_classifier(base_folder: Path, labels: list[str], pad_token_id: int) -> PreTrainedModel:
    """The base's decoder with a freshly initialised head for `labels` (initialised from torch's RNG)."""
    return AutoModelForSequenceClassification.from_pretrained(
        base_folder,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
        pad_token_id=pad_token_id,
        dtype=torch.float32,
    )


def encode_right_padded(
    tokenizer: PreTrainedTokenizerBase, texts: list[str], max_length: int, pad_token_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask), both (len(texts), longest) with padding on the right.

    Right padding keeps every real token at the same position it would have alone, so causal attention
    gives the same result for it with or without the padding.
    """
    encoded = tokenizer(texts, truncation=True, max_length=max_length, add_special_tokens=False)["input_ids"]
    encoded = [ids if ids else [pad_token_id] for ids in encoded]
    longest = max(len(ids) for ids in encoded)
    input_ids = torch.full((len(encoded), longest), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(encoded), longest), dtype=torch.long)
    for row, ids in enumerate(encoded):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        attention_mask[row, : len(ids)] = 1
    return input_ids, attention_mask


def _decoder(classifier: PreTrainedModel) -> nn.Module:
    decoder = classifier.base_model
    for part in ("layers", "norm", "rotary_emb"):
        if not hasattr(decoder, part):
            raise ConfigError(
                f"recipe top_blocks needs a Llama-style decoder ({type(classifier).__name__} has no `{part}`); "
                "use recipe: full for this base"
            )
    return decoder


class _StopForward(Exception):
    pass


@torch.no_grad()
def frozen_features(
    classifier: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor, top_blocks: int
) -> torch.Tensor:
    """The input of decoder block (L - top_blocks) for every token: (batch, seq, hidden).

    A forward pre-hook captures that input and stops the forward pass there, so the top blocks and the
    head are not computed at all.
    """
    decoder = _decoder(classifier)
    layers = decoder.layers
    if not 1 <= top_blocks <= len(layers):
        raise ConfigError(f"top_blocks must be between 1 and {len(layers)} (the model's blocks), got {top_blocks}")
    captured: list[torch.Tensor] = []

    def capture(_module: nn.Module, args: tuple, kwargs: dict) -> None:
        captured.append(args[0] if args else kwargs["hidden_states"])
        raise _StopForward

    handle = layers[len(layers) - top_blocks].register_forward_pre_hook(capture, with_kwargs=True)
    try:
        decoder(input_ids=input_ids, attention_mask=attention_mask)
    except _StopForward:
        pass
    finally:
        handle.remove()
    return captured[0]


def cached_frozen_features(
    classifier: PreTrainedModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    top_blocks: int,
    batch_size: int,
    on_batch: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """`frozen_features` of every example, `batch_size` examples at a time, as fp32: (examples, seq, hidden).

    `on_batch(examples, tokens)` after each batch (a progress report: 2k examples took about 3 minutes on 2 cores).
    """
    features = []
    for start in range(0, len(input_ids), batch_size):
        mask = attention_mask[start : start + batch_size]
        features.append(frozen_features(classifier, input_ids[start : start + batch_size], mask, top_blocks).float())
        if on_batch is not None:
            on_batch(len(mask), int(mask.sum()))
    return torch.cat(features)


class TopBlocks(nn.Module):
    """The trainable top of a classifier: the last k decoder blocks, the final norm and the score head.

    Shares its modules with the classifier, so training this trains the classifier that gets exported.
    """

    def __init__(self, classifier: PreTrainedModel, top_blocks: int) -> None:
        super().__init__()
        decoder = _decoder(classifier)
        self.blocks = nn.ModuleList(decoder.layers[len(decoder.layers) - top_blocks :])
        self.norm = decoder.norm
        self.rotary_emb = decoder.rotary_emb
        self.score = classifier.score

    def forward(self, hidden: torch.Tensor, last_index: torch.Tensor) -> torch.Tensor:
        """hidden: (batch, seq, hidden) cached features; last_index: (batch,) last real token → (batch, classes)."""
        positions = torch.arange(hidden.shape[1], device=hidden.device).unsqueeze(0)
        position_embeddings = self.rotary_emb(hidden, positions)
        for block in self.blocks:
            # No mask: causal attention, and right padding never affects real tokens (see encode_right_padded).
            output = block(hidden, attention_mask=None, position_ids=positions, position_embeddings=position_embeddings)
            hidden = output[0] if isinstance(output, tuple) else output
        hidden = self.norm(hidden)
        pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), last_index]
        return self.score(pooled)


def freeze_all_but(classifier: PreTrainedModel, trainable: nn.Module) -> None:
    for parameter in classifier.parameters():
        parameter.requires_grad_(False)
    for parameter in trainable.parameters():
        parameter.requires_grad_(True)
