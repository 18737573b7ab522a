"""How curation runs: batches of documents on every core, corpus-wide steps as reductions, bounded memory.

What each block does is `dapt.data.curate`'s; this module is about running them over a corpus that does
not fit in memory as Python strings (a Python list of texts takes about 14x the JSONL's size). Curation is
a map, a reduce and a write:

- map, per batch of `batch_size` documents, in `workers` processes: normalize, scrub PII, run the
  per-document blocks (`document_blocks`), and compute what the corpus-wide steps need of each document
  still kept: the sha1 of its text (exact dedup), the eval n-grams it contains (decontamination) and the LSH
  band keys of its MinHash signature (near dedup). The batch's cleaned texts and this state go to the batch's
  part in a scratch folder; what comes back to the main process is its marker (a few counters).
- reduce, in the main process, in input order, reading the parts' state back step by step: the corpus-wide count
  of each eval n-gram (those in more than `decontaminate_max_doc_frequency` documents are boilerplate and
  ignored), then decontamination, exact dedup (a sort of the digests; the first copy in input order is kept)
  and near dedup (LSH one band at a time over the band keys of the documents still kept; each cluster keeps its
  first document; the signatures of the documents the LSH paired are computed again from their texts).
- write: the scratch files are read back in order; kept documents go to the output file and dropped ones
  to the ledger, batch by batch.

Memory of the main process per document, whatever the length of its text (peak RSS, `VmHWM`, of curating 20k, 80k
and 200k unique documents of 60 words, 2 workers, near dedup on, on a shared 2-core machine): 209, 212 and 258 MB,
so about 390 bytes a document between 80k and 200k; before (the whole state in Python lists and one signature
matrix) it was 239, 527 and 975 MB, 3,825 bytes a document. What the reduce step holds per document kept by the
per-document blocks is its index (8 bytes) and flags, during exact dedup its 20-byte digest and a sort order, during
the LSH one band's keys and their sort order (about 40 bytes); the rest of the growth measured is not accounted
for yet (Arrow's allocator keeping what the reads of the parts freed is a guess). Beyond that, what grows with the
corpus is the eval n-grams of documents that contain any, and the signatures (4 x num_perm bytes) and verdicts of
the documents near dedup pairs: duplicates, not the corpus.

Resumable: each batch's part (cleaned texts, map state, band keys) is written under temporary names and renamed,
its marker last (as datatrove's completion markers), in a scratch folder next to the outputs that outlives a
killed run. Run again with the same settings (any `workers`) on the same documents, curation continues after the
batches whose marker names the very documents of the batch (a hash of its Arrow bytes), and ends with the
outputs of an uninterrupted run (tests/data/test_curate_resume.py SIGKILLs one in the map and in the write step).
The pipeline hands an interrupted curate stage its folder back (`StageSpec.resumable`).

Nothing in a verdict depends on which process judged a document or on how the corpus was cut into
batches, so any `workers` and `batch_size` give the same kept documents in the same order, the same
ledger and the same counts as one process (tests/data/test_curate_executor.py checks it).

Workers are spawned (fresh interpreters, not forks of a process that may hold threads), so a script that
curates with several workers needs the usual `if __name__ == "__main__":` guard around its work.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import shutil
import tempfile
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from dapt.data.curate import (
    LEDGER_SCHEMA,
    REASON_SETTINGS,
    Decontaminator,
    ExactDedup,
    NearDedup,
    curation_options,
    document_blocks,
    normalize_text,
    word_ngrams,
)
from dapt.data.documents import DOCUMENT_SCHEMA, stream_parquet
from dapt.data.ingest import REJECTION_LEDGER_SCHEMA
from dapt.data.near_dup import PRIME, NearDuplicateFinder, band_keys, banded_candidate_pairs
from dapt.data.pii import PiiScrubber
from dapt.data.progress import Progress, peak_rss_mb
from dapt.errors import DataError

# (block name, reason, detail) of the block that dropped a document; None while it is kept.
Verdict = tuple[str, str, str] | None


def available_cores() -> int:
    """The CPU cores this process may run on (its affinity mask, which containers and `taskset` narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def near_dup_finder(options: Mapping[str, Any]) -> NearDuplicateFinder:
    return NearDuplicateFinder(
        shingle=options["near_dedup_shingle"],
        num_perm=options["near_dedup_num_perm"],
        bands=options["near_dedup_bands"],
        threshold=options["near_dedup_threshold"],
    )


@dataclass
class BatchState:
    """What the map step computes of one batch of documents, in the worker, for the batch's part: no text.

    `verdicts[i]`: the per-document verdict of document i. `digests`, `signatures` (uint32, (survivors,
    num_perm)) and `kept_chars` are for the survivors (verdict None), in order. `eval_ngrams`: document index
    → indices into the sorted eval n-grams it contains, for the documents with any.
    """

    ids: list[str]
    verdicts: list[Verdict]
    digests: list[bytes]
    signatures: np.ndarray
    kept_chars: list[int]
    eval_ngrams: dict[int, tuple[int, ...]]
    chars_in: int
    pii_replaced: Counter
    pii_changed: int


class BatchCurator:
    """The map step: curates one batch of documents and writes its cleaned texts to a scratch file.

    Built from plain settings (CurateConfig's fields and the eval n-grams), so that each worker process
    builds its own blocks, whatever they hold (compiled patterns, models).
    """

    def __init__(self, options: Mapping[str, Any], eval_ngrams: Sequence[tuple[str, ...]]) -> None:
        self.blocks = document_blocks(options)
        self.scrubber = PiiScrubber(kinds=options["pii_kinds"] if options["pii_scrub"] else ())
        self.pii_scrub = bool(options["pii_scrub"])
        self.fix_mojibake = bool(options["fix_mojibake"])
        self.ngram = options["decontaminate_ngram"]
        self.ngram_index = {gram: i for i, gram in enumerate(eval_ngrams)}
        # The corpus-wide count covers every document, dropped ones included (boilerplate is boilerplate).
        self.count_every_document = options["decontaminate_max_doc_frequency"] > 0
        self.finder = near_dup_finder(options) if options["near_dedup"] else None
        self.num_perm = options["near_dedup_num_perm"]

    def __call__(self, batch: pa.RecordBatch, scratch: Path) -> BatchState:
        ids = batch.column("id").to_pylist()
        raw_texts = batch.column("text").to_pylist()
        replaced_before, changed_before = Counter(self.scrubber.replaced), self.scrubber.changed
        verdicts: list[Verdict] = []
        survivors: list[str | None] = []
        eval_ngrams: dict[int, tuple[int, ...]] = {}
        for i, (doc_id, raw_text) in enumerate(zip(ids, raw_texts, strict=True)):
            text = normalize_text(raw_text or "", fix_mojibake=self.fix_mojibake)
            if self.pii_scrub:
                text = self.scrubber(text)
            verdict: Verdict = None
            for block in self.blocks:
                rejection = block(doc_id, text)
                if rejection is not None:
                    verdict = (block.name, rejection.reason, rejection.detail)
                    break
            verdicts.append(verdict)
            survivors.append(text if verdict is None else None)
            if self.ngram_index and (verdict is None or self.count_every_document):
                shared = word_ngrams(text, self.ngram) & self.ngram_index.keys()
                if shared:
                    eval_ngrams[i] = tuple(sorted(self.ngram_index[gram] for gram in shared))
        kept_texts = [text for text in survivors if text is not None]
        if self.finder is not None:
            signatures = self.finder.signatures(kept_texts)
        else:
            signatures = np.empty((len(kept_texts), self.num_perm), dtype=np.uint32)
        texts_column = pa.array(survivors, pa.string())
        pq.write_table(
            pa.table(
                {
                    "id": batch.column("id"),
                    "text": texts_column,
                    "source": batch.column("source"),
                    "meta": batch.column("meta"),
                },
                schema=DOCUMENT_SCHEMA,
            ),
            scratch,
            compression="lz4",
        )
        replaced = Counter(self.scrubber.replaced)
        replaced.subtract(replaced_before)
        return BatchState(
            ids=ids,
            verdicts=verdicts,
            digests=[ExactDedup.digest(text) for text in kept_texts],
            signatures=signatures,
            kept_chars=[len(text) for text in kept_texts],
            eval_ngrams=eval_ngrams,
            chars_in=sum(len(text or "") for text in raw_texts),
            pii_replaced=replaced,
            pii_changed=self.scrubber.changed - changed_before,
        )


# The map step's scratch folder, next to the output files. It outlives a killed run: running again continues
# after the batches whose parts are complete instead of starting over, and it is removed once the outputs are
# written. Disk: about the corpus's size in texts (lz4) plus 8 bytes x near_dedup_bands (512) a kept document.
SCRATCH_NAME = ".curate-scratch"
_SCRATCH_FORMAT = 2  # changed whenever a part's files change, so that parts of another dapt are never misread

# What the map step keeps of each document of a batch, one row per document, in the batch's order.
MAP_STATE_SCHEMA = pa.schema(
    [
        ("block", pa.string()),  # null while the document is kept
        ("reason", pa.string()),
        ("detail", pa.string()),
        ("digest", pa.binary()),  # sha1 of the cleaned text of a kept document; null for a dropped one
        ("kept_chars", pa.int64()),  # characters of the cleaned text of a kept document
        ("eval_ngrams", pa.list_(pa.int32())),  # indices into the sorted eval n-grams; null when none
        ("has_shingles", pa.bool_()),  # whether near dedup can pair a kept document (it has a word)
    ]
)


@dataclass(frozen=True)
class ScratchPart:
    """The scratch files of batch `index`: its cleaned texts, its map state, its band keys and, written last by
    a rename, its marker (JSON: which documents it was made from and the batch's counters). A part whose marker
    is missing was cut short and is made again; files are written under a temporary name and renamed, so a
    name is either complete or absent."""

    folder: Path
    index: int

    def file(self, suffix: str) -> Path:
        return self.folder / f"part-{self.index:06d}{suffix}"

    @property
    def texts(self) -> Path:
        return self.file(".parquet")

    @property
    def state(self) -> Path:
        return self.file(".state.parquet")

    @property
    def band_keys(self) -> Path:
        """The LSH band keys of the kept documents, uint64 of shape (bands, kept): one band's keys are contiguous."""
        return self.file(".bands.npy")

    @property
    def marker(self) -> Path:
        return self.file(".done")

    def finished(self, fingerprint: str) -> dict[str, Any] | None:
        """The marker of this part when it is complete and was made from the documents of `fingerprint`."""
        try:
            marker = json.loads(self.marker.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None
        return marker if marker.get("fingerprint") == fingerprint else None


def write_replacing(path: Path, write: Callable[[Path], None]) -> None:
    """`write(temporary)` then rename it to `path`: a killed run never leaves a half-written `path`."""
    temporary = path.with_name(path.name + ".tmp")
    write(temporary)
    os.replace(temporary, path)


def batch_fingerprint(batch: pa.RecordBatch) -> str:
    """sha1 of a batch's Arrow IPC bytes: a finished part is reused only for the very documents it was made from
    (a changed input file or batch size makes every part again). Hashing is ~1 GB/s, curating ~1-5 MB/s."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, batch.schema) as writer:
        writer.write_batch(batch)
    return hashlib.sha1(sink.getvalue()).hexdigest()


def prepare_scratch(folder: Path, options: Mapping[str, Any], eval_ngrams: Sequence[tuple[str, ...]]) -> Path:
    """The scratch folder of a curation into `folder`. An interrupted run's parts are kept when it ran with the
    same settings (the number of workers aside) and eval n-grams; otherwise they are removed."""
    scratch = folder / SCRATCH_NAME
    settings = json.dumps(
        {
            "format": _SCRATCH_FORMAT,
            # the settings that change no part: the number of workers, when a warning is due
            "options": {key: value for key, value in options.items() if key not in ("workers", "max_rule_drop_share")},
            "eval_ngrams": hashlib.sha1(json.dumps(list(eval_ngrams)).encode()).hexdigest(),
        },
        sort_keys=True,
        default=str,
    )
    recorded = scratch / "settings.json"
    if scratch.exists() and not (recorded.is_file() and recorded.read_text() == settings):
        shutil.rmtree(scratch)
    if not recorded.is_file():
        scratch.mkdir(parents=True, exist_ok=True)
        write_replacing(recorded, lambda path: path.write_text(settings))
    return scratch


def _map_state_table(state: BatchState) -> pa.Table:
    n = len(state.verdicts)
    digests: list[bytes | None] = [None] * n
    kept_chars: list[int | None] = [None] * n
    has_shingles: list[bool | None] = [None] * n
    survivors = [i for i, verdict in enumerate(state.verdicts) if verdict is None]
    shingled = (state.signatures[:, 0] != PRIME).tolist() if len(state.signatures) else [False] * len(survivors)
    for position, i in enumerate(survivors):
        digests[i], kept_chars[i] = state.digests[position], state.kept_chars[position]
        has_shingles[i] = shingled[position]
    return pa.table(
        {
            "block": [v[0] if v else None for v in state.verdicts],
            "reason": [v[1] if v else None for v in state.verdicts],
            "detail": [v[2] if v else None for v in state.verdicts],
            "digest": digests,
            "kept_chars": kept_chars,
            "eval_ngrams": [list(state.eval_ngrams[i]) if i in state.eval_ngrams else None for i in range(n)],
            "has_shingles": has_shingles,
        },
        schema=MAP_STATE_SCHEMA,
    )


def curate_part(
    curator: BatchCurator, batch: pa.RecordBatch, part: ScratchPart, fingerprint: str, bands: int
) -> dict[str, Any]:
    """Curate one batch into its scratch part, the marker last; return the marker. The signatures are not kept:
    near dedup needs their `bands` band keys (64 x 8 bytes instead of 512 x 4), and the few documents it pairs
    have theirs computed again from their cleaned texts."""
    texts = part.file(".parquet.tmp")
    state = curator(batch, texts)
    os.replace(texts, part.texts)
    write_replacing(part.state, lambda path: pq.write_table(_map_state_table(state), path))
    if curator.finder is not None:
        keys = np.ascontiguousarray(band_keys(state.signatures, bands).T)

        def save_band_keys(path: Path) -> None:
            with open(path, "wb") as file:
                np.save(file, keys)

        write_replacing(part.band_keys, save_band_keys)
    marker = {
        "fingerprint": fingerprint,
        "rows": len(state.ids),
        "bytes_in": pc.sum(pc.binary_length(batch.column("text"))).as_py() or 0,
        "chars_in": state.chars_in,
        "pii_replaced": dict(state.pii_replaced),
        "pii_changed": state.pii_changed,
    }
    write_replacing(part.marker, lambda path: path.write_text(json.dumps(marker)))
    return marker


# A corpus of fewer batches than this per worker runs in the calling process: starting a worker (a new
# interpreter importing pyarrow, NumPy and the blocks: about a second) would cost more than it saves.
MIN_BATCHES_PER_WORKER = 4

# One BatchCurator per worker process, built by the pool's initializer.
_worker_curator: BatchCurator | None = None


def _start_worker(options: Mapping[str, Any], eval_ngrams: Sequence[tuple[str, ...]]) -> None:
    global _worker_curator
    _worker_curator = BatchCurator(options, eval_ngrams)


def _curate_in_worker(batch: pa.RecordBatch, part: ScratchPart, fingerprint: str, bands: int) -> dict[str, Any]:
    assert _worker_curator is not None, "the pool's initializer builds the curator"
    return curate_part(_worker_curator, batch, part, fingerprint, bands)


def document_batches(source: Path | pa.Table, batch_size: int) -> tuple[int, Iterator[pa.RecordBatch]]:
    """The number of documents of a Parquet file (or table) and its record batches of at most `batch_size`
    rows, read lazily. The file and its columns are checked now."""
    if isinstance(source, pa.Table):
        schema, rows, where = source.schema, source.num_rows, "the document table"
    else:
        source = Path(source)
        if not source.is_file():
            raise DataError(f"document file '{source}' not found (looked in {source.resolve().parent})")
        parquet = stream_parquet(source)
        schema, rows, where = parquet.schema_arrow, parquet.metadata.num_rows, f"{source}"
    missing = [name for name in DOCUMENT_SCHEMA.names if name not in schema.names]
    if missing:
        raise DataError(
            f"curate: {where} lacks column(s) {', '.join(missing)}; "
            f"it needs {', '.join(DOCUMENT_SCHEMA.names)} (see dapt.data.documents)"
        )
    if isinstance(source, pa.Table):
        batches = source.select(DOCUMENT_SCHEMA.names).cast(DOCUMENT_SCHEMA).to_batches(max_chunksize=batch_size)
    else:
        batches = parquet.iter_batches(batch_size=batch_size, columns=DOCUMENT_SCHEMA.names)
    cast = (pa.Table.from_batches([batch]).cast(DOCUMENT_SCHEMA).to_batches()[0] for batch in batches if batch.num_rows)
    return rows, cast


def map_batches(
    batches: Iterator[pa.RecordBatch],
    scratch: Path,
    options: Mapping[str, Any],
    eval_ngrams: Sequence[tuple[str, ...]],
    workers: int,
    expected_batches: int,
) -> Iterator[tuple[ScratchPart, dict[str, Any], bool]]:
    """Curate each batch into its scratch part, in `workers` processes when there are enough batches to share,
    in input order: (part, its marker, whether an earlier run had finished it). A part finished by an earlier
    run from the same documents is not curated again."""
    parts = ((ScratchPart(scratch, index), batch_fingerprint(batch), batch) for index, batch in enumerate(batches))
    if workers <= 1 or expected_batches < MIN_BATCHES_PER_WORKER * workers:
        curator: BatchCurator | None = None
        for part, fingerprint, batch in parts:
            marker = part.finished(fingerprint)
            if marker is not None:
                yield part, marker, True
                continue
            curator = curator or BatchCurator(options, eval_ngrams)
            yield part, curate_part(curator, batch, part, fingerprint, options["near_dedup_bands"]), False
        return
    # spawn, not fork: the parent may hold threads (Arrow's pools, torch's), which fork does not copy safely.
    with ProcessPoolExecutor(
        max_workers=workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_start_worker,
        initargs=(dict(options), list(eval_ngrams)),
    ) as pool:
        pending: deque[tuple[ScratchPart, Future | dict[str, Any]]] = deque()
        for part, fingerprint, batch in parts:
            marker = part.finished(fingerprint)
            if marker is None:
                bands = options["near_dedup_bands"]
                pending.append((part, pool.submit(_curate_in_worker, batch, part, fingerprint, bands)))
            else:
                pending.append((part, marker))
            # Two batches in flight per worker keep every core busy; more would only hold texts in memory.
            while len(pending) >= 2 * workers:
                part, done = pending.popleft()
                yield (part, done.result(), False) if isinstance(done, Future) else (part, done, True)
        while pending:
            part, done = pending.popleft()
            yield (part, done.result(), False) if isinstance(done, Future) else (part, done, True)


@dataclass
class MapSummary:
    """What the reduce step holds of the map step: per part its marker, per document kept by the per-document blocks
    (a survivor) its index in the corpus (8 bytes), and the eval n-grams of the few documents that hold any. The
    rest (verdicts, digests, band keys) stays in the parts' files and is read back step by step."""

    parts: list[tuple[ScratchPart, int]] = field(default_factory=list)  # part, its first document's index
    survivor_chunks: list[np.ndarray] = field(default_factory=list)
    eval_ngrams: dict[int, tuple[int, ...]] = field(default_factory=dict)
    documents: int = 0
    chars_in: int = 0
    pii_replaced: Counter = field(default_factory=Counter)
    pii_changed: int = 0

    def add(self, part: ScratchPart, marker: Mapping[str, Any]) -> None:
        state = pq.read_table(part.state, columns=["block", "eval_ngrams"])
        self.parts.append((part, self.documents))
        kept = state.column("block").is_null().to_numpy(zero_copy_only=False)
        self.survivor_chunks.append(np.flatnonzero(kept) + self.documents)
        grams = state.column("eval_ngrams")
        for i in np.flatnonzero(grams.is_valid().to_numpy(zero_copy_only=False)).tolist():
            self.eval_ngrams[self.documents + i] = tuple(grams[i].as_py())
        self.documents += marker["rows"]
        self.chars_in += marker["chars_in"]
        self.pii_replaced.update(marker["pii_replaced"])
        self.pii_changed += marker["pii_changed"]

    def survivors(self) -> np.ndarray:
        """The corpus indices of the survivors, int64 of shape (survivors,), ascending."""
        return np.concatenate([np.empty(0, np.int64), *self.survivor_chunks])

    def survivor_column(self, name: str) -> Iterator[pa.ChunkedArray]:
        """Part by part, a column of the map state for the survivors only."""
        for part, _ in self.parts:
            state = pq.read_table(part.state, columns=["block", name])
            yield state.filter(state.column("block").is_null()).column(name)

    def read(self, indices: np.ndarray, columns: list[str]) -> pa.Table:
        """`columns` of the cleaned texts' files for the documents at `indices` (corpus indices, ascending)."""
        tables = list(self._read_by_part(indices, columns))
        return pa.concat_tables(tables) if tables else DOCUMENT_SCHEMA.empty_table().select(columns)

    def _read_by_part(self, indices: np.ndarray, columns: list[str]) -> Iterator[pa.Table]:
        starts = np.array([start for _, start in self.parts], dtype=np.int64)
        owners = np.searchsorted(starts, indices, side="right") - 1
        for owner in np.unique(owners).tolist():
            yield pq.read_table(self.parts[owner][0].texts, columns=columns).take(
                indices[owners == owner] - starts[owner]
            )

    def signatures(self, indices: np.ndarray, finder: NearDuplicateFinder) -> np.ndarray:
        """The MinHash signatures of the documents at `indices` (corpus indices, ascending), uint32 of shape
        (len(indices), num_perm), computed part by part: one part's texts in memory at a time, not all of them
        (on a 4 GB corpus whose LSH paired many documents, holding their texts took the main process to 2.4 GB)."""
        signatures = np.empty((len(indices), finder.num_perm), dtype=np.uint32)
        done = 0
        for table in self._read_by_part(indices, ["text"]):
            signatures[done : done + table.num_rows] = finder.signatures(table.column("text").to_pylist())
            done += table.num_rows
        return signatures


@dataclass
class ReduceVerdicts:
    """The reduce step's verdicts, by corpus index: only the dropped documents have one."""

    dropped: dict[int, Verdict] = field(default_factory=dict)  # decontaminated and near-duplicate documents
    exact_copies: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))  # ascending
    exact_originals: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))  # the first copy of each


def reduce_parts(
    summary: MapSummary, options: Mapping[str, Any], decontaminator: Decontaminator, contaminated: bool
) -> tuple[ReduceVerdicts, NearDedup]:
    """Decontaminate, exact- and near-dedup the survivors in input order; return their verdicts and the near dedup.

    Each step sees only the documents the steps before it kept, as in a serial run of the blocks. Memory: per
    survivor its index (8 bytes) and a flag; during exact dedup its 20-byte digest and a sort order; during near
    dedup one band's keys and their sort order at a time (about 40 bytes); then the signatures of the documents
    the LSH paired, computed again from their texts (4 x num_perm bytes each).
    """
    verdicts = ReduceVerdicts()
    survivors = summary.survivors()
    kept = np.ones(len(survivors), dtype=bool)  # survivors still kept
    eval_ngrams = decontaminator.eval_ngrams
    if contaminated:
        if options["decontaminate_max_doc_frequency"] > 0:
            frequency: Counter = Counter()
            for grams in summary.eval_ngrams.values():
                frequency.update(grams)
            decontaminator.ignore_frequent(
                Counter({eval_ngrams[gram]: count for gram, count in frequency.items()}),
                options["decontaminate_max_doc_frequency"],
            )
        for index in sorted(summary.eval_ngrams):
            position = int(np.searchsorted(survivors, index))
            if position == len(survivors) or survivors[position] != index:
                continue  # dropped by a per-document block (its n-grams were counted all the same)
            rejection = decontaminator.judge_shared(eval_ngrams[gram] for gram in summary.eval_ngrams[index])
            if rejection is not None:
                verdicts.dropped[index] = ("decontaminate", rejection.reason, rejection.detail)
                kept[position] = False

    if options["exact_dedup"]:
        digests = np.concatenate(
            [np.empty(0, "S20")]
            + [np.array(column.to_pylist(), dtype="S20") for column in summary.survivor_column("digest")]
        )
        candidates = np.flatnonzero(kept)
        order = candidates[np.argsort(digests[candidates], kind="stable")]  # equal texts together, in input order
        ordered = digests[order]
        del digests, candidates
        first = np.ones(len(order), dtype=bool)
        first[1:] = ordered[1:] != ordered[:-1]
        del ordered
        originals = order[np.maximum.accumulate(np.where(first, np.arange(len(order)), 0))][~first]
        copies = order[~first]
        by_copy = np.argsort(copies)
        kept[copies] = False
        verdicts.exact_copies, verdicts.exact_originals = survivors[copies[by_copy]], survivors[originals[by_copy]]

    near = NearDedup(near_dup_finder(options))
    if options["near_dedup"]:
        has_shingles = np.concatenate(
            [np.empty(0, bool)]
            + [column.to_numpy(zero_copy_only=False) for column in summary.survivor_column("has_shingles")]
        )
        members = np.flatnonzero(kept & has_shingles)
        del has_shingles
        with_keys = [part for part, _ in summary.parts if part.band_keys.is_file()]

        def keys_by_band() -> Iterator[np.ndarray]:
            for band in range(options["near_dedup_bands"]):
                keys = np.concatenate(
                    [np.empty(0, np.uint64)] + [np.load(part.band_keys, mmap_mode="r")[band] for part in with_keys]
                )
                yield keys[members]

        candidates = banded_candidate_pairs(keys_by_band(), members, len(survivors))
        paired = np.unique(candidates)  # positions among the survivors, ascending
        signatures = summary.signatures(survivors[paired], near.finder)
        # Positions among the paired documents keep the input order, so clusters and their first documents are
        # those found among all survivors.
        ids = summary.read(survivors[paired], ["id"]).column("id").to_pylist()
        rejections = near.judge_signatures(ids, signatures, np.searchsorted(paired, candidates))
        for position, rejection in zip(paired.tolist(), rejections, strict=True):
            if rejection is not None:
                verdicts.dropped[int(survivors[position])] = (near.name, rejection.reason, rejection.detail)
    return verdicts, near


def part_verdicts(summary: MapSummary, reduced: ReduceVerdicts, kept_chars: list[int]) -> Iterator[list[Verdict]]:
    """Each part's verdicts in order: the per-document blocks' from its map state, then the reduce step's.
    `kept_chars` gains, part by part, the characters of the documents kept."""
    originals = np.unique(reduced.exact_originals)
    original_id = dict(zip(originals.tolist(), summary.read(originals, ["id"]).column("id").to_pylist(), strict=True))
    dropped = np.array(sorted(reduced.dropped), dtype=np.int64)
    for part, start in summary.parts:
        state = pq.read_table(part.state, columns=["block", "reason", "detail", "kept_chars"])
        verdicts: list[Verdict] = [
            (block, reason, detail) if block is not None else None
            for block, reason, detail in zip(
                state.column("block").to_pylist(),
                state.column("reason").to_pylist(),
                state.column("detail").to_pylist(),
                strict=True,
            )
        ]
        end = start + len(verdicts)
        low, high = np.searchsorted(reduced.exact_copies, [start, end])
        for copy, original in zip(
            reduced.exact_copies[low:high].tolist(), reduced.exact_originals[low:high].tolist(), strict=True
        ):
            rejection = ExactDedup.rejection(original_id[original])
            verdicts[copy - start] = ("exact_dedup", rejection.reason, rejection.detail)
        low, high = np.searchsorted(dropped, [start, end])
        for index in dropped[low:high].tolist():
            verdicts[index - start] = reduced.dropped[index]
        chars = state.column("kept_chars").to_pylist()
        kept_chars.append(sum(c for c, verdict in zip(chars, verdicts, strict=True) if verdict is None))
        yield verdicts


def _location(meta_text: str | None) -> tuple[str | None, int | None]:
    meta = json.loads(meta_text) if meta_text else {}
    return meta.get("path"), meta.get("line", meta.get("row"))


@dataclass
class SourceCounts:
    """Per source: its documents (`documents[source]`) and what each rule dropped (`dropped[source, block, reason]`)."""

    documents: Counter = field(default_factory=Counter)
    dropped: Counter = field(default_factory=Counter)


def heavy_drops(counts: SourceCounts, max_share: float) -> list[dict[str, Any]]:
    """The rules that dropped more than `max_share` of one source's documents, biggest share first, each with the
    setting that governs it and a sentence for people (the curate log, the manifest and the report show it)."""
    found = []
    for (source, block, reason), dropped in counts.dropped.items():
        documents = counts.documents[source]
        share = dropped / documents
        if share <= max_share:
            continue
        setting = f"curate.{REASON_SETTINGS.get(reason, block)}"
        found.append(
            {
                "source": source,
                "block": block,
                "reason": reason,
                "dropped": dropped,
                "documents": documents,
                "share": round(share, 4),
                "setting": setting,
                "message": f"rule {reason} ({block}) dropped {share:.0%} of source {source!r} ({dropped:,} of "
                f"{documents:,} documents), more than curate.max_rule_drop_share {max_share:.0%}; if they are "
                f"documents the model should learn from, change {setting} (the ledger holds them and why)",
            }
        )
    return sorted(found, key=lambda drop: (-drop["share"], drop["source"], drop["reason"]))


def write_outputs(
    parts: Sequence[Path],
    verdicts_by_part: Iterable[Sequence[Verdict]],
    documents_out: Path,
    ledger_out: Path,
    earlier_rejections: Path | None,
) -> SourceCounts:
    """Kept documents to `documents_out`, dropped ones (after `earlier_rejections`' rows) to `ledger_out`; return
    the documents of each source and what each rule dropped of them.

    `parts`: the map step's files of cleaned texts, in input order; `verdicts_by_part`: each one's verdicts.
    """
    counts = SourceCounts()
    with (
        pq.ParquetWriter(documents_out, DOCUMENT_SCHEMA) as documents,
        pq.ParquetWriter(ledger_out, REJECTION_LEDGER_SCHEMA, compression="zstd") as ledger,
    ):
        if earlier_rejections is not None:
            for batch in stream_parquet(earlier_rejections).iter_batches():
                ledger.write_batch(batch)
        for path, part_verdicts in zip(parts, verdicts_by_part, strict=True):
            part = pq.read_table(path)
            kept = pa.array([verdict is None for verdict in part_verdicts])
            documents.write_table(part.filter(kept))
            dropped = part.filter(pc.invert(kept))
            dropped_verdicts = [verdict for verdict in part_verdicts if verdict is not None]
            counts.documents.update(part.column("source").to_pylist())
            sources = dropped.column("source").to_pylist()
            counts.dropped.update((source, v[0], v[1]) for source, v in zip(sources, dropped_verdicts, strict=True))
            if dropped_verdicts:
                locations = [_location(meta) for meta in dropped.column("meta").to_pylist()]
                ledger.write_table(
                    pa.table(
                        {
                            "id": dropped.column("id"),
                            "source": dropped.column("source"),
                            "block": [block for block, _, _ in dropped_verdicts],
                            "reason": [reason for _, reason, _ in dropped_verdicts],
                            "detail": [detail for _, _, detail in dropped_verdicts],
                            "path": [path for path, _ in locations],
                            "line": pa.array([line for _, line in locations], pa.int64()),
                        },
                        schema=REJECTION_LEDGER_SCHEMA,
                    )
                )
    return counts


def curate_to_files(
    source: Path | pa.Table,
    documents_out: Path,
    ledger_out: Path,
    *,
    options: Mapping[str, Any],
    contamination: Mapping[str, list[str]] | None = None,
    earlier_rejections: Path | None = None,
    log: Callable[[str], None] | None = None,
    show_progress: bool = False,
) -> dict[str, Any]:
    """Curate a document file (or table) into `documents_out` and `ledger_out` (REJECTION_LEDGER_SCHEMA,
    the rows of `earlier_rejections` first); return the stats (see `CurateResult`).

    `options` are CurateConfig's fields, execution ones (`workers`, `batch_size`, `backend`) included.
    The map step's parts are written to a scratch folder next to `documents_out` (SCRATCH_NAME), removed at the
    end; a run killed before that and started again with the same settings and documents continues after the
    batches it had finished and ends with the same outputs. `log` hears what a person should (a resumed run).
    With `show_progress`, the map and write steps report their rate and ETA on stderr, and the stats gain
    `throughput` (documents/s and MB/s of this run, seconds, peak RSS of the main process and of a worker).
    """
    contaminated = bool(contamination)
    # Built before any document is read, so a bad setting fails fast.
    near_dup_finder(options)
    decontaminator = Decontaminator(contamination=dict(contamination or {}), n=options["decontaminate_ngram"])
    eval_ngrams = decontaminator.eval_ngrams if contaminated else []
    documents_out, ledger_out = Path(documents_out), Path(ledger_out)
    batch_size = options["batch_size"]
    rows, batches = document_batches(source, batch_size)
    scratch = prepare_scratch(documents_out.parent, options, eval_ngrams)
    if options.get("backend", "local") == "ray":
        from dapt.data.ray_backend import curate_with_ray

        if isinstance(source, pa.Table):  # Ray's workers read a file
            pq.write_table(source, scratch / "input.parquet", row_group_size=batch_size)
            source = scratch / "input.parquet"
        stats = curate_with_ray(
            Path(source),
            documents_out,
            ledger_out,
            scratch,
            options=options,
            decontaminator=decontaminator,
            contaminated=contaminated,
            earlier_rejections=earlier_rejections,
        )
        shutil.rmtree(scratch)
        return stats
    clock = time.perf_counter()
    summary = MapSummary()
    workers = options["workers"] or available_cores()
    expected_batches = -(-rows // batch_size)
    resumed_batches = resumed_documents = bytes_in = 0
    progress = Progress("curate", rows, "documents") if show_progress else None
    for part, marker, was_finished in map_batches(batches, scratch, options, eval_ngrams, workers, expected_batches):
        if was_finished:
            resumed_batches += 1
            resumed_documents += marker["rows"]
            if progress is not None:
                progress.skip(marker["rows"])
        else:
            bytes_in += marker["bytes_in"]
            if progress is not None:
                progress.update(marker["rows"], bytes=marker["bytes_in"])
        summary.add(part, marker)
    if progress is not None:
        progress.close()
    if resumed_batches and log is not None:
        log(
            f"resumed: {resumed_batches} of {len(summary.parts)} batches were finished by an earlier run, "
            "not curated again"
        )
    reduced, near = reduce_parts(summary, options, decontaminator, contaminated)
    kept_chars: list[int] = []
    counts = write_outputs(
        [part.texts for part, _ in summary.parts],
        part_verdicts(summary, reduced, kept_chars),
        documents_out,
        ledger_out,
        earlier_rejections,
    )
    shutil.rmtree(scratch)
    stats = corpus_stats(
        counts,
        options,
        decontaminator,
        contaminated,
        chars_in=summary.chars_in,
        chars_kept=sum(kept_chars),
        pii_replaced=summary.pii_replaced,
        pii_changed=summary.pii_changed,
        near=near,
    )
    if show_progress:
        stats["throughput"] = throughput(
            time.perf_counter() - clock, rows - resumed_documents, bytes_in, resumed_documents
        )
    return stats


def throughput(seconds: float, documents: int, text_bytes: int, resumed_documents: int = 0) -> dict[str, Any]:
    """What a curation run did per second, and its peak memory: the manifest's one-line account of the stage.

    `documents`, `text_bytes`: curated by this run (not those of batches an earlier, killed run had finished)."""
    return {
        "seconds": round(seconds, 1),
        "documents": documents,
        "documents_resumed": resumed_documents,
        "documents_per_s": round(documents / max(seconds, 1e-9), 1),
        "mb_per_s": round(text_bytes / 1e6 / max(seconds, 1e-9), 2),
        "peak_rss_mb": peak_rss_mb(),
    }


def corpus_stats(
    counts: SourceCounts,
    options: Mapping[str, Any],
    decontaminator: Decontaminator,
    contaminated: bool,
    *,
    chars_in: int,
    chars_kept: int,
    pii_replaced: Counter,
    pii_changed: int,
    near: NearDedup,
) -> dict[str, Any]:
    """The counts a report shows. A block saw what every block before it kept (the first to drop wins).
    `heavy_drops`: the rules that dropped more than `max_rule_drop_share` of a source (`heavy_drops`)."""
    dropped_by_block: Counter = Counter()
    dropped_by_reason: Counter = Counter()
    for (_, block, reason), dropped in counts.dropped.items():
        dropped_by_block[block] += dropped
        dropped_by_reason[reason] += dropped
    docs_in = sum(counts.documents.values())
    names = [
        *(["pii_scrub"] if options["pii_scrub"] else []),
        *(block.name for block in document_blocks(options)),
        *(["decontaminate"] if contaminated else []),
        *(["exact_dedup"] if options["exact_dedup"] else []),
        *(["near_dedup"] if options["near_dedup"] else []),
    ]
    blocks, remaining = {}, docs_in
    for name in names:
        blocks[name] = {"seen": remaining, "dropped": dropped_by_block[name]}
        remaining -= dropped_by_block[name]
    if "language" in blocks:  # most of a corpus dropped as another language: the setting is likely wrong
        from dapt.data.langid import warn_if_most_dropped

        warn_if_most_dropped(
            blocks["language"]["dropped"], blocks["language"]["seen"], options["language"]["languages"]
        )
    replaced = PiiScrubber(kinds=options["pii_kinds"] if options["pii_scrub"] else ()).replaced
    replaced.update(pii_replaced)
    return {
        "docs_in": docs_in,
        "docs_kept": docs_in - sum(dropped_by_reason.values()),
        "dropped_by_reason": dict(sorted(dropped_by_reason.items())),
        "blocks": blocks,
        "decontaminated_by_task": dict(sorted(decontaminator.by_task.items())),
        "decontamination_ignored_common_ngrams": decontaminator.ignored_common_ngrams,
        "chars_in": chars_in,
        "chars_kept": chars_kept,
        "pii_replaced": dict(replaced),
        "pii_documents_changed": pii_changed,
        "near_dedup": {"candidate_pairs": near.finder.candidate_pairs, "verified_pairs": near.finder.verified_pairs},
        "heavy_drops": heavy_drops(counts, options["max_rule_drop_share"]),
    }


@dataclass
class CurateResult:
    """The kept documents (text normalized), the rejection ledger and the counts a report shows.

    `stats`: docs_in, docs_kept, dropped_by_reason {reason: n}, blocks {name: {seen, dropped}},
    decontaminated_by_task {task: n}, chars_in (raw), chars_kept (normalized), pii_replaced {kind: n}
    (over every input document, kept or not), pii_documents_changed, near_dedup {candidate_pairs,
    verified_pairs} (the LSH's candidates and those whose estimated Jaccard passed the threshold).
    """

    kept: pa.Table
    ledger: pa.Table
    stats: dict


def curate_documents(
    documents: pa.Table, *, contamination: dict[str, list[str]] | None = None, **options: Any
) -> CurateResult:
    """Normalize, scrub, filter and deduplicate `documents` (DOCUMENT_SCHEMA); see the module docstring.

    `options` are CurateConfig's fields (`dapt config --explain curate`); those not given take its defaults.
    `contamination` maps a task name to its eval/test texts; documents sharing a `decontaminate_ngram`-word
    sequence with any of them are dropped and counted for that task, except for n-grams found in more than
    `decontaminate_max_doc_frequency` documents of the corpus (boilerplate, not a leak).
    """
    options = curation_options(**options)
    with tempfile.TemporaryDirectory(prefix="dapt-curate-") as folder:
        documents_out, ledger_out = Path(folder) / "documents.parquet", Path(folder) / "ledger.parquet"
        stats = curate_to_files(documents, documents_out, ledger_out, options=options, contamination=contamination)
        kept = pq.read_table(documents_out)
        ledger = pq.read_table(ledger_out).select(LEDGER_SCHEMA.names).cast(LEDGER_SCHEMA)
    return CurateResult(kept=kept, ledger=ledger, stats=stats)
