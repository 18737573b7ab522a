"""Curation in worker processes, in small batches, streamed from a file: the same result as one process."""

from __future__ import annotations

import json
import random

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dapt.data.curate import curate_documents, curation_options
from dapt.data.documents import DOCUMENT_SCHEMA
from dapt.data.executor import curate_to_files
from dapt.errors import DataError

WORDS = "the model and data of signal to filter with matrix sparse kernel estimate sample integral spline basis".split()


def prose(seed: int, n_words: int = 80) -> str:
    rng = random.Random(seed)
    return " ".join(" ".join(rng.choice(WORDS) for _ in range(8)).capitalize() + "." for _ in range(n_words // 8))


def mixed_corpus(n: int = 120) -> tuple[pa.Table, dict[str, list[str]]]:
    """Documents that every block drops some of, with duplicates spread over the batches."""
    test_text = prose(10_000, n_words=40)
    boilerplate = prose(20_000, n_words=40)  # in many documents and in the test text: ignored, not a leak
    texts = []
    for i in range(n):
        kind = i % 10
        if kind == 0:
            texts.append("too short")
        elif kind == 1:
            texts.append("0 1 2 3 4 5 6 7 8 9 " * 30)  # a table of numbers
        elif kind == 2:
            texts.append(prose(i // 20))  # exact copies of earlier documents of this kind
        elif kind == 3:
            words = prose(1000 + i // 20, 160).split()
            words[40] = f"changed{i}"
            texts.append(" ".join(words))  # near-copies of one another
        elif kind == 4 and i % 20 == 4:
            texts.append(prose(i) + " " + test_text)  # a leak
        elif kind == 5:
            texts.append(prose(i) + " " + boilerplate + f" Contact ann{i}@uni.org or call +1 415 555 0{i:03d}.")
        else:
            texts.append(prose(i) + "\r\n\r\n\r\n\r\n\r\n" + prose(i + 5000))
    table = pa.table(
        {
            "id": [f"doc{i}" for i in range(n)],
            "text": texts,
            "source": ["corpus"] * n,
            "meta": [json.dumps({"path": "docs.jsonl", "line": i + 1}) for i in range(n)],
        },
        schema=DOCUMENT_SCHEMA,
    )
    return table, {"qa": [test_text + " " + boilerplate], "cls": ["words not in the corpus"]}


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
