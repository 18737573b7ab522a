"""curate: clean the documents and keep an account of every one dropped (the rejection ledger).

The task test texts are passed in so that no document sharing a long n-gram with them reaches
pretraining: a model that saw the test set during pretraining would make the comparison dishonest.
Each ledger row carries the dropped document's file and line (from its meta), so a surprising drop can
be looked up in the user's own files; the ledger starts with the records ingest could not read, so that it
accounts for every record read (`dapt curate PATH...` writes the same ledger). The documents are streamed in
batches through a process pool (`curate.workers`, `curate.batch_size`; see `dapt.data.executor`), so memory holds
a few batches of text and a few hundred bytes per document, not the corpus. A killed curate, run again, continues
after the batches it had finished (the stage is resumable: see `dapt.data.executor`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from dapt.config import CurateConfig
from dapt.data.curate import curation_options
from dapt.data.executor import curate_to_files
from dapt.stages.context import StageContext
from dapt.stages.ingest import DOCUMENTS_NAME, LEDGER_NAME
from dapt.stages.tasks import example_text, read_examples


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
    stats = curate_to_files(
        documents_path,
        out / DOCUMENTS_NAME,
        out / LEDGER_NAME,
        options=curation_options(**options),
        contamination=contamination,
        earlier_rejections=earlier_rejections,
        log=log,
        show_progress=True,
    )
    earlier = pq.ParquetFile(earlier_rejections).metadata.num_rows if earlier_rejections is not None else 0
    ledger_rows = pq.ParquetFile(out / LEDGER_NAME).metadata.num_rows
    dropped_here = sum(stats["dropped_by_reason"].values())
    if stats["docs_kept"] + dropped_here != stats["docs_in"] or ledger_rows != earlier + dropped_here:
        raise AssertionError("curate lost documents: kept + ledger != input")  # the ledger invariant
    dropped = ", ".join(f"{reason} {n}" for reason, n in sorted(stats["dropped_by_reason"].items())) or "none"
    log(f"{stats['docs_in']} documents in, {stats['docs_kept']} kept; dropped: {dropped}")
    for drop in stats["heavy_drops"]:
        log(f"warning: {drop['message']}")
    speed = stats["throughput"]
    log(
        f"{speed['documents']:,} documents curated in {speed['seconds']:.1f}s ({speed['documents_per_s']:,.0f} "
        f"documents/s, {speed['mb_per_s']:.2f} MB/s); peak RSS {speed['peak_rss_mb']['main']:,.0f} MB "
        f"(largest worker {speed['peak_rss_mb']['largest_worker']:,.0f} MB)"
    )
    return stats


def from_records_read(ingest: dict[str, Any], curated: dict[str, Any]) -> dict[str, Any]:
    """The account of curation from the raw records (ingest's metrics, then `curate_corpus`'s stats): records read =
    kept + dropped, `dropped` being the rows of the ledger, which holds ingest's rejections first."""
    records_read = ingest["documents"] + ingest["rejected"]
    dropped_by_reason = Counter(ingest["rejected_by_reason"]) + Counter(curated["dropped_by_reason"])
    return {
        "records_read": records_read,
        "docs_kept": curated["docs_kept"],
        "dropped": records_read - curated["docs_kept"],
        "dropped_by_reason": dict(sorted(dropped_by_reason.items())),
        "blocks": {"ingest": {"seen": records_read, "dropped": ingest["rejected"]}, **curated["blocks"]},
    }


def run(context: StageContext) -> dict[str, Any]:
    """Curate the ingested corpus. Its ledger starts with ingest's rejections, as `dapt curate`'s does, so that
    one file accounts for every record read. The stats keep curation's own counts (`docs_in`: the documents
    ingested, `dropped_by_reason`: what curation dropped); `records_read` and `dropped` count from the raw
    records (records_read = docs_kept + dropped = docs_kept + the ledger's rows)."""
    assert context.pipeline is not None
    corpus = context.inputs["corpus"]
    contamination = {
        artifact.manifest["config"]["task"]["name"]: [
            example_text(e) for e in read_examples(artifact.path / "test.parquet")
        ]
        for role, artifact in context.inputs.items()
        if role.startswith("task:")
    }
    ingest_ledger = corpus.path / LEDGER_NAME
    stats = curate_corpus(
        corpus.path / DOCUMENTS_NAME,
        context.out,
        options=context.section_of(CurateConfig).model_dump(),
        contamination=contamination,
        log=context.log,
        earlier_rejections=ingest_ledger if ingest_ledger.is_file() else None,  # an older ingest may have none
    )
    ingest_rejected = pq.ParquetFile(ingest_ledger).metadata.num_rows if ingest_ledger.is_file() else 0
    records_read = stats["docs_in"] + ingest_rejected
    return {**stats, "records_read": records_read, "dropped": records_read - stats["docs_kept"]}
