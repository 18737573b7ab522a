"""Tokenize a curated corpus of any size into packed shards: streaming, on several processes, resumable.

Memory does not grow with the text: a 1B-token corpus is never held as Python lists of ids (the old recipe
took about 53 bytes per token) and never as text. Two passes:

1. **tokenize** (the costly one). Documents are read from the curated Parquet file `batch_size` rows at a
   time; each batch becomes one *part* in the scratch folder: its token ids with an end-of-text token after
   every document (`tokens.npy`), and its index (`index.parquet`: id, source, tokens, key per document; the
   key is 64 bits of blake2b(seed, id), the document's place in a random order fixed by the seed). A part is
   written under a temporary name and renamed when complete. The rename is its completion marker: a killed
   run, started again, tokenizes only the batches that have no part yet. A part depends on its batch and the
   tokenizer alone, so the parts, and everything made from them, are byte for byte the same whatever the
   number of workers (`workers` processes, or Ray tasks with `backend: ray`).
2. **assemble**. The main process reads the parts' keys, lengths and sources (15 bytes a document, ~30
   with the shard plan: a 3M-document, 1B-token corpus needs ~90 MB), chooses the held-out documents
   (`choose_splits`), plans the shards, then reads the parts once, in order, appending each document's
   tokens to its split's shard files. Shards hold at most about `shard_tokens` tokens each; a training
   split's shards never mix sources, so pretraining can weight sources (pretrain.mix). Held-out splits are
   small (about `eval_max_tokens` each at most) and are written last, in key order. The parts are deleted once
   the shards are complete; until then the stage needs about twice the shards' size on disk.

Held-out splits are chosen by document, in key order: the first documents of a role until `eval_tokens`
tokens and `eval_min_documents` documents are in, but no more than `eval_max_tokens` tokens (the test split),
then the next ones (validation). A document's key depends on the seed and its id only, so adding documents to
a corpus does not reshuffle which old ones are held out.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import shutil
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dapt.data.documents import stream_parquet
from dapt.data.executor import available_cores
from dapt.data.progress import Progress
from dapt.data.shards import token_dtype
from dapt.errors import ConfigError, DataError

# Split codes, in the order the manifest lists them; -1: in no split (cut by max_train_tokens).
SPLITS = ("domain_test", "domain_val", "domain_train", "general_test", "general_val", "replay_train")
SPLIT_CODE = {name: code for code, name in enumerate(SPLITS)}
HELD_OUT = ("domain_test", "domain_val", "general_test", "general_val")
ROLE_CODE = {"domain": 0, "replay": 1, "general_eval": 2}

PART_INDEX_SCHEMA = pa.schema(
    [("id", pa.string()), ("source", pa.string()), ("tokens", pa.int64()), ("key", pa.uint64())]
)
SPLITS_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("source", pa.string()),
        ("split", pa.string()),  # null: in no split
        ("tokens", pa.int64()),
        ("position", pa.int64()),  # the document's place in its split's shards (null: in no split)
    ]
)

# A corpus of fewer batches than this per worker is tokenized in the calling process: a worker must import
# transformers and load the tokenizer (a few seconds), more than a small corpus takes.
MIN_BATCHES_PER_WORKER = 4


def document_key(seed: int, document_id: str) -> int:
    """The document's place in the seeded random order of held-out choice: 64 bits of blake2b(seed, id)."""
    digest = hashlib.blake2b(f"{seed}\0{document_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


# -- pass 1: batches of documents → parts ---------------------------------------------------------------


@dataclass(frozen=True)
class PartSettings:
    """What a worker needs to turn a batch into a part: plain values, so a spawned process can take them."""

    tokenizer_folder: str
    eos_id: int
    vocab_size: int
    seed: int


class BatchTokenizer:
    """Tokenizes one batch of documents into a part folder (tokens.npy + index.parquet), written atomically."""

    def __init__(self, settings: PartSettings) -> None:
        from transformers import AutoTokenizer  # heavy: imported where a worker needs it

        self.settings = settings
        tokenizer = AutoTokenizer.from_pretrained(settings.tokenizer_folder)
        # The Rust tokenizer directly: `encode_batch_fast` skips the offsets that transformers' call computes
        # and converts to Python (about 2x faster here on SmolLM2's tokenizer, the same ids).
        self.backend = getattr(tokenizer, "_tokenizer", None)
        self.tokenizer = tokenizer
        self.dtype = token_dtype(settings.vocab_size)

    def encode(self, texts: list[str]) -> list[list[int]]:
        if self.backend is not None and hasattr(self.backend, "encode_batch_fast"):
            return [encoding.ids for encoding in self.backend.encode_batch_fast(texts, add_special_tokens=False)]
        return self.tokenizer(texts, add_special_tokens=False)["input_ids"]

    def __call__(self, batch: pa.RecordBatch, part: Path) -> dict[str, int]:
        texts = [text or "" for text in batch.column("text").to_pylist()]
        ids = batch.column("id").to_pylist()
        encoded = self.encode(texts)
        lengths = np.fromiter((len(e) + 1 for e in encoded), dtype=np.int64, count=len(encoded))
        tokens = np.empty(int(lengths.sum()), dtype=self.dtype)
        ends = np.cumsum(lengths)
        eos = self.settings.eos_id
        for end, length, document in zip(ends, lengths, encoded, strict=True):
            tokens[end - length : end - 1] = document
            tokens[end - 1] = eos
        temporary = part.with_name(part.name + ".tmp")
        shutil.rmtree(temporary, ignore_errors=True)
        temporary.mkdir(parents=True)
        np.save(temporary / "tokens.npy", tokens)
        index = pa.table(
            {
                "id": pa.array(ids, pa.string()),
                "source": batch.column("source").cast(pa.string()),
                "tokens": pa.array(lengths, pa.int64()),
                "key": pa.array([document_key(self.settings.seed, i) for i in ids], pa.uint64()),
            },
            schema=PART_INDEX_SCHEMA,
        )
        pq.write_table(index, temporary / "index.parquet")
        os.replace(temporary, part)  # the completion marker: a part folder exists only once whole
        return {"documents": len(ids), "tokens": int(lengths.sum()), "bytes": sum(len(t.encode()) for t in texts)}


_worker: BatchTokenizer | None = None


def _start_worker(settings: PartSettings) -> None:
    global _worker
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # the processes are the parallelism
    _worker = BatchTokenizer(settings)


def _tokenize_in_worker(batch: pa.RecordBatch, part: Path) -> dict[str, int]:
    assert _worker is not None, "the pool's initializer builds the tokenizer"
    return _worker(batch, part)


def part_path(scratch: Path, index: int) -> Path:
    return scratch / f"part-{index:07d}"


def document_batches(documents_file: Path, batch_size: int) -> tuple[int, Iterator[pa.RecordBatch]]:
    """The number of documents and their record batches of `batch_size` rows (id, text, source), read lazily."""
    if not documents_file.is_file():
        raise DataError(f"document file '{documents_file}' not found; run the curate stage first")
    parquet = stream_parquet(documents_file)
    missing = [name for name in ("id", "text", "source") if name not in parquet.schema_arrow.names]
    if missing:
        raise DataError(f"{documents_file}: lacks column(s) {', '.join(missing)}; it needs id, text and source")
    rows = parquet.metadata.num_rows

    def batches() -> Iterator[pa.RecordBatch]:
        # iter_batches may cut at row-group ends; re-cut so that part i is always rows [i*B, (i+1)*B)
        pending: list[pa.RecordBatch] = []
        held = 0
        for batch in parquet.iter_batches(batch_size=batch_size, columns=["id", "text", "source"]):
            pending.append(batch)
            held += batch.num_rows
            while held >= batch_size:
                table = pa.Table.from_batches(pending)
                yield table.slice(0, batch_size).combine_chunks().to_batches()[0]
                rest = table.slice(batch_size)
                pending, held = ([rest.combine_chunks().to_batches()[0]] if rest.num_rows else []), rest.num_rows
        if held:
            yield pa.Table.from_batches(pending).combine_chunks().to_batches()[0]

    return rows, batches()


def tokenize_parts(
    documents_file: Path,
    scratch: Path,
    settings: PartSettings,
    *,
    batch_size: int,
    workers: int,
    backend: str = "local",
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Pass 1: every batch of the document file as a part in `scratch` (parts already there are kept).

    Returns the number of parts and what this run did (documents, tokens, bytes and their rates)."""
    scratch.mkdir(parents=True, exist_ok=True)
    recorded = scratch / "parts.json"
    layout = {"batch_size": batch_size, "documents": str(documents_file.name), "seed": settings.seed}
    if recorded.is_file() and json.loads(recorded.read_text()) != layout:
        log("the parts left by an interrupted run were cut differently (another batch_size): starting over")
        shutil.rmtree(scratch)
        scratch.mkdir(parents=True)
    recorded.write_text(json.dumps(layout) + "\n")
    for leftover in scratch.glob("part-*.tmp"):
        shutil.rmtree(leftover)  # a part cut short by a kill: never marked complete, done again

    rows, batches = document_batches(documents_file, batch_size)
    count = -(-rows // batch_size)
    finished = {path.name for path in scratch.glob("part-*") if path.is_dir()}
    if finished:
        log(f"resuming: {len(finished)} of {count} parts were tokenized by an interrupted run")
    progress = Progress("tokenize", rows, "documents")
    todo: Iterator[tuple[Path, pa.RecordBatch]] = (
        (part_path(scratch, index), batch) for index, batch in enumerate(batches)
    )

    def pending_only() -> Iterator[tuple[Path, pa.RecordBatch]]:
        for part, batch in todo:
            if part.name in finished:
                progress.skip(batch.num_rows)
            else:
                yield part, batch

    workers = workers or available_cores()
    left = count - len(finished)
    if backend == "ray":
        run = _run_with_ray(pending_only(), settings, workers)
    elif workers <= 1 or left < MIN_BATCHES_PER_WORKER * workers:
        tokenizer = BatchTokenizer(settings)
        run = (tokenizer(batch, part) for part, batch in pending_only())
    else:
        run = _run_in_pool(pending_only(), settings, workers)
    for done in run:
        progress.update(done["documents"], tokens=done["tokens"], bytes=done["bytes"])
    progress.close()
    return {"parts": count, "parts_resumed": len(finished), **{k: round(v, 1) for k, v in progress.rates().items()}}


def _run_in_pool(
    todo: Iterator[tuple[Path, pa.RecordBatch]], settings: PartSettings, workers: int
) -> Iterator[dict[str, int]]:
    # spawn, not fork: the parent may hold threads (Arrow's pools, torch's), which fork does not copy safely
    with ProcessPoolExecutor(
        max_workers=workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_start_worker,
        initargs=(settings,),
    ) as pool:
        pending: deque[Future] = deque()
        for part, batch in todo:
            pending.append(pool.submit(_tokenize_in_worker, batch, part))
            while len(pending) >= 2 * workers:  # two batches in flight per worker keep every core busy
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _run_with_ray(
    todo: Iterator[tuple[Path, pa.RecordBatch]], settings: PartSettings, workers: int
) -> Iterator[dict[str, int]]:
    """The same parts as Ray tasks on the cluster `ray.init()` connects to; the scratch folder must be on storage
    every node sees (as for curate.backend: ray)."""
    try:
        import ray  # optional extra: dapt-lm[ray]
    except ImportError as error:
        raise ConfigError(
            "tokenize.backend: 'ray' needs Ray, which is not installed; install the extra with "
            "pip install 'dapt-lm[ray]' (or set tokenize.backend: local)"
        ) from error
    if not ray.is_initialized():
        ray.init(log_to_driver=False, configure_logging=False)
    cluster = max(1, int(ray.cluster_resources().get("CPU", 1)))
    workers = min(workers, cluster) if workers else cluster
    remote = ray.remote(_tokenize_as_ray_task)
    pending: deque = deque()
    for part, batch in todo:
        pending.append(remote.remote(settings, batch, str(part)))
        while len(pending) >= 2 * workers:
            yield ray.get(pending.popleft())
    while pending:
        yield ray.get(pending.popleft())


def _tokenize_as_ray_task(settings: PartSettings, batch: pa.RecordBatch, part: str) -> dict[str, int]:
    global _worker
    if _worker is None or _worker.settings != settings:  # one tokenizer per Ray worker process
        _start_worker(settings)
    assert _worker is not None
    return _worker(batch, Path(part))


# -- pass 2: parts → the held-out choice → shards -------------------------------------------------------


@dataclass
class CorpusIndex:
    """One entry per document, in corpus order: what choosing splits and planning shards need (15 bytes each)."""

    keys: np.ndarray  # uint64
    lengths: np.ndarray  # int32, tokens with the end-of-text token
    sources: np.ndarray  # int16 codes into `source_names`
    source_names: list[str]
    part_sizes: list[int] = field(default_factory=list)


def read_index(scratch: Path, parts: int) -> CorpusIndex:
    keys, lengths, codes, sizes = [], [], [], []
    names: dict[str, int] = {}
    for index in range(parts):
        table = pq.read_table(part_path(scratch, index) / "index.parquet", columns=["source", "tokens", "key"])
        keys.append(table.column("key").to_numpy())
        lengths.append(table.column("tokens").to_numpy())
        encoded = table.column("source").combine_chunks().dictionary_encode()
        local = [names.setdefault(name, len(names)) for name in encoded.dictionary.to_pylist()]
        codes.append(np.asarray(local, dtype=np.int16)[encoded.indices.to_numpy(zero_copy_only=False)])
        sizes.append(table.num_rows)
    empty = np.empty(0)
    return CorpusIndex(
        keys=np.concatenate([empty.astype(np.uint64), *keys]),
        lengths=np.concatenate([empty.astype(np.int32), *lengths]).astype(np.int32),
        sources=np.concatenate([empty.astype(np.int16), *codes]),
        source_names=list(names),
        part_sizes=sizes,
    )


def _take_until(order: np.ndarray, lengths: np.ndarray, budget: int) -> int:
    """How many documents from the front of `order` it takes to hold `budget` tokens (all, if they never do)."""
    if not len(order):
        return 0
    reached = np.cumsum(lengths[order]) >= budget
    return int(np.argmax(reached)) + 1 if reached.any() else len(order)


@dataclass(frozen=True)
class HeldOutSize:
    """How large each held-out split is: documents in key order until it holds `tokens` tokens and `documents`
    documents (the document floor capped at `share` of the role's documents), but never past `max_tokens`."""

    tokens: int
    documents: int = 0
    max_tokens: int | None = None

    def count(self, order: np.ndarray, lengths: np.ndarray, share: float, role_documents: int) -> int:
        """How many documents from the front of `order` the split takes (at least one when there is one)."""
        taken = max(_take_until(order, lengths, self.tokens), min(self.documents, int(share * role_documents)))
        if self.max_tokens is not None:
            taken = min(taken, _take_until(order, lengths, self.max_tokens))
        return min(taken, len(order))


# The document floor of a held-out split is at most this share of its role's documents: a role that trains
# (domain, replay) keeps at least 80% of its documents for training; a general_eval source is never trained on,
# so its two splits may share all of its documents.
HELD_OUT_SHARE = {"domain": 0.1, "replay": 0.1, "general_eval": 0.5}


def choose_splits(
    keys: np.ndarray,
    lengths: np.ndarray,
    roles: np.ndarray,
    eval_tokens: int | HeldOutSize,
    max_train_tokens: int | None,
) -> tuple[np.ndarray, str]:
    """The split code of every document (-1: in none) and where the general held-out text came from.

    Per role, documents are taken in key order: test until it holds `eval_tokens` tokens and (a `HeldOutSize`)
    its floor of documents, never past its cap of tokens; then validation likewise; the rest train. With no
    general_eval document, general val/test are held-out replay documents.
    """
    size = eval_tokens if isinstance(eval_tokens, HeldOutSize) else HeldOutSize(eval_tokens)
    splits = np.full(len(keys), -1, dtype=np.int8)

    def in_key_order(role: str) -> np.ndarray:
        members = np.flatnonzero(roles == ROLE_CODE[role])
        return members[np.argsort(keys[members], kind="stable")]

    def hold_out(order: np.ndarray, role: str, test: str, val: str) -> np.ndarray:
        members = len(order)
        taken = size.count(order, lengths, HELD_OUT_SHARE[role], members)
        splits[order[:taken]] = SPLIT_CODE[test]
        order = order[taken:]
        taken = size.count(order, lengths, HELD_OUT_SHARE[role], members)
        splits[order[:taken]] = SPLIT_CODE[val]
        return order[taken:]

    def train(order: np.ndarray, split: str) -> None:
        if max_train_tokens is not None:
            order = order[: _take_until(order, lengths, max_train_tokens)]
        splits[order] = SPLIT_CODE[split]

    train(hold_out(in_key_order("domain"), "domain", "domain_test", "domain_val"), "domain_train")
    general_from = "general_eval" if (roles == ROLE_CODE["general_eval"]).any() else "replay"
    rest = hold_out(in_key_order(general_from), general_from, "general_test", "general_val")
    train(rest if general_from == "replay" else in_key_order("replay"), "replay_train")
    return splits, general_from


@dataclass
class ShardPlan:
    """Where every document of a split goes: `order` lists them in shard order; `shard_of` their shard numbers."""

    split: str
    order: np.ndarray  # document numbers (corpus order), in the order they are written
    shard_of: np.ndarray  # shard number of each, non-decreasing
    shard_tokens: list[int]
    shard_documents: list[int]
    shard_source: list[str | None]  # the source of a training shard's documents; None for held-out shards


def plan_shards(
    split: str, members: np.ndarray, index: CorpusIndex, source_order: Sequence[str], shard_tokens: int
) -> ShardPlan:
    """Held-out splits: their documents in key order, in shards of about `shard_tokens`. Training splits: each
    source's documents in corpus order (sources in the config's order), a source's shards never mixed."""
    if split in HELD_OUT:
        streams = [(None, members[np.argsort(index.keys[members], kind="stable")])]
    else:
        rank = {name: position for position, name in enumerate(source_order)}
        present = sorted(
            {index.source_names[c] for c in np.unique(index.sources[members])},
            key=lambda name: (rank.get(name, len(rank)), name),
        )
        code_of = {name: code for code, name in enumerate(index.source_names)}
        streams = [(name, members[index.sources[members] == code_of[name]]) for name in present]
    order, shard_of, tokens, documents, sources = [], [], [], [], []
    for source, stream in streams:
        lengths = index.lengths[stream]
        starts = np.cumsum(lengths) - lengths
        local = starts // shard_tokens  # a shard takes the documents that start inside its stretch of tokens
        _, numbered = np.unique(local, return_inverse=True)
        numbered = numbered.reshape(-1) + len(tokens)
        counts = np.bincount(numbered - len(tokens)) if len(stream) else np.zeros(0, dtype=np.int64)
        sums = np.bincount(numbered - len(tokens), weights=lengths) if len(stream) else np.zeros(0)
        tokens += [int(s) for s in sums]
        documents += [int(c) for c in counts]
        sources += [source] * len(counts)
        order.append(stream)
        shard_of.append(numbered)
    return ShardPlan(
        split=split,
        order=np.concatenate([np.empty(0, np.int64), *order]),
        shard_of=np.concatenate([np.empty(0, np.int64), *shard_of]),
        shard_tokens=tokens,
        shard_documents=documents,
        shard_source=sources,
    )


class ShardWriter:
    """Appends documents' tokens to one shard whose size is known in advance; finished by a rename."""

    def __init__(self, folder: Path, tokens: int, documents: int, dtype: np.dtype, source: str | None) -> None:
        self.folder, self.expected, self.source = folder, tokens, source
        self.temporary = folder.with_name(folder.name + ".tmp")
        shutil.rmtree(self.temporary, ignore_errors=True)
        self.temporary.mkdir(parents=True)
        self.file = open(self.temporary / "tokens.npy", "wb")  # noqa: SIM115 - closed in finish()
        header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": (tokens,)}
        np.lib.format.write_array_header_1_0(self.file, header)
        self.offsets = np.zeros(documents + 1, dtype=np.int64)
        self.written_documents = 0
        self.written_tokens = 0

    def append(self, tokens: np.ndarray, lengths: np.ndarray) -> None:
        tokens.tofile(self.file)
        first = self.written_documents
        self.offsets[first + 1 : first + 1 + len(lengths)] = self.written_tokens + np.cumsum(lengths)
        self.written_documents += len(lengths)
        self.written_tokens += int(lengths.sum())

    def finish(self) -> dict[str, Any]:
        self.file.close()
        if self.written_tokens != self.expected or self.written_documents != len(self.offsets) - 1:
            raise DataError(f"{self.folder}: wrote {self.written_tokens} tokens, planned {self.expected}")
        np.save(self.temporary / "doc_offsets.npy", self.offsets)
        stats: dict[str, Any] = {"tokens": self.written_tokens, "documents": self.written_documents}
        if self.source is not None:
            stats["sources"] = {
                self.source: {"documents": self.written_documents, "tokens": self.written_tokens, "first_document": 0}
            }
        dtype = np.load(self.temporary / "tokens.npy", mmap_mode="r").dtype.name
        (self.temporary / "shard.json").write_text(json.dumps({**stats, "dtype": dtype}) + "\n")
        os.replace(self.temporary, self.folder)
        return stats


class _Assembly:
    """The shards of every split being written: which are open, how many documents each still awaits (a shard is
    finished, its files renamed into place, when its last document arrives), and the per-split stats."""

    def __init__(self, plans: dict[str, ShardPlan], shards_root: Path, dtype: np.dtype) -> None:
        self.plans, self.shards_root, self.dtype = plans, shards_root, dtype
        self.writers: dict[tuple[str, int], ShardWriter] = {}
        self.remaining = {
            (name, shard): count for name, plan in plans.items() for shard, count in enumerate(plan.shard_documents)
        }
        self.stats: dict[str, dict[str, Any]] = {
            name: {"tokens": 0, "documents": 0, "shards": len(plan.shard_tokens)} for name, plan in plans.items()
        }

    def append(self, split: str, shard: int, tokens: np.ndarray, lengths: np.ndarray) -> None:
        """Append documents (their tokens back to back, and each one's length) to a shard, in corpus order."""
        key = (split, shard)
        if key not in self.writers:
            plan = self.plans[split]
            self.writers[key] = ShardWriter(
                self.shards_root / split / f"{shard:05d}",
                plan.shard_tokens[shard],
                plan.shard_documents[shard],
                self.dtype,
                plan.shard_source[shard],
            )
        self.writers[key].append(tokens, lengths)
        self.remaining[key] -= len(lengths)
        if self.remaining[key] == 0:
            self._finish(key)

    def _finish(self, key: tuple[str, int]) -> None:
        finished = self.writers.pop(key).finish()
        stats = self.stats[key[0]]
        stats["tokens"] += finished["tokens"]
        stats["documents"] += finished["documents"]
        for name, counts in finished.get("sources", {}).items():
            recorded = stats.setdefault("sources", {}).setdefault(name, {"documents": 0, "tokens": 0})
            recorded["documents"] += counts["documents"]
            recorded["tokens"] += counts["tokens"]

    def check_finished(self) -> None:
        if self.writers:
            raise DataError(f"tokenize: shards left unfinished: {sorted(self.writers)} (a bug: please report it)")


def _document_positions(plans: dict[str, ShardPlan], documents: int) -> tuple[np.ndarray, np.ndarray]:
    """Per document: its shard number in its split's plan, and its position in the split's order (-1: no split)."""
    shard_of = np.full(documents, -1, dtype=np.int32)
    position = np.full(documents, -1, dtype=np.int32)
    for plan in plans.values():
        shard_of[plan.order] = plan.shard_of
        position[plan.order] = np.arange(len(plan.order))
    return shard_of, position


def assemble_shards(
    scratch: Path,
    index: CorpusIndex,
    splits: np.ndarray,
    out: Path,
    *,
    source_order: Sequence[str],
    shard_tokens: int,
    vocab_size: int,
    check_ids: Callable[[int, list[str]], None] | None = None,
) -> dict[str, Any]:
    """Pass 2: the parts read once, in order; each document appended to its split's shard. Returns per-split
    stats (tokens, documents, shards, sources). Writes `out/shards/<split>/<NNNNN>/` and `out/splits.parquet`.

    `check_ids(first_document, ids)` sees every part's ids (to check them against another tokenization's)."""
    shards_root = out / "shards"
    shutil.rmtree(shards_root, ignore_errors=True)  # an assembly cut short is redone whole (it is the cheap pass)
    plans = {
        name: plan_shards(name, np.flatnonzero(splits == code), index, source_order, shard_tokens)
        for code, name in enumerate(SPLITS)
        if (splits == code).any()
    }
    shard_of, position = _document_positions(plans, len(splits))
    assembly = _Assembly(plans, shards_root, token_dtype(vocab_size))
    held_out: dict[str, list[tuple[int, np.ndarray]]] = {name: [] for name in HELD_OUT if name in plans}
    first = 0
    progress = Progress("write shards", len(splits), "documents")
    with pq.ParquetWriter(out / "splits.parquet", SPLITS_SCHEMA) as splits_file:
        for part_number, size in enumerate(index.part_sizes):
            folder = part_path(scratch, part_number)
            tokens = np.load(folder / "tokens.npy")
            table = pq.read_table(folder / "index.parquet", columns=["id", "source"])
            ids = table.column("id").to_pylist()
            if check_ids is not None:
                check_ids(first, ids)
            numbers = np.arange(first, first + size)
            lengths = index.lengths[numbers]
            ends = np.cumsum(lengths)
            part_splits = splits[numbers]
            for code in np.unique(part_splits[part_splits >= 0]):
                name, local = SPLITS[code], np.flatnonzero(part_splits == code)
                if name in held_out:  # written after the training splits, in the split's key order
                    held_out[name] += [(int(first + i), tokens[ends[i] - lengths[i] : ends[i]].copy()) for i in local]
                    continue
                destinations = shard_of[first + local]
                for shard in np.unique(destinations):  # corpus order within a source: appends, in order
                    chosen = local[destinations == shard]
                    mask = np.repeat(np.isin(np.arange(size), chosen), lengths)
                    assembly.append(name, int(shard), tokens[mask], lengths[chosen])
            splits_file.write_table(_splits_rows(ids, table.column("source"), part_splits, lengths, position[numbers]))
            first += size
            progress.update(size)
        for name, documents in held_out.items():  # small (eval_max_tokens each at most): in key order
            by_document = dict(documents)
            for number, shard in zip(plans[name].order, plans[name].shard_of, strict=True):
                piece = by_document[int(number)]
                assembly.append(name, int(shard), piece, np.array([len(piece)], dtype=np.int64))
    progress.close()
    assembly.check_finished()
    return assembly.stats


def _splits_rows(
    ids: list[str], sources: pa.ChunkedArray, part_splits: np.ndarray, lengths: np.ndarray, positions: np.ndarray
) -> pa.Table:
    """One part's rows of splits.parquet: each document's split (null: in none), tokens and place in its split."""
    return pa.table(
        {
            "id": ids,
            "source": sources,
            "split": pa.array([SPLITS[c] if c >= 0 else None for c in part_splits], pa.string()),
            "tokens": pa.array(lengths, pa.int64()),
            "position": pa.array(positions, pa.int64(), mask=part_splits < 0),
        },
        schema=SPLITS_SCHEMA,
    )
