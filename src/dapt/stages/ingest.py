"""ingest: read every text source into one table of documents (id, text, source, meta) as Parquet."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from dapt.config import SourceConfig
from dapt.data.documents import write_documents
from dapt.data.ingest import iter_file_documents
from dapt.data.pydocs import docstring_documents, pydoc_topic_documents
from dapt.pipeline import StageContext


def source_documents(source: SourceConfig) -> Iterator[dict[str, Any]]:
    if source.kind == "files":
        return iter_file_documents(source.paths, source=source.name, text_field=source.text_field, base_dir=Path.cwd())
    if source.kind == "python_docstrings":
        assert source.package is not None
        return docstring_documents(source.package, source=source.name, min_chars=source.min_chars)
    return pydoc_topic_documents(source=source.name, min_chars=source.min_chars)


def run(context: StageContext) -> dict[str, Any]:
    sources = [SourceConfig.model_validate(s) for s in context.config["sources"]]
    documents_by_source: Counter[str] = Counter()
    chars_by_source: Counter[str] = Counter()

    def all_documents() -> Iterator[dict[str, Any]]:
        for source in sources:
            for document in tqdm(source_documents(source), desc=f"ingest {source.name}", unit="doc", leave=False):
                documents_by_source[source.name] += 1
                chars_by_source[source.name] += len(document["text"])
                yield document

    total = write_documents(all_documents(), context.out / "documents.parquet")
    for source in sources:
        context.log(
            f"{source.name} ({source.role}): {documents_by_source[source.name]} documents, "
            f"{chars_by_source[source.name] / 1e6:.2f} MB"
        )
    return {
        "documents": total,
        "by_source": {
            s.name: {
                "role": s.role,
                "documents": documents_by_source[s.name],
                "chars": chars_by_source[s.name],
            }
            for s in sources
        },
    }
