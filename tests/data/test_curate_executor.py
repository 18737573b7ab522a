"""Curation in worker processes, in small batches, streamed from a file: the same result as one process."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dapt.data.curate import curation_options
from dapt.data.executor import curate_documents, curate_to_files
from dapt.errors import DataError
from helpers.corpora import mixed_corpus


def test_workers_and_batches_do_not_change_the_result() -> None:
    documents, contamination = mixed_corpus()
    options = {"decontaminate_max_doc_frequency": 8}  # the leak is in 6 documents, boilerplate in 12
    serial = curate_documents(documents, contamination=contamination, workers=1, batch_size=10_000, **options)
    reasons = serial.stats["dropped_by_reason"]
    # every block drops something, so the comparison covers each of them
    assert {"too_short", "low_alpha_words", "exact_duplicate", "near_duplicate", "contaminated"} <= set(reasons)
    assert serial.stats["decontamination_ignored_common_ngrams"] > 0
    assert serial.stats["pii_replaced"]["email"] == 12
    for workers, batch_size in ((1, 7), (2, 9)):
        parallel = curate_documents(
            documents, contamination=contamination, workers=workers, batch_size=batch_size, **options
        )
        assert parallel.kept.equals(serial.kept), (workers, batch_size)
        assert parallel.ledger.equals(serial.ledger), (workers, batch_size)
        assert parallel.stats == serial.stats, (workers, batch_size)


def test_a_file_is_streamed_into_documents_and_a_located_ledger(tmp_path) -> None:
    documents, contamination = mixed_corpus(60)
    source = tmp_path / "in.parquet"
    pq.write_table(documents, source, row_group_size=16)
    out_documents, out_ledger = tmp_path / "documents.parquet", tmp_path / "ledger.parquet"
    options = curation_options(workers=2, batch_size=8)
    stats = curate_to_files(source, out_documents, out_ledger, options=options, contamination=contamination)
    in_memory = curate_documents(documents, contamination=contamination)
    assert pq.read_table(out_documents).equals(in_memory.kept)
    ledger = pq.read_table(out_ledger)
    assert ledger.select(in_memory.ledger.column_names).equals(in_memory.ledger)
    # each dropped document is located in the user's file
    lines = {row["id"]: row["line"] for row in ledger.to_pylist()}
    assert lines["doc0"] == 1 and lines["doc41"] == 42
    assert stats["docs_kept"] + ledger.num_rows == stats["docs_in"] == 60
    assert sorted(p.name for p in tmp_path.iterdir()) == ["documents.parquet", "in.parquet", "ledger.parquet"]


def test_a_file_without_the_document_columns_is_named(tmp_path) -> None:
    source = tmp_path / "notes.parquet"
    pq.write_table(pa.table({"id": ["a"], "body": ["text"]}), source)
    with pytest.raises(DataError, match=r"notes.parquet lacks column\(s\) text, source, meta"):
        curate_to_files(source, tmp_path / "d.parquet", tmp_path / "l.parquet", options=curation_options())
