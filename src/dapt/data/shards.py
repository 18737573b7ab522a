"""Packed token shards on disk: a flat array of token ids plus document boundaries.

A shard is a folder with `tokens.npy` (uint16 when the vocabulary fits, else uint32; read back as a
memory map, so a shard bigger than RAM costs nothing to open) and `doc_offsets.npy` (int64, one more
entry than documents: document i is tokens[offsets[i]:offsets[i+1]], its end-of-text token included).
Training reads fixed windows of `seq_len + 1` tokens across document boundaries (packing: no padding
is wasted); the extra token is the last target.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= np.iinfo(np.uint16).max + 1 else np.dtype(np.uint32)


def write_shard(folder: Path, documents: Sequence[Sequence[int]], *, vocab_size: int) -> dict[str, int]:
    """Write token lists (one per document, end-of-text already appended) as one packed shard."""
    folder.mkdir(parents=True, exist_ok=True)
    lengths = np.fromiter((len(d) for d in documents), dtype=np.int64, count=len(documents))
    offsets = np.zeros(len(documents) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    tokens = np.empty(int(offsets[-1]), dtype=token_dtype(vocab_size))
    for start, document in zip(offsets[:-1], documents, strict=True):
        tokens[start : start + len(document)] = document
    np.save(folder / "tokens.npy", tokens)
    np.save(folder / "doc_offsets.npy", offsets)
    stats = {"tokens": int(offsets[-1]), "documents": len(documents)}
    (folder / "shard.json").write_text(json.dumps({**stats, "dtype": tokens.dtype.name}) + "\n")
    return stats


@dataclass
class TokenShard:
    """A shard opened for reading (memory-mapped)."""

    folder: Path

    def __post_init__(self) -> None:
        self.tokens = np.load(self.folder / "tokens.npy", mmap_mode="r")
        self.doc_offsets = np.load(self.folder / "doc_offsets.npy")

    @property
    def num_tokens(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def num_documents(self) -> int:
        return int(self.doc_offsets.shape[0] - 1)

    def num_windows(self, seq_len: int) -> int:
        """Non-overlapping windows of seq_len inputs (+1 target token each)."""
        return max(0, (self.num_tokens - 1) // seq_len)

    def window(self, index: int, seq_len: int) -> torch.Tensor:
        """Window `index`: tokens[index*seq_len : index*seq_len + seq_len + 1], shape (seq_len + 1,)."""
        start = index * seq_len
        return torch.from_numpy(self.tokens[start : start + seq_len + 1].astype(np.int64))


def eval_windows(shard: TokenShard, seq_len: int, max_tokens: int | None = None) -> list[torch.Tensor]:
    """Every window of a held-out shard (up to max_tokens), in order: the same set at every evaluation."""
    count = shard.num_windows(seq_len)
    if max_tokens is not None:
        count = min(count, max(1, max_tokens // seq_len))
    if count == 0:
        raise ValueError(f"shard {shard.folder} has {shard.num_tokens} tokens: fewer than one window of {seq_len}")
    return [shard.window(i, seq_len) for i in range(count)]


def mixed_windows(
    sources: dict[str, TokenShard], weights: dict[str, float], seq_len: int, seed: int
) -> Iterator[tuple[str, torch.Tensor]]:
    """An endless stream of (source name, window), drawn from the sources with the given weights.

    Each source is read in a seeded random order of its windows, reshuffled after every pass, so the
    stream is deterministic for a seed and every window of a source is seen once per pass.
    """
    names = [name for name in sources if weights.get(name, 0) > 0]
    for name in names:
        if sources[name].num_windows(seq_len) == 0:
            raise ValueError(f"{name}: {sources[name].num_tokens} tokens is less than one window of {seq_len}")
    probabilities = np.array([weights[name] for name in names], dtype=np.float64)
    probabilities /= probabilities.sum()
    rng = np.random.default_rng(seed)
    orders = {name: iter(()) for name in names}
    while True:
        name = names[int(rng.choice(len(names), p=probabilities))]
        index = next(orders[name], None)
        if index is None:
            orders[name] = iter(rng.permutation(sources[name].num_windows(seq_len)).tolist())
            index = next(orders[name])
        yield name, sources[name].window(int(index), seq_len)
