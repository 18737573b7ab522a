"""Context parallelism: the processes of a group split each window's sequence, so a window longer than one device's
memory holds still trains (issue #16 item 3).

Each of the `size` processes of a context group takes one contiguous chunk of every row's tokens (T / size of them)
and runs the whole model on it: its activations, logits and loss are those of its chunk alone. Attention is the
one place where a token needs the others: every layer all-gathers the keys and values of the whole sequence from
the group, and each process attends its chunk's queries to the keys they may see. This is the all-gather design
Llama 3 trained 128k-token windows with, chosen there (and here) because it takes any mask: dapt packs documents
and keeps them apart (`document_position_ids`), and a document's tokens must attend only to earlier tokens of the
same document, across chunk borders. torch's own `context_parallel` (ring attention over SDPA) takes no such mask,
and on CPUs has no kernel to run at all (torch 2.13: `_scaled_dot_product_flash_attention_for_cpu` has no sharding
rule), so it could be tested nowhere this project runs its tests.

Keys and values are small beside the activations (grouped-query models keep a few heads of them: SmolLM2-135M 3 of
9, Llama-3-70B 8 of 64), and the gather runs through plain collectives that gloo and NCCL both have. In backward,
the gradients of the gathered keys and values are summed over the group and each process keeps its chunk's.

The loss needs no collective: each process's loss is the mean over its chunk's tokens, the chunks are the same
size, and the data-parallel gradient average (DDP, FSDP) over every process is then the gradient of the mean over
all tokens, as one process computing the whole window gets it (tested: tests/integration/test_context_parallel.py).

Work is not balanced: under the causal mask the last chunk's queries see every key, the first chunk's only its own.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from transformers import AttentionInterface

from dapt.errors import ConfigError, raised_everywhere
from dapt.model.packed_attention import document_spans, transformers_model

NAME = "dapt_context_parallel_sdpa"

# (query start, query end) in this process's chunk, (key start, key end) in the whole sequence: one document's share
Segment = tuple[int, int, int, int]


class _GatherSequence(torch.autograd.Function):
    """All-gather (batch, heads, T/size, dim) chunks into (batch, heads, T, dim), in rank order; backward sums the
    whole sequence's gradient over the group and returns this chunk's part."""

    @staticmethod
    def forward(ctx: Any, local: torch.Tensor, group: Any, rank: int, size: int) -> torch.Tensor:
        ctx.group, ctx.rank, ctx.length = group, rank, local.shape[2]
        local = local.contiguous()
        parts = [torch.empty_like(local) for _ in range(size)]
        dist.all_gather(parts, local, group=group)
        return torch.cat(parts, dim=2)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:
        grad = grad.contiguous()
        dist.all_reduce(grad, group=ctx.group)
        start = ctx.rank * ctx.length
        return grad[:, :, start : start + ctx.length], None, None, None


def document_segments(position_ids: torch.Tensor | None, length: int, offset: int, chunk: int) -> list[Segment]:
    """The documents that the queries [offset, offset + chunk) of one row belong to, each as (query start, query end)
    within the chunk and (key start, key end) within the row: a query sees its document's keys up to itself.

    position_ids: (T,) positions restarting at 0 where each packed document starts (`document_position_ids`), or
    None: the row is one sequence."""
    spans = [(0, length)] if position_ids is None else document_spans(position_ids)
    segments = []
    for start, end in spans:
        query_start, query_end = max(start, offset), min(end, offset + chunk)
        if query_start < query_end:
            segments.append((query_start - offset, query_end - offset, start, query_end))
    return segments


@dataclass
class ContextParallel:
    """The context groups of a launch: processes rank - rank % size ... + size - 1 split each row's sequence.

    The `world / size` groups are the data-parallel replicas: group g trains rows g, g + world / size, ... of every
    global micro-batch (`share`). Every process must make it at the same point (it creates process groups)."""

    size: int
    rank: int
    world: int
    group: Any = None
    segments: list[list[Segment]] = field(default_factory=list)  # per row of the current micro-batch

    def __post_init__(self) -> None:
        if self.world % self.size:
            raise raised_everywhere(
                ConfigError(
                    f"pretrain.context_parallel: {self.size} processes per sequence do not divide the {self.world} "
                    f"processes launched; launch a multiple of {self.size} or change it"
                )
            )
        for first in range(0, self.world, self.size):  # every process creates every group, in the same order
            group = dist.new_group(list(range(first, first + self.size)))
            if first <= self.rank < first + self.size:
                self.group = group

    @property
    def context_rank(self) -> int:
        return self.rank % self.size

    def check(self, model: torch.nn.Module) -> None:
        """Refuse a model whose attention this cannot replace exactly, naming why."""
        inner = transformers_model(model)
        config = getattr(inner, "config", None)
        reason = None
        if config is None or not getattr(inner, "_supports_attention_backend", False):
            reason = "its attention does not go through transformers' attention interface"
        elif getattr(config, "sliding_window", None) is not None:
            reason = f"it has sliding-window attention (sliding_window: {config.sliding_window})"
        elif getattr(config, "attn_logit_softcapping", None) is not None:
            reason = "it soft-caps its attention logits"
        elif getattr(config, "is_encoder_decoder", False):
            reason = "it is an encoder-decoder"
        if reason:
            described = getattr(config, "model_type", type(model).__name__)
            raise raised_everywhere(
                ConfigError(
                    f"pretrain.context_parallel: this model ({described}) cannot split its sequences over processes: "
                    f"{reason}. Use a model with full causal attention (Llama, Qwen, Mistral without a sliding window, "
                    "the presets), or set pretrain.context_parallel: 1"
                )
            )

    def share(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """This process's share of a global micro-batch (each tensor (rows, T)): its replica's rows, its chunk of
        their tokens; the rows' documents are remembered for attention (`attention`)."""
        replicas, replica = self.world // self.size, self.rank // self.size
        rows, length = batch["input_ids"].shape
        if rows % replicas:
            raise raised_everywhere(
                ConfigError(
                    f"pretrain.micro_batch_size: {rows} rows cannot be split over {replicas} data-parallel replicas "
                    f"({self.world} processes, {self.size} per sequence); make it a multiple of {replicas}"
                )
            )
        if length % self.size:
            raise raised_everywhere(
                ConfigError(
                    f"pretrain.seq_len: {length} tokens cannot be split over {self.size} processes per sequence "
                    f"(pretrain.context_parallel); make it a multiple of {self.size}"
                )
            )
        chunk = length // self.size
        offset = self.context_rank * chunk
        mine = {key: value[replica::replicas] for key, value in batch.items()}
        positions = mine.get("position_ids")
        self.segments = [
            document_segments(None if positions is None else positions[row], length, offset, chunk)
            for row in range(rows // replicas)
        ]
        shared = {key: value[:, offset : offset + chunk] for key, value in mine.items()}
        if positions is None:  # one sequence a row: this chunk's positions are where it sits in the row, not 0...
            shared["position_ids"] = torch.arange(offset, offset + chunk, device=mine["input_ids"].device).expand(
                rows // replicas, chunk
            )
        return shared

    @contextmanager
    def attention(self, model: torch.nn.Module) -> Iterator[None]:
        """Within (forward and backward of a micro-batch from `share`, recomputed forwards of checkpointed layers
        included): the model's attention gathers the group's keys and values. Its own setting is put back after."""
        config = transformers_model(model).config
        saved = config._attn_implementation
        config._attn_implementation = NAME
        global _current
        _current = self
        try:
            yield
        finally:
            config._attn_implementation = saved
            _current = None


_current: ContextParallel | None = None  # the layout the attention function reads, set by `attention`


# Under torch.compile this runs eagerly: the segments are data (dapt refuses compile with context parallelism anyway)
@torch.compiler.disable
def context_parallel_sdpa(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers' attention-function signature: this chunk's query (batch, heads, T/size, dim) and key/value
    (batch, kv_heads, T/size, dim) → (batch, T/size, heads, dim), attending over the whole sequence's keys."""
    layout = _current
    if layout is None:
        raise RuntimeError(f"{NAME} runs only within ContextParallel.attention (training with context parallelism)")
    keys = _GatherSequence.apply(key, layout.group, layout.context_rank, layout.size)
    values = _GatherSequence.apply(value, layout.group, layout.context_rank, layout.size)
    options = {"dropout_p": dropout if module.training else 0.0, "scale": scaling}
    options["enable_gqa"] = key.shape[1] != query.shape[1]
    rows = []
    for row, segments in enumerate(layout.segments):
        pieces = []
        for query_start, query_end, key_start, key_end in segments:
            q = query[row : row + 1, :, query_start:query_end]
            k, v = keys[row : row + 1, :, key_start:key_end], values[row : row + 1, :, key_start:key_end]
            queries, seen = query_end - query_start, key_end - key_start
            if queries == seen:  # the document starts in this chunk: plain causal attention
                pieces.append(F.scaled_dot_product_attention(q, k, v, is_causal=True, **options))
            else:  # it started in an earlier chunk: query i sees keys up to (seen - queries) + i
                mask = torch.ones(queries, seen, dtype=torch.bool, device=q.device).tril(seen - queries)
                pieces.append(F.scaled_dot_product_attention(q, k, v, attn_mask=mask, **options))
        rows.append(torch.cat(pieces, dim=2))
    return torch.cat(rows).transpose(1, 2).contiguous(), None


AttentionInterface.register(NAME, context_parallel_sdpa)
