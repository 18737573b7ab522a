"""Attention for packed windows on CPUs: causal attention computed document by document.

dapt packs documents into fixed windows and restarts the position ids at each one (`document_position_ids`).
Given such position ids, transformers' `sdpa` path builds a (batch, 1, T, T) block-diagonal mask and runs the
masked kernel over the whole window, which cannot skip the blocks the mask zeroes. Here each document's slice
of the window goes through SDPA's causal kernel instead: the same attention, no mask to build, and work in
proportion to the sum of the squared document lengths rather than T². On 2 CPU cores the document mask cost
~14% of a training step at 1024 tokens with the mask, and ~nothing this way (bench/train_throughput.py).

Used only where it is exact: a model on the CPU whose attention is `sdpa`, called through transformers'
AttentionInterface, packed input (position ids, no padding mask), no sliding window, no logit soft-capping and no
gradient checkpointing (its recomputed forward would run outside `packed_attention`). On GPUs, packing is best
served by `flash_attention_2`, whose variable-length kernels transformers drives from the same position ids.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from transformers import AttentionInterface

NAME = "dapt_packed_sdpa"


def document_spans(position_ids: torch.Tensor) -> list[tuple[int, int]]:
    """(start, end) of each document in one row: a document starts where the position id is 0."""
    starts = torch.nonzero(position_ids == 0).flatten().tolist()
    if not starts or starts[0] != 0:
        starts = [0, *starts]
    return list(zip(starts, [*starts[1:], len(position_ids)], strict=True))


# Under torch.compile this runs eagerly (a graph break around it): its document spans are data, and tracing
# them would recompile the graph for every new pattern of document boundaries.
@torch.compiler.disable
def packed_sdpa_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers' attention-function signature: query (batch, heads, T, dim), key/value (batch, kv_heads, T,
    dim) → (batch, T, heads, dim). `position_ids` (in kwargs) mark where each packed document starts."""
    if key.shape[2] != query.shape[2]:
        raise RuntimeError(f"{NAME} is for training and scoring packed windows, not decoding with a cache")
    position_ids = kwargs.get("position_ids")
    options = {"dropout_p": dropout, "scale": scaling, "is_causal": True, "enable_gqa": key.shape[1] != query.shape[1]}
    spans = [] if position_ids is None else [document_spans(p) for p in position_ids.expand(query.shape[0], -1)]
    if all(len(row_spans) == 1 for row_spans in spans):  # no window holds two documents: one call, as plain sdpa
        return F.scaled_dot_product_attention(query, key, value, **options).transpose(1, 2).contiguous(), None
    rows: list[torch.Tensor | None] = [None] * len(spans)
    whole = [row for row, row_spans in enumerate(spans) if len(row_spans) == 1]
    if whole:  # the one-document windows together, the others document by document
        index = torch.tensor(whole, device=query.device)
        together = F.scaled_dot_product_attention(query[index], key[index], value[index], **options)
        for position, row in enumerate(whole):
            rows[row] = together[position : position + 1]
    for row, row_spans in enumerate(spans):
        if rows[row] is None:
            q, k, v = query[row : row + 1], key[row : row + 1], value[row : row + 1]
            pieces = [
                F.scaled_dot_product_attention(q[:, :, start:end], k[:, :, start:end], v[:, :, start:end], **options)
                for start, end in row_spans
            ]
            rows[row] = torch.cat(pieces, dim=2)
    return torch.cat(rows).transpose(1, 2).contiguous(), None


AttentionInterface.register(NAME, packed_sdpa_forward)


def transformers_model(model: torch.nn.Module) -> Any:
    """The transformers model behind DDP / torch.compile wrappers (peft models pass its attributes through)."""
    while not hasattr(model, "config"):
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if inner is None:
            return None
        model = inner
    return model


def applies(model: torch.nn.Module, input_ids: torch.Tensor, position_ids: torch.Tensor | None) -> bool:
    """Whether document-by-document attention is exact and used for this model and packed batch."""
    inner = transformers_model(model)
    config = getattr(inner, "config", None)
    return (
        position_ids is not None
        and input_ids.device.type == "cpu"
        and config is not None
        # checkpointed blocks re-run their forward during backward, outside `packed_attention`
        and not any(getattr(module, "gradient_checkpointing", False) for module in inner.modules())
        and getattr(config, "_attn_implementation", None) == "sdpa"
        # the model calls its attention through transformers' AttentionInterface (Falcon, say, branches on the
        # name "sdpa" itself and would take this one for eager attention)
        and getattr(inner, "_supports_attention_backend", False)
        and getattr(config, "sliding_window", None) is None
        and getattr(config, "attn_logit_softcapping", None) is None
        and not getattr(config, "is_encoder_decoder", False)
    )


@contextmanager
def packed_attention(
    model: torch.nn.Module, input_ids: torch.Tensor, position_ids: torch.Tensor | None
) -> Iterator[None]:
    """Within: the model's sdpa attention runs document by document (see the module docstring), when it applies.

    Only forward passes need it; backward replays what the forward recorded. The model's own setting is put
    back afterwards, so a saved model's config never names this implementation.
    """
    if not applies(model, input_ids, position_ids):
        yield
        return
    config = transformers_model(model).config
    config._attn_implementation = NAME
    try:
        yield
    finally:
        config._attn_implementation = "sdpa"
