"""curate: clean the documents and keep an account of every one dropped (the rejection ledger).

The task test texts are passed in so that no document sharing a long n-gram with them reaches
pretraining: a model that saw the test set during pretraining would make the comparison dishonest.
Each ledger row carries the dropped document's file and line (from its meta), so a surprising drop can
be looked up in the user's own files.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from dapt.data.curate import curate_documents
from dapt.data.documents import read_documents
from dapt.data.ingest import REJECTION_LEDGER_SCHEMA
from dapt.pipeline import StageContext
from dapt.stages.ingest import DOCUMENTS_NAME, LEDGER_NAME
from dapt.stages.tasks import example_text, read_examples


def located_ledger(ledger: pa.Table, documents: pa.Table) -> pa.Table:
    """Curation's ledger with the `path` and `line` (or row) of each dropped document, from its meta."""
    metas = documents.column("meta").take(pc.index_in(ledger.column("id"), value_set=documents.column("id")))
    paths, lines = [], []
    for meta_text in metas.to_pylist():
        meta = json.loads(meta_text) if meta_text else {}
        paths.append(meta.get("path"))
        lines.append(meta.get("line", meta.get("row")))
    located = ledger.append_column("path", pa.array(paths, pa.string())).append_column(
        "line", pa.array(lines, pa.int64())
    )
    return located.cast(REJECTION_LEDGER_SCHEMA)


def curate_corpus(
    documents_path: Path,
    out: Path,
    *,
    options: dict[str, Any],
    contamination: dict[str, list[str]],
    log: Callable[[str], None],
    earlier_rejections: Path | None = None,
) -> dict[str, Any]:
    """Curate the document file into `out/documents.parquet` and `out/rejection_ledger.parquet`; return the stats.

    `options` are CurateConfig's fields. The rows of `earlier_rejections` (an ingest rejection ledger) are
    copied first into the ledger, so that one file accounts for every record read.
    """
    documents = read_documents(documents_path)
    result = curate_documents(documents, **options, contamination=contamination)
    if result.kept.num_rows + result.ledger.num_rows != documents.num_rows:
        raise AssertionError("curate lost documents: kept + ledger != input")  # the ledger invariant
    pq.write_table(result.kept, out / DOCUMENTS_NAME)
    with pq.ParquetWriter(out / LEDGER_NAME, REJECTION_LEDGER_SCHEMA, compression="zstd") as writer:
        if earlier_rejections is not None:
            for batch in pq.ParquetFile(earlier_rejections).iter_batches():
                writer.write_batch(batch)
        writer.write_table(located_ledger(result.ledger, documents))
    stats = result.stats
    dropped = ", ".join(f"{reason} {n}" for reason, n in sorted(stats["dropped_by_reason"].items())) or "none"
    log(f"{stats['docs_in']} documents in, {stats['docs_kept']} kept; dropped: {dropped}")
    return stats


def run(context: StageContext) -> dict[str, Any]:
    contamination = {
        artifact.manifest["config"]["task"]["name"]: [
            example_text(e) for e in read_examples(artifact.path / "test.parquet")
        ]
        for role, artifact in context.inputs.items()
        if role.startswith("task:")
    }
    return curate_corpus(
        context.inputs["corpus"].path / DOCUMENTS_NAME,
        context.out,
        options=dict(context.config["curate"]),
        contamination=contamination,
        log=context.log,
    )
