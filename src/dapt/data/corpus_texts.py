"""Corpora read for measuring them: the texts that paths name, streamed, and the seeded samples drawn from them.

`dapt assess` streams a domain (and a general) corpus through `iter_texts`; the tokenizer tools (`dapt tokenizer
train|extend|compare`) iterate over a `CorpusTexts`, which reads the paths anew on every pass, as often as a tool
needs, and never holds the corpus. Both take files, globs, folders of files and dapt artifact folders (a run's
`curate/`, of which only the sources whose role fits the side asked for are read). The pipeline's extend-vocab
stage streams one split of a tokenization the same way (`SplitTexts`).

Figures that need whole documents (fertility) are taken on a `WordSample`: documents in a seeded random order
until a number of words, drawn in one pass with memory for the sample only, so the same corpus gives the same
sample however it is read, and a corpus smaller than the budget is measured whole.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Iterator, Sized
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import yaml

from dapt.artifacts import read_artifact
from dapt.data.documents import stream_parquet
from dapt.data.ingest import iter_file_documents
from dapt.data.progress import Progress
from dapt.errors import DataError

SEED = 0  # every sample of a corpus is drawn with this seed: the same corpus gives the same report


def _source_roles(pipeline_yaml: Path) -> dict[str, str]:
    """Source name → role from a run's pipeline.yaml; empty when there is none."""
    if not pipeline_yaml.is_file():
        return {}
    sources = (yaml.safe_load(pipeline_yaml.read_text(encoding="utf-8")) or {}).get("sources") or []
    return {source["name"]: source.get("role", "domain") for source in sources if isinstance(source, dict)}


def _artifact_texts(folder: Path, side: str, notes: list[str]) -> Iterator[str]:
    """The texts of a dapt artifact folder, batch by batch; inside a run, only the sources whose role fits `side`.

    A run's `curate/` holds domain, replay and general documents together; the run's pipeline.yaml says
    which is which. Domain takes the `domain` sources, general the `general_eval` ones (else `replay`).
    A note saying which documents were taken is appended to `notes` once the folder has been read.
    """
    if read_artifact(folder) is None:
        raise DataError(
            f"{folder}: holds documents.parquet but no manifest.json, so the stage that writes it did not finish; "
            f"rerun that stage, or pass {folder / 'documents.parquet'} to read the file as it is"
        )
    path = folder / "documents.parquet"
    parquet = stream_parquet(path)
    missing = [name for name in ("text", "source") if name not in parquet.schema_arrow.names]
    if missing:
        raise DataError(f"{path}: not a document table, missing column(s) {', '.join(missing)}")
    roles = _source_roles(folder.parent / "pipeline.yaml")
    wanted: set[str] | None = None  # the sources to take; None: all
    if roles:
        # A first pass over the small `source` column only: which roles are present decides general's side.
        sources: set[str] = set()
        for batch in parquet.iter_batches(columns=["source"], batch_size=65_536):
            sources.update(pc.unique(batch.column(0)).to_pylist())
        present = {roles.get(source, "domain") for source in sources}  # unknown sources count as domain
        role = "domain" if side == "domain" else next((r for r in ("general_eval", "replay") if r in present), None)
        wanted = {source for source in sources if roles.get(source, "domain") == role}
        if not wanted:
            raise DataError(f"{folder}: no documents of a {side} source (roles here: {', '.join(sorted(present))})")
    total = taken = 0
    for batch in parquet.iter_batches(columns=["text", "source"], batch_size=1024):
        texts = batch.column(0).to_pylist()
        total += len(texts)
        if wanted is not None:
            keep = pc.is_in(batch.column(1), value_set=pa.array(sorted(wanted), pa.string())).to_pylist()
            texts = [text for text, kept in zip(texts, keep, strict=True) if kept]
        taken += len(texts)
        yield from texts
    if wanted is None:
        notes.append(f"{folder}: all {total:,} documents (no pipeline.yaml beside it to tell sources apart)")
    else:
        notes.append(f"{folder}: {taken:,} of {total:,} documents (role {role})")


def iter_texts(
    paths: list[str], *, side: str, text_field: str, base_dir: Path, notes: list[str] | None = None
) -> Iterator[str]:
    """The non-empty texts the paths name, one at a time, in a stable order.

    A folder holding `documents.parquet` is read as a dapt artifact (a note per folder goes to `notes`);
    anything else (files, globs, folders of files, Parquet datasets, `save_to_disk` folders) goes through
    `iter_file_documents`, which names the path in its error when nothing matches. A DataError when the
    paths hold no non-empty document.
    """
    notes = [] if notes is None else notes
    found = False
    for path in paths:
        folder = Path(path).expanduser()
        folder = folder if folder.is_absolute() else base_dir / folder
        if folder.is_dir() and (folder / "documents.parquet").is_file():
            texts: Iterable[str] = _artifact_texts(folder, side, notes)
        else:
            documents = iter_file_documents([path], source=side, text_field=text_field, base_dir=base_dir)
            texts = (document["text"] for document in documents)
        for text in texts:
            if text and text.strip():
                found = True
                yield text
    if not found:
        raise DataError(f"{side} text: {', '.join(paths)} hold no non-empty document")


def read_texts(paths: list[str], *, side: str, text_field: str, base_dir: Path) -> tuple[list[str], list[str]]:
    """All the texts the paths name, in memory, and the notes of `iter_texts`: for a few documents only (a
    corpus of any size is read through `CorpusTexts`, which holds none of it)."""
    notes: list[str] = []
    texts = list(iter_texts(paths, side=side, text_field=text_field, base_dir=base_dir, notes=notes))
    return texts, notes


class CorpusTexts:
    """The texts `iter_texts` gives for the paths, read anew on every pass: a corpus a tool can go over as often as
    it needs without holding it (a pass keeps one batch of documents in memory).

    After a pass that read to the end, `documents` and `chars` count what it read and `notes` holds the
    artifact folders' notes (which documents were taken); before, `documents` is None.
    """

    def __init__(self, paths: list[str], *, side: str, text_field: str, base_dir: Path) -> None:
        self.paths, self.side, self.text_field, self.base_dir = paths, side, text_field, base_dir
        self.documents: int | None = None
        self.chars = 0
        self.notes: list[str] = []

    def __iter__(self) -> Iterator[str]:
        notes: list[str] = []
        documents = chars = 0
        for text in iter_texts(
            self.paths, side=self.side, text_field=self.text_field, base_dir=self.base_dir, notes=notes
        ):
            documents += 1
            chars += len(text)
            yield text
        self.documents, self.chars, self.notes = documents, chars, notes


class SplitTexts:
    """The texts of one split of a tokenization (its `splits.parquet`, one row per curated document, in corpus
    order), read batch by batch from the curated corpus on every pass, in corpus order.

    `documents` (how many the split holds) is counted from the small `split` column when it is made. A
    DataError when the two files do not list the same documents.
    """

    BATCH = 1024  # documents a batch: a few MB of text

    def __init__(self, splits_file: Path, documents_file: Path, split: str) -> None:
        self.splits_file, self.documents_file, self.split = splits_file, documents_file, split
        listed, corpus = stream_parquet(splits_file), stream_parquet(documents_file)
        if listed.metadata.num_rows != corpus.metadata.num_rows:
            raise DataError(f"{splits_file} does not list the documents of {documents_file}; rerun the pipeline")
        self.documents = sum(
            int(pc.sum(pc.equal(batch.column(0), split)).as_py() or 0)
            for batch in listed.iter_batches(columns=["split"], batch_size=65_536)
        )

    def __iter__(self) -> Iterator[str]:
        listed = stream_parquet(self.splits_file).iter_batches(columns=["id", "split"], batch_size=self.BATCH)
        held = pa.table({"id": pa.array([], pa.string()), "split": pa.array([], pa.string())})
        corpus = stream_parquet(self.documents_file)
        for batch in corpus.iter_batches(columns=["id", "text"], batch_size=self.BATCH):
            while held.num_rows < batch.num_rows:  # the two files' batches need not end at the same rows
                held = pa.concat_tables([held, pa.Table.from_batches([next(listed)]).cast(held.schema)])
            rows, held = held.slice(0, batch.num_rows), held.slice(batch.num_rows)
            if not rows.column("id").combine_chunks().equals(batch.column("id")):
                raise DataError(
                    f"{self.splits_file} does not list the documents of {self.documents_file}; rerun the pipeline"
                )
            chosen = pc.fill_null(pc.equal(rows.column("split").combine_chunks(), self.split), False)
            yield from batch.filter(chosen).column("text").to_pylist()


def with_progress(texts: Iterable[str], description: str, total: int | None = None) -> Iterator[str]:
    """`texts`, passed on one at a time while a `Progress` line on stderr shows documents/s and characters/s (and
    an ETA when `total`, the documents expected, is known; a list's length is)."""
    if total is None and isinstance(texts, Sized):
        total = len(texts)
    progress = Progress(description, total or 0, "documents")
    try:
        for text in texts:
            yield text
            progress.update(1, characters=len(text))
    finally:
        progress.close()


class WordSample:
    """Whole documents in a seeded random order until `max_words` whitespace words, drawn from a stream in one pass.

    Each document offered draws a random key (seeded: the same stream gives the same sample); the sample is the
    documents with the smallest keys, in key order, up to and including the one that brings the count to
    `max_words` — what "documents in a seeded random order until N words" means on a list — and the whole
    corpus when it has fewer words. A max-heap on the key holds the candidates: a document leaves it as soon
    as the documents with smaller keys reach `max_words` without it, so memory is the sample plus one document.
    """

    def __init__(self, max_words: int, seed: int = SEED) -> None:
        self.max_words = max_words
        self._rng = np.random.default_rng(seed)
        self._keys = self._rng.random(4096)
        self._next_key = 0
        self._heap: list[tuple[float, int, int, str]] = []  # (-key, position, words, text)
        self._words = 0
        self.offered = 0

    def offer(self, text: str) -> None:
        if self._next_key == len(self._keys):
            self._keys, self._next_key = self._rng.random(4096), 0
        key = float(self._keys[self._next_key])
        self._next_key += 1
        self.offered += 1
        if self._words >= self.max_words and key > -self._heap[0][0]:
            return  # it would come after documents that already reach the budget: never in the sample
        words = len(text.split())
        heapq.heappush(self._heap, (-key, self.offered - 1, words, text))
        self._words += words
        while self._heap and self._words - self._heap[0][2] >= self.max_words:
            self._words -= heapq.heappop(self._heap)[2]

    def passing(self, texts: Iterable[str]) -> Iterator[str]:
        """`texts`, each offered to the sample on its way through (to sample during a pass made for other work)."""
        for text in texts:
            self.offer(text)
            yield text

    def texts(self) -> list[str]:
        """The sampled documents, in the seeded random order (smallest key first)."""
        return [text for _, _, _, text in sorted(self._heap, key=lambda entry: (-entry[0], entry[1]))]

    @property
    def words(self) -> int:
        return self._words

    @property
    def covers_corpus(self) -> bool:
        """Whether every document offered is in the sample."""
        return len(self._heap) == self.offered


def sample_texts(texts: Iterable[str], max_words: int, seed: int = SEED) -> list[str]:
    """Whole documents of `texts` in a seeded random order until `max_words` words (`WordSample`), in one pass."""
    sample = WordSample(max_words, seed)
    for text in texts:
        sample.offer(text)
    return sample.texts()


def sample_order(count: int, seed: int = SEED) -> np.ndarray:
    """The indices 0..count-1 in a seeded random order: the order every sample of a corpus is drawn in."""
    return np.random.default_rng(seed).permutation(count)
