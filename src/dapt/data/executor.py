"""How curation runs: batches of documents on every core, corpus-wide steps as reductions, bounded memory.

What each block does is `dapt.data.curate`'s; this module is about running them over a corpus that does
not fit in memory as Python strings (a Python list of texts takes about 14x the JSONL's size). Curation is
a map, a reduce and a write:

- map, per batch of `batch_size` documents, in `workers` processes: normalize, scrub PII, run the
  per-document blocks (`document_blocks`), and compute what the corpus-wide steps need of each document
  still kept: the sha1 of its text (exact dedup), the eval n-grams it contains (decontamination) and its
  MinHash signature (near dedup). The batch's cleaned texts go to a scratch Parquet file; what comes back
  to the main process is compact state, about 600 bytes a document (id, verdict, digest, 128 x 4-byte
  signature) whatever the length of its text.
- reduce, in the main process, in input order: the corpus-wide count of each eval n-gram (those in more
  than `decontaminate_max_doc_frequency` documents are boilerplate and ignored), then decontamination,
  exact dedup (the first copy in input order is kept) and near dedup (LSH over the signatures of the
  documents still kept; each cluster keeps its first document).
- write: the scratch files are read back in order; kept documents go to the output file and dropped ones
  to the ledger, batch by batch.

Resumable: each batch's part (cleaned texts, map state, signatures) is written under temporary names and renamed,
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
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from dapt.data.curate import (
    REASON_SETTINGS,
    Decontaminator,
    ExactDedup,
    NearDedup,
    Rejection,
    document_blocks,
    normalize_text,
    word_ngrams,
)
from dapt.data.documents import DOCUMENT_SCHEMA
from dapt.data.ingest import REJECTION_LEDGER_SCHEMA
from dapt.data.near_dup import NearDuplicateFinder
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
    """What the map step keeps of one batch of documents: no text, a few hundred bytes a document.

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
# written. Disk: about the corpus's size in texts (lz4) plus 2 KB a kept document of MinHash signatures.
SCRATCH_NAME = ".curate-scratch"
_SCRATCH_FORMAT = 1  # changed whenever a part's files change, so that parts of another dapt are never misread

# What the map step keeps of each document of a batch, one row per document, in the batch's order.
MAP_STATE_SCHEMA = pa.schema(
    [
        ("block", pa.string()),  # null while the document is kept
        ("reason", pa.string()),
        ("detail", pa.string()),
        ("digest", pa.binary()),  # sha1 of the cleaned text of a kept document; null for a dropped one
        ("kept_chars", pa.int64()),  # characters of the cleaned text of a kept document
        ("eval_ngrams", pa.list_(pa.int32())),  # indices into the sorted eval n-grams; null when none
    ]
)


@dataclass(frozen=True)
class ScratchPart:
    """The scratch files of batch `index`: its cleaned texts, its map state, its signatures and, written last by
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
    def signatures(self) -> Path:
        return self.file(".signatures.npy")

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


def _write_replacing(path: Path, write: Callable[[Path], None]) -> None:
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
        _write_replacing(recorded, lambda path: path.write_text(settings))
    return scratch


def _map_state_table(state: BatchState) -> pa.Table:
    n = len(state.verdicts)
    digests: list[bytes | None] = [None] * n
    kept_chars: list[int | None] = [None] * n
    survivors = [i for i, verdict in enumerate(state.verdicts) if verdict is None]
    for position, i in enumerate(survivors):
        digests[i], kept_chars[i] = state.digests[position], state.kept_chars[position]
    return pa.table(
        {
            "block": [v[0] if v else None for v in state.verdicts],
            "reason": [v[1] if v else None for v in state.verdicts],
            "detail": [v[2] if v else None for v in state.verdicts],
            "digest": digests,
            "kept_chars": kept_chars,
            "eval_ngrams": [list(state.eval_ngrams[i]) if i in state.eval_ngrams else None for i in range(n)],
        },
        schema=MAP_STATE_SCHEMA,
    )


def curate_part(curator: BatchCurator, batch: pa.RecordBatch, part: ScratchPart, fingerprint: str) -> dict[str, Any]:
    """Curate one batch into its scratch part, the marker last; return the marker."""
    texts = part.file(".parquet.tmp")
    state = curator(batch, texts)
    os.replace(texts, part.texts)
    _write_replacing(part.state, lambda path: pq.write_table(_map_state_table(state), path))

    def save_signatures(path: Path) -> None:
        with open(path, "wb") as file:
            np.save(file, state.signatures)

    _write_replacing(part.signatures, save_signatures)
    marker = {
        "fingerprint": fingerprint,
        "rows": len(state.ids),
        "bytes_in": pc.sum(pc.binary_length(batch.column("text"))).as_py() or 0,
        "chars_in": state.chars_in,
        "pii_replaced": dict(state.pii_replaced),
        "pii_changed": state.pii_changed,
    }
    _write_replacing(part.marker, lambda path: path.write_text(json.dumps(marker)))
    return marker


def load_batch_state(part: ScratchPart, marker: Mapping[str, Any]) -> BatchState:
    """A complete part's BatchState, read back from its files."""
    ids = pq.read_table(part.texts, columns=["id"]).column("id").to_pylist()
    state = pq.read_table(part.state)
    verdicts: list[Verdict] = [
        (block, reason, detail) if block is not None else None
        for block, reason, detail in zip(
            state.column("block").to_pylist(),
            state.column("reason").to_pylist(),
            state.column("detail").to_pylist(),
            strict=True,
        )
    ]
    return BatchState(
        ids=ids,
        verdicts=verdicts,
        digests=state.column("digest").drop_null().to_pylist(),
        signatures=np.load(part.signatures),
        kept_chars=state.column("kept_chars").drop_null().to_pylist(),
        eval_ngrams={
            i: tuple(grams) for i, grams in enumerate(state.column("eval_ngrams").to_pylist()) if grams is not None
        },
        chars_in=marker["chars_in"],
        pii_replaced=Counter(marker["pii_replaced"]),
        pii_changed=marker["pii_changed"],
    )


# A corpus of fewer batches than this per worker runs in the calling process: starting a worker (a new
# interpreter importing pyarrow, NumPy and the blocks: about a second) would cost more than it saves.
MIN_BATCHES_PER_WORKER = 4

# One BatchCurator per worker process, built by the pool's initializer.
_worker_curator: BatchCurator | None = None


def _start_worker(options: Mapping[str, Any], eval_ngrams: Sequence[tuple[str, ...]]) -> None:
    global _worker_curator
    _worker_curator = BatchCurator(options, eval_ngrams)


def _curate_in_worker(batch: pa.RecordBatch, part: ScratchPart, fingerprint: str) -> dict[str, Any]:
    assert _worker_curator is not None, "the pool's initializer builds the curator"
    return curate_part(_worker_curator, batch, part, fingerprint)


def document_batches(source: Path | pa.Table, batch_size: int) -> tuple[int, Iterator[pa.RecordBatch]]:
    """The number of documents of a Parquet file (or table) and its record batches of at most `batch_size`
    rows, read lazily. The file and its columns are checked now."""
    if isinstance(source, pa.Table):
        schema, rows, where = source.schema, source.num_rows, "the document table"
    else:
        source = Path(source)
        if not source.is_file():
            raise DataError(f"document file '{source}' not found (looked in {source.resolve().parent})")
        parquet = pq.ParquetFile(source)
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
            yield part, curate_part(curator, batch, part, fingerprint), False
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
                pending.append((part, pool.submit(_curate_in_worker, batch, part, fingerprint)))
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
class CorpusState:
    """The reduce step's input: the map step's compact state for every document, in input order."""

    parts: list[tuple[Path, int]] = field(default_factory=list)  # scratch file, its number of documents
    ids: list[str] = field(default_factory=list)
    verdicts: list[Verdict] = field(default_factory=list)
    survivors: list[int] = field(default_factory=list)  # indices of the documents kept by the map step
    digests: list[bytes] = field(default_factory=list)
    signatures: list[np.ndarray] = field(default_factory=list)
    kept_chars: list[int] = field(default_factory=list)
    eval_ngrams: dict[int, tuple[int, ...]] = field(default_factory=dict)
    chars_in: int = 0
    pii_replaced: Counter = field(default_factory=Counter)
    pii_changed: int = 0

    def add(self, path: Path, batch: BatchState) -> None:
        offset = len(self.ids)
        self.parts.append((path, len(batch.ids)))
        self.ids.extend(batch.ids)
        self.verdicts.extend(batch.verdicts)
        self.survivors.extend(offset + i for i, verdict in enumerate(batch.verdicts) if verdict is None)
        self.digests.extend(batch.digests)
        self.signatures.append(batch.signatures)
        self.kept_chars.extend(batch.kept_chars)
        self.eval_ngrams.update({offset + i: grams for i, grams in batch.eval_ngrams.items()})
        self.chars_in += batch.chars_in
        self.pii_replaced.update(batch.pii_replaced)
        self.pii_changed += batch.pii_changed


def reduce_corpus(
    corpus: CorpusState, options: Mapping[str, Any], decontaminator: Decontaminator, contaminated: bool
) -> NearDedup:
    """Decontaminate, exact- and near-dedup in input order; fill `corpus.verdicts`; return the near dedup.

    Each step sees only the documents the steps before it kept, as in a serial run of the blocks.
    """
    eval_ngrams = decontaminator.eval_ngrams
    if contaminated and options["decontaminate_max_doc_frequency"] > 0:
        frequency: Counter = Counter()
        for grams in corpus.eval_ngrams.values():
            frequency.update(grams)
        decontaminator.ignore_frequent(
            Counter({eval_ngrams[gram]: count for gram, count in frequency.items()}),
            options["decontaminate_max_doc_frequency"],
        )
    exact = ExactDedup()
    near_survivors: list[int] = []  # positions in corpus.survivors of the documents left for near dedup
    for position, index in enumerate(corpus.survivors):
        rejection: Rejection | None = None
        block = ""
        if contaminated and index in corpus.eval_ngrams:
            block, rejection = (
                "decontaminate",
                decontaminator.judge_shared(eval_ngrams[gram] for gram in corpus.eval_ngrams[index]),
            )
        if rejection is None and options["exact_dedup"]:
            block, rejection = exact.name, exact.judge_digest(corpus.ids[index], corpus.digests[position])
        if rejection is None:
            near_survivors.append(position)
        else:
            corpus.verdicts[index] = (block, rejection.reason, rejection.detail)

    near = NearDedup(near_dup_finder(options))
    if options["near_dedup"]:
        num_perm = options["near_dedup_num_perm"]
        signatures = np.concatenate([np.empty((0, num_perm), np.uint32), *corpus.signatures])
        corpus.signatures.clear()  # one copy of the signatures at a time: they are the biggest state kept
        signatures = signatures[near_survivors]
        near_ids = [corpus.ids[corpus.survivors[position]] for position in near_survivors]
        near_verdicts = near.judge_signatures(near_ids, signatures)
        for position, rejection in zip(near_survivors, near_verdicts, strict=True):
            if rejection is not None:
                corpus.verdicts[corpus.survivors[position]] = (near.name, rejection.reason, rejection.detail)
    return near


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
    parts: Sequence[tuple[Path, int]],
    verdicts: Sequence[Verdict],
    documents_out: Path,
    ledger_out: Path,
    earlier_rejections: Path | None,
) -> SourceCounts:
    """Kept documents to `documents_out`, dropped ones (after `earlier_rejections`' rows) to `ledger_out`; return
    the documents of each source and what each rule dropped of them.

    `parts`: the map step's scratch files and their numbers of documents, in input order.
    """
    counts = SourceCounts()
    offset = 0
    with (
        pq.ParquetWriter(documents_out, DOCUMENT_SCHEMA) as documents,
        pq.ParquetWriter(ledger_out, REJECTION_LEDGER_SCHEMA, compression="zstd") as ledger,
    ):
        if earlier_rejections is not None:
            for batch in pq.ParquetFile(earlier_rejections).iter_batches():
                ledger.write_batch(batch)
        for path, rows in parts:
            part = pq.read_table(path)
            part_verdicts = verdicts[offset : offset + rows]
            offset += rows
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
    the rows of `earlier_rejections` first); return the stats (see `dapt.data.curate.CurateResult`).

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
    corpus = CorpusState()
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
        corpus.add(part.texts, load_batch_state(part, marker))
    if progress is not None:
        progress.close()
    if resumed_batches and log is not None:
        log(
            f"resumed: {resumed_batches} of {len(corpus.parts)} batches were finished by an earlier run, "
            "not curated again"
        )
    near = reduce_corpus(corpus, options, decontaminator, contaminated)
    counts = write_outputs(corpus.parts, corpus.verdicts, documents_out, ledger_out, earlier_rejections)
    shutil.rmtree(scratch)
    kept_chars = dict(zip(corpus.survivors, corpus.kept_chars, strict=True))
    stats = corpus_stats(
        corpus.verdicts,
        options,
        decontaminator,
        contaminated,
        chars_in=corpus.chars_in,
        chars_kept=sum(chars for index, chars in kept_chars.items() if corpus.verdicts[index] is None),
        pii_replaced=corpus.pii_replaced,
        pii_changed=corpus.pii_changed,
        near=near,
        counts=counts,
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
    verdicts: Sequence[Verdict],
    options: Mapping[str, Any],
    decontaminator: Decontaminator,
    contaminated: bool,
    *,
    chars_in: int,
    chars_kept: int,
    pii_replaced: Counter,
    pii_changed: int,
    near: NearDedup,
    counts: SourceCounts,
) -> dict[str, Any]:
    """The counts a report shows. A block saw what every block before it kept (the first to drop wins).
    `heavy_drops`: the rules that dropped more than `max_rule_drop_share` of a source (`heavy_drops`)."""
    dropped_by_block = Counter(verdict[0] for verdict in verdicts if verdict is not None)
    names = [
        *(["pii_scrub"] if options["pii_scrub"] else []),
        *(block.name for block in document_blocks(options)),
        *(["decontaminate"] if contaminated else []),
        *(["exact_dedup"] if options["exact_dedup"] else []),
        *(["near_dedup"] if options["near_dedup"] else []),
    ]
    blocks, remaining = {}, len(verdicts)
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
        "docs_in": len(verdicts),
        "docs_kept": sum(verdict is None for verdict in verdicts),
        "dropped_by_reason": dict(sorted(Counter(v[1] for v in verdicts if v is not None).items())),
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
