"""Corpora read for measuring them: the texts that paths name, and the seeded order samples are drawn in.

`dapt assess` streams a domain (and a general) corpus through `iter_texts`; the tokenizer tools (`dapt tokenizer
train|compare`) read all of it with `read_texts`. Both take files, globs, folders of files and dapt artifact
folders (a run's `curate/`, of which only the sources whose role fits the side asked for are read), and both draw
their samples in `sample_order`, so the same corpus gives the same numbers in each.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import yaml

from dapt.artifacts import read_artifact
from dapt.data.ingest import iter_file_documents
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
    parquet = pq.ParquetFile(path)
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
    """All the texts the paths name, in memory, and the notes of `iter_texts`: for tools that need every
    document at once (tokenizer training); `dapt assess` streams them through its `scan_corpus`."""
    notes: list[str] = []
    texts = list(iter_texts(paths, side=side, text_field=text_field, base_dir=base_dir, notes=notes))
    return texts, notes


def sample_order(count: int, seed: int = SEED) -> np.ndarray:
    """The indices 0..count-1 in a seeded random order: the order every sample of a corpus is drawn in."""
    return np.random.default_rng(seed).permutation(count)
