"""Sliding-window attention for packed windows on CPUs: block-sparse, document by document, exact.

A sliding-window model (Mistral, or any base trained with `pretrain.attention_window`) lets each token attend to the
last W tokens of its document, itself included: query q sees key k when k <= q and k > q - W (transformers'
`sliding_window_overlay` in masking_utils, and flash-attention's window_size (W - 1, W - 1): W keys, not W + 1).
transformers' sdpa path builds that pattern, intersected with dapt's document mask, as a dense (batch, 1, T, T)
boolean mask and runs the masked kernel over all T² pairs, though a row holds at most W true entries: at 8k tokens and
a 512-token window, 94% of the work is masked away.

Here each document of each row is cut into query blocks (`block_size`: about W tokens). A block [q0, q1) needs
only the keys [max(document start, q0 - W + 1), q1), so one SDPA call on a (block, ≤ block + W - 1) tile with a small
boolean mask (causal and window) computes it: O(T·W) work and memory rather than O(T²). Blocks of the same shape
and offset (every interior block of every long document in the batch) go through one batched call; a document no
longer than the window is plain causal attention, as `packed_attention` computes it. The keys and values of each
block are gathered into their own tensor (about (block + W) / block copies of them: small beside the queries under
grouped-query attention), and autograd carries the gradients back through the gathers.

Used where it is exact: the same conditions as `packed_attention` (a CPU, `sdpa` called through transformers'
AttentionInterface, no soft-capping, no gradient checkpointing), but for models with a sliding window, of a family
whose attention passes each layer's window to the attention function (LOCAL_ATTENTION_FAMILIES: Qwen2's full-
attention layers pass None and get whole documents). Without document position ids a row is one document.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from transformers import AttentionInterface, PretrainedConfig

from dapt.errors import ConfigError
from dapt.model.packed_attention import document_spans, transformers_model

NAME = "dapt_local_sdpa"


# Queries per block: about the window, within [256, 1024]. A block computes block × (block + W - 1) scores for
# block × W useful ones, so smaller blocks waste less, but CPU SDPA runs small tiles at a lower rate, and more blocks
# mean more gathering. Measured on 2 (loaded) CPU cores, one SmolLM2-shaped layer (9 query, 3 key-value heads of 64),
# 8k tokens, bf16, forward and backward, blocks of 64-1024: fastest at 256 for W = 128 (0.85 s), 512 for W = 512
# (1.8 s; the dense mask 7.1 s) and 1024 for W = 2048 (2.8 s).
def block_size(window: int) -> int:
    return min(max(window, 256), 1024)


# Model types whose attention layers pass their own window (`sliding_window=`, None for a full-attention layer) to the
# attention function and take `sliding_window` in the config as transformers' mask does (checked in transformers
# 5.25). Qwen2-MoE, for one, does not pass it, so its flash path ignores the window; it keeps transformers' mask here.
LOCAL_ATTENTION_FAMILIES = ("mistral", "mixtral", "qwen2", "qwen3")


def window_blocks(spans: list[tuple[int, int]], window: int, block: int) -> list[tuple[int, int, int]]:
    """(query start, query end, key start) of every block of `block` queries in one row: the block's queries see the
    keys from key start to query end. spans: each document's (start, end) in the row (`document_spans`)."""
    blocks = []
    for start, end in spans:
        if end - start <= window:  # every query sees its whole document so far: one causal block
            blocks.append((start, end, start))
            continue
        for query_start in range(start, end, block):
            query_end = min(query_start + block, end)
            blocks.append((query_start, query_end, max(start, query_start - window + 1)))
    return blocks


def block_mask(queries: int, keys: int, offset: int, window: int, device: torch.device) -> torch.Tensor | None:
    """(queries, keys) boolean mask of a block whose first query sits `offset` keys after its first key: query i sees
    key j when j <= i + offset (causal) and j > i + offset - window (the window). None: plain causal attention."""
    if offset == 0 and queries == keys and queries <= window:
        return None
    ones = torch.ones(queries, keys, dtype=torch.bool, device=device)
    return ones.tril(offset) & ~ones.tril(offset - window)


# Under torch.compile this runs eagerly (a graph break around it): its blocks come from the data's document spans.
@torch.compiler.disable
def local_sdpa_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers' attention-function signature: query (batch, heads, T, dim), key/value (batch, kv_heads, T, dim)
    → (batch, T, heads, dim). `sliding_window` (the layer's window, None for full attention) and `position_ids`
    (where each packed document starts) come in kwargs."""
    batch, heads, length, dim = query.shape
    if key.shape[2] != length:
        raise RuntimeError(f"{NAME} is for training and scoring packed windows, not decoding with a cache")
    if "sliding_window" not in kwargs:
        raise RuntimeError(f"{NAME}: the model's attention did not pass its window; it needs transformers' mask")
    window = kwargs["sliding_window"] or length  # None: a full-attention layer (Qwen2's lower layers)
    position_ids = kwargs.get("position_ids")
    rows = (
        [[(0, length)]] * batch if position_ids is None else [document_spans(p) for p in position_ids.expand(batch, -1)]
    )

    # blocks of equal shape and offset, over every row, share one mask and one batched call
    groups: dict[tuple[int, int, int], list[tuple[int, int, int]]] = {}
    for row, spans in enumerate(rows):
        for query_start, query_end, key_start in window_blocks(spans, window, block_size(window)):
            shape = (query_end - query_start, query_end - key_start, query_start - key_start)
            groups.setdefault(shape, []).append((row, query_start, key_start))

    # token-major views, (batch × T, heads, dim): a group's blocks are gathered with one index each (whose backward is
    # one scatter-add; slicing block by block would write a whole-size zero gradient per block)
    flat_query = query.transpose(1, 2).reshape(batch * length, heads, dim)
    flat_key = key.transpose(1, 2).reshape(batch * length, key.shape[1], dim)
    flat_value = value.transpose(1, 2).reshape(batch * length, key.shape[1], dim)
    options = {"dropout_p": dropout, "scale": scaling, "enable_gqa": key.shape[1] != heads}
    outputs, order = [], []
    for (queries, keys, offset), members in groups.items():
        starts = torch.tensor([[row * length + start, row * length + first_key] for row, start, first_key in members])
        query_index = starts[:, :1] + torch.arange(queries)  # (blocks, queries)
        key_index = (starts[:, 1:] + torch.arange(keys)).to(query.device)  # (blocks, keys)
        q = flat_query[query_index.to(query.device)].transpose(1, 2)  # (blocks, heads, queries, dim)
        k, v = flat_key[key_index].transpose(1, 2), flat_value[key_index].transpose(1, 2)
        mask = block_mask(queries, keys, offset, window, query.device)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None, **options)
        outputs.append(out.transpose(1, 2).reshape(-1, heads, dim))  # (blocks × queries, heads, dim)
        order.append(query_index.flatten())
    # the blocks' outputs in (row, position) order: the inverse of the order they were computed in
    computed = torch.cat(order)
    inverse = torch.empty_like(computed)
    inverse[computed] = torch.arange(len(computed))
    gathered = torch.cat(outputs)[inverse.to(query.device)]
    return gathered.view(batch, length, heads, dim), None


AttentionInterface.register(NAME, local_sdpa_forward)


def applies(model: torch.nn.Module, input_ids: torch.Tensor) -> bool:
    """Whether block-sparse sliding-window attention is exact and used for this model: packed_attention's conditions,
    but a sliding window set in a family that passes it to its attention function."""
    inner = transformers_model(model)
    config = getattr(inner, "config", None)
    return (
        input_ids.device.type == "cpu"
        and config is not None
        and getattr(config, "sliding_window", None) is not None
        and getattr(config, "model_type", None) in LOCAL_ATTENTION_FAMILIES
        # checkpointed blocks re-run their forward during backward, outside `local_attention`
        and not any(getattr(module, "gradient_checkpointing", False) for module in inner.modules())
        and getattr(config, "_attn_implementation", None) == "sdpa"
        and getattr(inner, "_supports_attention_backend", False)
        and getattr(config, "attn_logit_softcapping", None) is None
        and not getattr(config, "is_encoder_decoder", False)
    )


@contextmanager
def local_attention(model: torch.nn.Module, input_ids: torch.Tensor) -> Iterator[None]:
    """Within: a sliding-window model's sdpa attention runs block by block (see the module docstring), when it applies.

    Only forward passes need it; backward replays what the forward recorded. The model's own setting is put back
    afterwards, so a saved model's config never names this implementation."""
    if not applies(model, input_ids):
        yield
        return
    config = transformers_model(model).config
    config._attn_implementation = NAME
    try:
        yield
    finally:
        config._attn_implementation = "sdpa"


def set_attention_window(config: PretrainedConfig, window: int) -> None:
    """Give every attention layer of `config`'s model a sliding window of `window` tokens, before the model is built
    from it (Qwen2's layers read their window when built). A ConfigError names pretrain.attention_window for a family
    without sliding-window attention in transformers."""
    family = getattr(config, "model_type", type(config).__name__)
    if family in ("mistral", "mixtral"):
        config.sliding_window = window
    elif family in ("qwen2", "qwen3"):
        # Qwen2/Qwen3 window only with use_sliding_window on, and then only the layers from max_window_layers on
        # (`layer_types`, fixed when the config is built, saved with it): every layer is windowed here, as in Mistral
        config.use_sliding_window = True
        config.sliding_window = window
        config.max_window_layers = 0
        config.layer_types = ["sliding_attention"] * config.num_hidden_layers
    else:
        raise ConfigError(
            f"pretrain.attention_window: this base ({family}) has no sliding-window attention in transformers, so "
            "its exported model could not keep the window. The families that have it: Mistral, Mixtral, Qwen2, "
            "Qwen3 (a from-scratch preset with base.preset.sliding_window set is a Mistral; set it to the preset's "
            "max_position_embeddings for an original base with full attention). Use such a base, or remove "
            "pretrain.attention_window."
        )


def attention_window_layers(config: PretrainedConfig) -> str:
    """Which layers of a model built from `config` attend through its sliding window, in words, for the log."""
    layers = config.num_hidden_layers
    types = getattr(config, "layer_types", None) or ["sliding_attention"] * layers
    windowed = sum(kind == "sliding_attention" for kind in types) if config.sliding_window is not None else 0
    return f"{windowed} of its {layers} layers attend to the last {config.sliding_window} tokens of their document"
