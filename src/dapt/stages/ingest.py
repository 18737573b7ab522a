"""ingest: read every text source into one table of documents (id, text, source, meta) as Parquet.

Documents stream from the readers straight into the Parquet writer, so the corpus is never held in memory.
Records that cannot be read go to `rejection_ledger.parquet` beside `documents.parquet` (or, with a source's
`strict: true`, stop the stage with an error naming file:line); the manifest counts them by reason.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from dapt.config import SourceConfig
from dapt.data.documents import write_documents
from dapt.data.ingest import IngestLedger, iter_file_documents
from dapt.data.pydocs import docstring_documents, pydoc_topic_documents
from dapt.stages.context import StageContext

DOCUMENTS_NAME = "documents.parquet"
LEDGER_NAME = "rejection_ledger.parquet"


def source_documents(source: SourceConfig, ledger: IngestLedger | None = None) -> Iterator[dict[str, Any]]:
    if source.kind == "files":
        return iter_file_documents(
            source.paths,
            source=source.name,
            text_field=source.text_field,
            base_dir=Path.cwd(),
            max_document_chars=source.max_document_chars,
            strict=source.strict,
            ledger=ledger,
        )
    if source.kind == "python_docstrings":
        assert source.package is not None
        return docstring_documents(source.package, source=source.name, min_chars=source.min_chars)
    return pydoc_topic_documents(source=source.name, min_chars=source.min_chars)


def ingest_sources(sources: list[SourceConfig], out: Path, log: Callable[[str], None]) -> dict[str, Any]:
    """Write `out/documents.parquet` and `out/rejection_ledger.parquet` from `sources`; return the metrics."""
    documents_by_source: Counter[str] = Counter()
    chars_by_source: Counter[str] = Counter()

    with IngestLedger(out / LEDGER_NAME) as ledger:

        def all_documents() -> Iterator[dict[str, Any]]:
            for source in sources:
                documents = source_documents(source, ledger)
                for document in tqdm(documents, desc=f"ingest {source.name}", unit="doc", leave=False):
                    documents_by_source[source.name] += 1
                    chars_by_source[source.name] += len(document["text"])
                    yield document

        total = write_documents(all_documents(), out / DOCUMENTS_NAME)
    for source in sources:
        rejected = f", {ledger.by_source[source.name]} records rejected" if ledger.by_source[source.name] else ""
        log(
            f"{source.name} ({source.role}): {documents_by_source[source.name]} documents, "
            f"{chars_by_source[source.name] / 1e6:.2f} MB{rejected}"
        )
    if ledger.total:
        log(
            f"rejected {ledger.total} records ({ledger.summary()}), e.g. {ledger.first_where}: "
            f"{ledger.first.detail if ledger.first else ''}; each is listed in {LEDGER_NAME}"
        )
    return {
        "documents": total,
        "rejected": ledger.total,
        "rejected_by_reason": dict(sorted(ledger.by_reason.items())),
        "by_source": {
            s.name: {
                "role": s.role,
                "documents": documents_by_source[s.name],
                "chars": chars_by_source[s.name],
                "rejected": ledger.by_source[s.name],
            }
            for s in sources
        },
    }


def run(context: StageContext) -> dict[str, Any]:
    sources = [SourceConfig.model_validate(s) for s in context.config["sources"]]
    return ingest_sources(sources, context.out, context.log)
