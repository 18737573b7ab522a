"""Packed token shards on disk: a flat array of token ids plus document boundaries.

A shard is a folder with `tokens.npy` (uint16 when the vocabulary fits, else uint32; read back as a
memory map, so a shard bigger than RAM costs nothing to open) and `doc_offsets.npy` (int64, one more
entry than documents: document i is tokens[offsets[i]:offsets[i+1]], its end-of-text token included).
Training reads fixed windows of `seq_len + 1` tokens across document boundaries (packing: no padding
is wasted); the extra token is the last target.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dapt.errors import DataError


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= np.iinfo(np.uint16).max + 1 else np.dtype(np.uint32)


def write_shard(
    folder: Path,
    documents: Sequence[Sequence[int]],
    *,
    vocab_size: int,
    document_sources: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Write token lists (one per document, end-of-text already appended) as one packed shard.

    With `document_sources` (one name per document, each source's documents consecutive), shard.json
    also records each source's run of documents, so a reader can open one source alone
    (`TokenShard(folder, source=name)`) and a mixture can weight the sources of one shard separately.
    """
    folder.mkdir(parents=True, exist_ok=True)
    source_runs: dict[str, list[int]] = {}  # name -> [first document, end document)
    for position, name in enumerate(document_sources or ()):
        run = source_runs.setdefault(name, [position, position])
        if run[1] != position:
            raise DataError(f"write_shard: the documents of source {name!r} are not consecutive")
        run[1] = position + 1
    lengths = np.fromiter((len(d) for d in documents), dtype=np.int64, count=len(documents))
    offsets = np.zeros(len(documents) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    tokens = np.empty(int(offsets[-1]), dtype=token_dtype(vocab_size))
    for start, document in zip(offsets[:-1], documents, strict=True):
        tokens[start : start + len(document)] = document
    np.save(folder / "tokens.npy", tokens)
    np.save(folder / "doc_offsets.npy", offsets)
    stats: dict[str, Any] = {"tokens": int(offsets[-1]), "documents": len(documents)}
    if source_runs:
        stats["sources"] = {
            name: {"documents": end - first, "tokens": int(offsets[end] - offsets[first]), "first_document": first}
            for name, (first, end) in source_runs.items()
        }
    (folder / "shard.json").write_text(json.dumps({**stats, "dtype": tokens.dtype.name}) + "\n")
    return stats


def shard_sources(folder: Path) -> dict[str, dict[str, int]]:
    """The sources recorded in a shard (name -> documents, tokens, first_document); {} if none were."""
    return json.loads((folder / "shard.json").read_text()).get("sources", {})


@dataclass
class TokenShard:
    """A shard opened for reading (memory-mapped); with `source`, only that source's documents in it."""

    folder: Path
    source: str | None = None

    def __post_init__(self) -> None:
        self.tokens = np.load(self.folder / "tokens.npy", mmap_mode="r")
        self.doc_offsets = np.load(self.folder / "doc_offsets.npy")
        if self.source is not None:
            recorded = shard_sources(self.folder)
            if self.source not in recorded:
                raise DataError(f"{self.folder} has no documents of source {self.source!r}; it has {sorted(recorded)}")
            first = recorded[self.source]["first_document"]
            end = first + recorded[self.source]["documents"]
            start_token = int(self.doc_offsets[first])
            # a view of the memory map (no copy): windows never cross into another source's documents
            self.tokens = self.tokens[start_token : int(self.doc_offsets[end])]
            self.doc_offsets = self.doc_offsets[first : end + 1] - start_token

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


class ShardSet:
    """The shards of one split (or one source inside it) read as one: the same interface as a TokenShard.

    Windows are counted shard by shard and never cross a shard's end (at most one window's tokens per shard
    go unread, ~1e-6 of a 100M-token shard). Opening costs one small read per shard, whatever their size: the
    tokens stay memory-mapped.
    """

    def __init__(self, folder: Path, shards: list[TokenShard]) -> None:
        self.folder, self.shards = folder, shards
        self._windows: dict[int, np.ndarray] = {}  # seq_len -> cumulative windows at the end of each shard

    @property
    def num_tokens(self) -> int:
        return sum(shard.num_tokens for shard in self.shards)

    @property
    def num_documents(self) -> int:
        return sum(shard.num_documents for shard in self.shards)

    def _cumulative(self, seq_len: int) -> np.ndarray:
        if seq_len not in self._windows:
            self._windows[seq_len] = np.cumsum([shard.num_windows(seq_len) for shard in self.shards], dtype=np.int64)
        return self._windows[seq_len]

    def num_windows(self, seq_len: int) -> int:
        cumulative = self._cumulative(seq_len)
        return int(cumulative[-1]) if len(cumulative) else 0

    def window(self, index: int, seq_len: int) -> torch.Tensor:
        cumulative = self._cumulative(seq_len)
        shard = int(np.searchsorted(cumulative, index, side="right"))
        before = int(cumulative[shard - 1]) if shard else 0
        return self.shards[shard].window(index - before, seq_len)


def split_shard_folders(folder: Path) -> list[Path]:
    """The shard folders of a split folder in order: itself (one shard, as older dapt wrote) or its numbered
    sub-folders (`00000`, `00001`, ...; an unfinished `.tmp` one is never listed)."""
    if (folder / "tokens.npy").is_file():
        return [folder]
    return sorted(p for p in folder.iterdir() if p.is_dir() and (p / "shard.json").is_file())


def open_split(folder: Path, source: str | None = None) -> ShardSet:
    """A split of a tokenized corpus, memory-mapped; with `source`, only that source's documents in it."""
    folders = split_shard_folders(folder)
    if source is None:
        return ShardSet(folder, [TokenShard(f) for f in folders])
    chosen = [TokenShard(f, source=source) for f in folders if source in shard_sources(f)]
    if not chosen:
        recorded = sorted({name for f in folders for name in shard_sources(f)})
        raise DataError(f"{folder} has no documents of source {source!r}; it has {recorded}")
    return ShardSet(folder, chosen)


def split_sources(folder: Path) -> set[str]:
    """The sources recorded in a split's shards (empty when none were)."""
    return {name for f in split_shard_folders(folder) for name in shard_sources(f)}


def eval_windows(shard: TokenShard | ShardSet, seq_len: int, max_tokens: int | None = None) -> list[torch.Tensor]:
    """Every window of a held-out split (up to max_tokens, at least one), in order: the same set at every
    evaluation; each (seq_len + 1,)."""
    count = shard.num_windows(seq_len)
    if count == 0:
        raise DataError(
            f"{shard.folder} has {shard.num_tokens} tokens: fewer than one window of {seq_len} (pretrain.seq_len); "
            "raise tokenize.eval_tokens or lower pretrain.seq_len"
        )
    if max_tokens is not None:
        count = min(count, max(1, max_tokens // seq_len))
    return [shard.window(index, seq_len) for index in range(count)]


def target_documents(shard: TokenShard | ShardSet, count: int, seq_len: int) -> np.ndarray:
    """The document (numbered over the whole split, in order) of every target of the split's first `count` windows:
    (count, seq_len) int64. Window i of a shard predicts its tokens i*seq_len + 1 ... i*seq_len + seq_len."""
    shards = shard.shards if isinstance(shard, ShardSet) else [shard]
    documents = np.empty((count, seq_len), dtype=np.int64)
    filled, first_document = 0, 0
    for part in shards:
        windows = min(part.num_windows(seq_len), count - filled)
        positions = np.arange(windows)[:, None] * seq_len + np.arange(1, seq_len + 1)[None, :]
        documents[filled : filled + windows] = (
            first_document + np.searchsorted(part.doc_offsets, positions, "right") - 1
        )
        filled += windows
        first_document += part.num_documents
    return documents


def packed_windows(tokens: np.ndarray, seq_len: int, max_tokens: int | None = None) -> list[torch.Tensor]:
    """Non-overlapping windows of seq_len inputs (+1 target token each) over packed tokens, up to max_tokens
    (at least one window), in order; each (seq_len + 1,). Empty when there are too few tokens for one."""
    count = max(0, (len(tokens) - 1) // seq_len)
    if max_tokens is not None:
        count = min(count, max(1, max_tokens // seq_len))
    return [
        torch.from_numpy(np.asarray(tokens[i * seq_len : i * seq_len + seq_len + 1]).astype(np.int64))
        for i in range(count)
    ]


def document_position_ids(input_ids: torch.Tensor, eos_id: int) -> torch.Tensor:
    """Positions that restart at 0 after every end-of-text token: (batch, seq) → (batch, seq).

    Given these `position_ids` and no attention mask, transformers builds a block-diagonal causal mask
    (sdpa, eager) or uses variable-length kernels (flash-attention 2), so packed documents do not attend
    to each other and each starts at position 0, as it would alone.
    """
    seq = input_ids.shape[1]
    index = torch.arange(seq, device=input_ids.device).expand_as(input_ids)
    starts = torch.zeros_like(input_ids, dtype=torch.bool)
    starts[:, 0] = True
    starts[:, 1:] = input_ids[:, :-1] == eos_id
    last_start = torch.where(starts, index, torch.zeros_like(index)).cummax(dim=1).values
    return index - last_start


_MASK64 = (1 << 64) - 1


def _mix64(value: int) -> int:
    """splitmix64's finaliser: a 64-bit integer hash whose output bits each depend on every input bit."""
    value = (value + 0x9E3779B97F4A7C15) & _MASK64
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & _MASK64
    return value ^ (value >> 31)


class IndexPermutation:
    """A seeded random order of range(n), computed one position at a time in O(1) memory.

    A 4-round Feistel network over the smallest even number of bits that holds n is a bijection of that power of
    two; positions that land at or beyond n walk on (cycle walking) until they land inside, which keeps it a
    bijection of range(n) and takes under 4 steps on average. So a pass over 200M windows (50B tokens of 256-token
    windows) needs no 1.6 GB array of their order, and opening a corpus costs nothing whatever its size.
    """

    ROUNDS = 4

    def __init__(self, n: int, key: Sequence[int]) -> None:
        self.n = n
        bits = max(2, (max(n, 1) - 1).bit_length())
        self.half = (bits + 1) // 2
        self.mask = (1 << self.half) - 1
        seed = 0
        for part in key:
            seed = _mix64(seed ^ (int(part) & _MASK64))
        self.round_keys = [_mix64(seed + number) for number in range(self.ROUNDS)]

    def _encrypt(self, value: int) -> int:
        left, right = value >> self.half, value & self.mask
        for round_key in self.round_keys:
            left, right = right, left ^ (_mix64(right ^ round_key) & self.mask)
        return (left << self.half) | right

    def __getitem__(self, position: int) -> int:
        if not 0 <= position < self.n:
            raise IndexError(position)
        value = self._encrypt(position)
        while value >= self.n:
            value = self._encrypt(value)
        return value

    def __len__(self) -> int:
        return self.n


class WindowMixer:
    """An endless, resumable stream of (source name, window), drawn from sources with the given weights.

    Each source is read in a seeded random order of its windows (an IndexPermutation: no array of the order is
    ever built), a new order per pass, so every window of a source is seen once per pass. The stream is
    deterministic for a seed, and `state_dict()` / `load_state_dict()` capture its position exactly (a few
    numbers, whatever the corpus size), so a resumed run sees the same batches an uninterrupted one would.
    `stream` > 0 gives another stream for the same seed (each data stage of a staged run draws its own), with orders
    of its own; stream 0 is the stream of a run without stages.
    """

    def __init__(
        self,
        sources: dict[str, TokenShard | ShardSet],
        weights: dict[str, float],
        seq_len: int,
        seed: int,
        stream: int = 0,
    ) -> None:
        self.names = [name for name in sources if weights.get(name, 0) > 0]
        self.sources, self.seq_len, self.seed = sources, seq_len, seed
        self.key = (seed,) if stream == 0 else (seed, stream)  # what the draws and the orders are seeded with
        for name in self.names:
            if sources[name].num_windows(seq_len) == 0:
                raise DataError(
                    f"{name}: {sources[name].num_tokens} training tokens is less than one window of {seq_len} "
                    "(pretrain.seq_len); add text to it or lower pretrain.seq_len"
                )
        probabilities = np.array([weights[name] for name in self.names], dtype=np.float64)
        self.probabilities = probabilities / probabilities.sum()
        self.rng = np.random.default_rng(list(self.key) if stream else seed)
        self.passes = {name: 0 for name in self.names}  # completed passes over each source
        self.positions = {name: 0 for name in self.names}  # windows read in the current pass
        self._orders: dict[str, tuple[int, IndexPermutation]] = {}  # name -> (pass number, order of its windows)
        self.drawn = {name: 0 for name in self.names}

    def _order(self, name: str) -> IndexPermutation:
        """The order of the source's windows in its current pass: a function of (seed, stream, source, pass) only."""
        cached = self._orders.get(name)
        if cached is None or cached[0] != self.passes[name]:
            windows = self.sources[name].num_windows(self.seq_len)
            cached = (
                self.passes[name],
                IndexPermutation(windows, (*self.key, self.names.index(name), self.passes[name])),
            )
            self._orders[name] = cached
        return cached[1]

    def __next__(self) -> tuple[str, torch.Tensor]:
        name = self.names[int(self.rng.choice(len(self.names), p=self.probabilities))]
        order = self._order(name)
        if self.positions[name] >= len(order):
            self.passes[name] += 1
            self.positions[name] = 0
            order = self._order(name)
        index = int(order[self.positions[name]])
        self.positions[name] += 1
        self.drawn[name] += 1
        return name, self.sources[name].window(index, self.seq_len)

    def __iter__(self) -> WindowMixer:
        return self

    def share(self, names: set[str]) -> float:
        """The probability that a window comes from one of `names`."""
        return float(sum(p for name, p in zip(self.names, self.probabilities, strict=True) if name in names))

    def raise_share(self, names: set[str], factor: float, ceiling: float) -> tuple[float, float]:
        """Multiply the share of `names` by `factor`, up to `ceiling`, the other sources' shrinking in proportion;
        return the share before and after. Each source keeps its place in its pass, and the draws that follow use
        the new shares; `state_dict` holds them, so a run resumed after the change draws as it would have."""
        before = self.share(names)
        after = min(before * factor, max(ceiling, before))
        if before <= 0 or before >= 1 or after == before:
            return before, before
        chosen = np.array([name in names for name in self.names])
        self.probabilities = np.where(
            chosen, self.probabilities * after / before, self.probabilities * (1 - after) / (1 - before)
        )
        return before, after

    def state_dict(self) -> dict:
        return {
            "rng": self.rng.bit_generator.state,
            "passes": dict(self.passes),
            "positions": dict(self.positions),
            "drawn": dict(self.drawn),
            "probabilities": dict(zip(self.names, self.probabilities.tolist(), strict=True)),
        }

    def load_state_dict(self, state: dict) -> None:
        self.rng.bit_generator.state = state["rng"]
        self.passes, self.positions, self.drawn = dict(state["passes"]), dict(state["positions"]), dict(state["drawn"])
        if "probabilities" in state:  # remixed by the forgetting guard (checkpoints of older dapt lack it)
            self.probabilities = np.array([state["probabilities"][name] for name in self.names], dtype=np.float64)
