"""Reading the user's files: what is read, and errors that name the file, the line and the fix."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dapt.data.documents import DOCUMENT_SCHEMA, make_doc_id, read_documents, write_documents
from dapt.data.ingest import iter_file_documents
from dapt.errors import DataError


def write_jsonl(path: Path, records: list) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")


def ingest(patterns: list[str], base_dir: Path, **kwargs) -> list[dict]:
    return list(iter_file_documents(patterns, source="domain", base_dir=base_dir, **kwargs))


def test_text_and_markdown_files_are_one_document_each(tmp_path: Path) -> None:
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("Alpha text.\n", encoding="utf-8")
    (tmp_path / "notes" / "b.md").write_text("# Beta\n\nMarkdown body.", encoding="utf-8")
    (tmp_path / "notes" / "empty.txt").write_text("  \n\n", encoding="utf-8")  # skipped, not an error
    docs = ingest(["notes"], tmp_path)
    assert [doc["text"] for doc in docs] == ["Alpha text.\n", "# Beta\n\nMarkdown body."]
    assert docs[0]["meta"] == {"path": "notes/a.txt"}
    assert docs[0]["source"] == "domain"


def test_jsonl_with_dotted_text_field(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "d.jsonl", [{"doc": {"body": "first"}}, {"doc": {"body": "second"}}])
    docs = ingest(["d.jsonl"], tmp_path, text_field="doc.body")
    assert [doc["text"] for doc in docs] == ["first", "second"]
    assert [doc["meta"]["line"] for doc in docs] == [1, 2]


def test_glob_with_double_star_and_stable_ids(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "x" / "y" / "deep.jsonl", [{"text": "deep"}])
    write_jsonl(tmp_path / "top.jsonl", [{"text": "top"}])
    docs = ingest(["**/*.jsonl"], tmp_path)
    assert sorted(doc["text"] for doc in docs) == ["deep", "top"]
    assert [doc["id"] for doc in docs] == [doc["id"] for doc in ingest(["**/*.jsonl"], tmp_path)]
    assert docs[0]["id"] == make_doc_id("domain", f"{docs[0]['meta']['path']}:1")


def test_parquet_text_column(tmp_path: Path) -> None:
    pq.write_table(pa.table({"body": ["one", "", "three"]}), tmp_path / "t.parquet")
    docs = ingest(["t.parquet"], tmp_path, text_field="body")
    assert [(doc["text"], doc["meta"]["row"]) for doc in docs] == [("one", 0), ("three", 2)]
    with pytest.raises(DataError, match=r"no column 'text' \(columns: body\); set text_field"):
        ingest(["t.parquet"], tmp_path)


def test_pattern_matching_nothing_names_the_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError) as error:
        ingest(["missing/*.jsonl"], tmp_path)
    assert "missing/*.jsonl" in str(error.value)
    assert str(tmp_path.resolve()) in str(error.value)


def test_malformed_jsonl_line_is_reported_with_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{"text": "broken\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"bad\.jsonl:2: not valid JSON"):
        ingest(["bad.jsonl"], tmp_path)


def test_missing_text_field_says_which_setting_to_change(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "d.jsonl", [{"body": "x"}])
    with pytest.raises(DataError) as error:
        ingest(["d.jsonl"], tmp_path)
    message = str(error.value)
    assert "d.jsonl:1" in message and "'text'" in message and "body" in message
    assert "set text_field:" in message


def test_non_string_text_is_an_error(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "d.jsonl", [{"text": "fine"}, {"text": 42}])
    with pytest.raises(DataError, match=r"d\.jsonl:2: field 'text' is int, not a string"):
        ingest(["d.jsonl"], tmp_path)


def test_undecodable_utf8_names_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "latin.txt").write_bytes("first line\ncaf\xe9\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin\.txt:2: not valid UTF-8.*UTF-8"):
        ingest(["latin.txt"], tmp_path)
    (tmp_path / "latin.jsonl").write_bytes(b'{"text": "ok"}\n{"text": "caf\xe9"}\n')
    with pytest.raises(DataError, match=r"latin\.jsonl:2: not valid UTF-8"):
        ingest(["latin.jsonl"], tmp_path)


def test_unsupported_extension_lists_supported_ones(tmp_path: Path) -> None:
    (tmp_path / "report.docx").write_bytes(b"PK")
    with pytest.raises(DataError, match=r"unsupported file type '\.docx'.*\.txt, \.md, \.jsonl, \.parquet"):
        ingest(["report.docx"], tmp_path)


def test_written_documents_read_back(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "d.jsonl", [{"text": f"document {i}"} for i in range(25)])
    docs = ingest(["d.jsonl"], tmp_path)
    assert write_documents(docs, tmp_path / "corpus.parquet", batch_size=10) == 25
    table = read_documents(tmp_path / "corpus.parquet")
    assert table.schema == DOCUMENT_SCHEMA
    assert table.column("text").to_pylist() == [doc["text"] for doc in docs]
    assert json.loads(table.column("meta")[3].as_py()) == {"path": "d.jsonl", "line": 4}
    assert pq.ParquetFile(tmp_path / "corpus.parquet").num_row_groups == 3
    assert write_documents([], tmp_path / "empty.parquet") == 0
    assert read_documents(tmp_path / "empty.parquet").num_rows == 0
