"""Reading the user's files: every format, bounded memory, and bad records skipped into a ledger (or, strict,
an error naming the file, the line and the fix)."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
import tracemalloc
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from dapt.config import SourceConfig
from dapt.data.documents import DOCUMENT_SCHEMA, make_doc_id, read_documents, write_documents
from dapt.data.ingest import (
    DEFAULT_MAX_DOCUMENT_CHARS,
    REJECTION_LEDGER_SCHEMA,
    IngestLedger,
    iter_file_documents,
)
from dapt.errors import DataError
from dapt.stages.ingest import ingest_sources

ARTICLE = (
    "Consideration is what each party to a contract gives the other. Courts have long held that a promise to do "
    "what one is already bound to do is no consideration at all, and some now enforce such promises anyway."
)


def write_jsonl(path: Path, records: list) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")


def ingest(patterns: list[str], base_dir: Path, **kwargs) -> list[dict]:
    return list(iter_file_documents(patterns, source="domain", base_dir=base_dir, **kwargs))


def ingest_with_ledger(patterns: list[str], base_dir: Path, **kwargs) -> tuple[list[dict], list[dict]]:
    """(documents, ledger rows) as the ingest stage writes them."""
    with IngestLedger(base_dir / "ledger.parquet") as ledger:
        docs = ingest(patterns, base_dir, ledger=ledger, **kwargs)
    return docs, pq.read_table(base_dir / "ledger.parquet").to_pylist()


def make_pdf(pages: list[list[str]]) -> bytes:
    """A minimal valid PDF: one page per list, one line of Helvetica text per string."""
    objects = [b"<< /Type /Catalog /Pages 2 0 R >>", b"", b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"]
    kids = []
    for lines in pages:
        escaped = [line.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)") for line in lines]
        content = ("BT /F1 11 Tf 14 TL 72 720 Td " + " T* ".join(f"({line}) Tj" for line in escaped) + " ET").encode()
        objects.append(b"<< /Length %d >>\nstream\n%s\nendstream" % (len(content), content))
        objects.append(
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /Font << /F1 3 0 R >> >> "
            b"/Contents %d 0 R >>" % len(objects)
        )
        kids.append(len(objects))
    objects[1] = b"<< /Type /Pages /Kids [%s] /Count %d >>" % (b" ".join(b"%d 0 R" % k for k in kids), len(kids))
    pdf = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(pdf))
        pdf += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(pdf)
    pdf += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    pdf += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    pdf += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(pdf)


# -- formats ------------------------------------------------------------------------------------------------


def test_text_and_markdown_files_are_one_document_each(tmp_path: Path) -> None:
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("Alpha text.\n", encoding="utf-8")
    (tmp_path / "notes" / "b.md").write_text("# Beta\n\nMarkdown body.", encoding="utf-8")
    (tmp_path / "notes" / "empty.txt").write_text("  \n\n", encoding="utf-8")
    docs, ledger = ingest_with_ledger(["notes"], tmp_path)
    assert [doc["text"] for doc in docs] == ["Alpha text.\n", "# Beta\n\nMarkdown body."]
    assert docs[0]["meta"] == {"path": "notes/a.txt"}
    assert docs[0]["source"] == "domain"
    assert [(row["path"], row["line"], row["reason"]) for row in ledger] == [("notes/empty.txt", None, "empty_file")]


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
    pq.write_table(pa.table({"body": ["one", "", "three", None]}), tmp_path / "t.parquet")
    docs, ledger = ingest_with_ledger(["t.parquet"], tmp_path, text_field="body")
    assert [(doc["text"], doc["meta"]["row"]) for doc in docs] == [("one", 0), ("three", 2)]
    assert [(row["line"], row["reason"]) for row in ledger] == [(1, "empty_text"), (3, "empty_text")]
    # A source none of whose records can be read is a config mistake: an error, whatever the policy.
    with pytest.raises(
        DataError, match=r"t\.parquet: no column 'text' \(columns: body\)\. Check the paths and text_field"
    ):
        ingest(["t.parquet"], tmp_path)


def test_csv_and_tsv_one_document_per_row_with_its_line(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text('id,text\n1,"first, with a comma"\n2,"two\nlines"\n\n3,third\n', encoding="utf-8")
    (tmp_path / "b.tsv").write_text('text\tlabel\nhe said "hi"\t1\n', encoding="utf-8")
    docs = ingest(["a.csv", "b.tsv"], tmp_path)
    assert [(doc["text"], doc["meta"]) for doc in docs] == [
        ("first, with a comma", {"path": "a.csv", "line": 2}),
        ("two\nlines", {"path": "a.csv", "line": 3}),
        ("third", {"path": "a.csv", "line": 6}),
        ('he said "hi"', {"path": "b.tsv", "line": 2}),
    ]


def test_csv_rows_that_do_not_parse_are_rejected_not_altered(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text('id,text\n1,ok\n2,one, too many\n3,"never closed\n4,lost\n', encoding="utf-8")
    docs, ledger = ingest_with_ledger(["a.csv"], tmp_path)
    assert [doc["text"] for doc in docs] == ["ok"]
    assert [(row["line"], row["reason"]) for row in ledger] == [(3, "malformed_csv"), (4, "malformed_csv")]
    assert "3 fields, the header has 2" in ledger[0]["detail"]
    (tmp_path / "b.csv").write_text("id,body\n1,x\n", encoding="utf-8")
    _, ledger = ingest_with_ledger(["a.csv", "b.csv"], tmp_path)
    assert ledger[-1]["reason"] == "missing_field" and "no column 'text' (columns: id, body)" in ledger[-1]["detail"]


PAGE = f"""<!DOCTYPE html><html><head><title>Contract law basics</title>
<style>body {{ color: red }}</style><script>var tracking = "script text";</script></head><body>
<header><nav><ul><li><a href="/">Home</a></li><li><a href="/about">About us</a></li>
<li><a href="/login">Log in</a></li></ul></nav></header>
<div class="sidebar"><h3>Related posts</h3><ul><li><a href="/a">Ten tips for landlords</a></li></ul></div>
<main><article><h1>Consideration</h1><p>{ARTICLE}</p>
<p>Promissory estoppel fills part of the gap: a promise that induces reliance binds when injustice can be avoided
only by enforcing it.</p></article></main>
<footer><p>Copyright 2026 Example Legal Blog. All rights reserved.</p><a href="/privacy">Privacy policy</a></footer>
</body></html>"""


def test_html_keeps_the_article_and_drops_navigation_footer_and_scripts(tmp_path: Path) -> None:
    (tmp_path / "page.html").write_text(PAGE, encoding="utf-8")
    (tmp_path / "latin.htm").write_bytes(
        f'<html><head><meta charset="windows-1252"></head><body><p>Caf\xe9 au lait. {ARTICLE}</p></body></html>'.encode(
            "cp1252"
        )
    )
    (tmp_path / "nothing.html").write_text("<html><body><nav><a href='/'>Home</a></nav></body></html>")
    docs, ledger = ingest_with_ledger(["*.htm*"], tmp_path)
    by_path = {doc["meta"]["path"]: doc for doc in docs}
    text = by_path["page.html"]["text"]
    assert ARTICLE in text and "Promissory estoppel" in text and text.startswith("Consideration")
    for boilerplate in ("Home", "About us", "Log in", "Ten tips", "Copyright", "Privacy", "script text", "color"):
        assert boilerplate not in text
    assert by_path["page.html"]["meta"]["title"] == "Contract law basics"
    assert by_path["latin.htm"]["text"].startswith("Café au lait.")  # the page's declared encoding is honoured
    assert [(row["path"], row["reason"]) for row in ledger] == [("nothing.html", "empty_text")]


def test_pdf_is_one_document_with_the_text_of_every_page(tmp_path: Path) -> None:
    (tmp_path / "brief.pdf").write_bytes(
        make_pdf([["Consideration (the price of a promise)", "is required."], ["Page two goes on."]])
    )
    (tmp_path / "scan.pdf").write_bytes(make_pdf([[], []]))  # pages without a text layer
    (tmp_path / "broken.pdf").write_bytes(b"%PDF-1.4\nthis is not a PDF body")
    docs, ledger = ingest_with_ledger(["*.pdf"], tmp_path)
    (doc,) = docs
    assert doc["text"] == "Consideration (the price of a promise)\nis required.\n\nPage two goes on."
    assert doc["meta"] == {"path": "brief.pdf", "pages": 2}
    rows = {row["path"]: row for row in ledger}
    assert rows["scan.pdf"]["reason"] == "empty_text" and "OCR" in rows["scan.pdf"]["detail"]
    assert rows["broken.pdf"]["reason"] == "unreadable_file"


def test_gzip_and_zstd_compressed_text_formats(tmp_path: Path) -> None:
    lines = "".join(json.dumps({"text": f"line {i}"}) + "\n" for i in range(3)).encode()
    zstd = zstandard.ZstdCompressor()
    (tmp_path / "a.jsonl.gz").write_bytes(gzip.compress(lines))
    (tmp_path / "b.jsonl.zst").write_bytes(zstd.compress(lines[:20]) + zstd.compress(lines[20:]))  # two frames
    (tmp_path / "c.txt.zst").write_bytes(zstd.compress(ARTICLE.encode()))
    (tmp_path / "d.csv.gz").write_bytes(gzip.compress(b"text\nfrom csv\n"))
    (tmp_path / "e.html.gz").write_bytes(gzip.compress(PAGE.encode()))
    docs = ingest(["*.gz", "*.zst"], tmp_path)
    assert [(doc["meta"]["path"], doc["text"][:9]) for doc in docs] == [
        ("a.jsonl.gz", "line 0"),
        ("a.jsonl.gz", "line 1"),
        ("a.jsonl.gz", "line 2"),
        ("d.csv.gz", "from csv"),
        ("e.html.gz", "Considera"),
        ("b.jsonl.zst", "line 0"),
        ("b.jsonl.zst", "line 1"),
        ("b.jsonl.zst", "line 2"),
        ("c.txt.zst", "Considera"),
    ]
    assert docs[5]["meta"] == {"path": "b.jsonl.zst", "line": 1}


def test_truncated_compressed_file_keeps_what_was_read_and_says_where_it_broke(tmp_path: Path) -> None:
    lines = "".join(json.dumps({"text": f"document {i} " + "x" * (i % 97)}) + "\n" for i in range(20_000)).encode()
    packed = {"a.jsonl.gz": gzip.compress(lines), "b.jsonl.zst": zstandard.ZstdCompressor().compress(lines)}
    for name, data in packed.items():
        (tmp_path / name).write_bytes(data[: len(data) // 2])
    docs, ledger = ingest_with_ledger(["a.jsonl.gz", "b.jsonl.zst"], tmp_path)
    assert {doc["meta"]["path"] for doc in docs} == {"a.jsonl.gz", "b.jsonl.zst"}
    assert [(row["path"], row["reason"]) for row in ledger] == [
        ("a.jsonl.gz", "unreadable_file"),
        ("b.jsonl.zst", "unreadable_file"),
    ]
    assert all("the records before it were read" in row["detail"] for row in ledger)
    assert "truncated" in ledger[1]["detail"]  # zstd's own reader would have ended early without a word


# -- bad input: skipped into the ledger by default, an error naming file:line under strict ----------------------


def parquet_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()


def arrow_stream_bytes(table: pa.Table) -> bytes:
    """An Arrow IPC stream, the format of `datasets.save_to_disk`'s data files."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table, max_chunksize=2)
    return sink.getvalue().to_pybytes()


BAD_INPUTS = {
    # kind: (file name, content, reason, where messages say it is, records in the file)
    "malformed_json": ("d.jsonl", b'{"text": "ok"}\n{"text": "broken\n', "malformed_json", "d.jsonl:2", 2),
    "json_not_an_object": ("d.jsonl", b'{"text": "ok"}\n["text"]\n', "malformed_json", "d.jsonl:2", 2),
    "undecodable_jsonl": ("d.jsonl", b'{"text": "ok"}\n{"text": "caf\xe9"}\n', "undecodable", "d.jsonl:2", 2),
    "undecodable_txt": ("latin.txt", "first line\ncaf\xe9\n".encode("latin-1"), "undecodable", "latin.txt:2", 1),
    "undecodable_csv": ("d.csv", b"text\nok\ncaf\xe9\n", "undecodable", "d.csv:3", 2),
    "utf16_text": ("wide.txt", "hello".encode("utf-16"), "undecodable", "wide.txt", 1),
    "missing_field": ("d.jsonl", b'{"text": "ok"}\n{"body": "x"}\n', "missing_field", "d.jsonl:2", 2),
    "not_a_string": ("d.jsonl", b'{"text": "ok"}\n{"text": 42}\n', "not_text", "d.jsonl:2", 2),
    "empty_text": ("d.jsonl", b'{"text": "ok"}\n{"text": "  "}\n', "empty_text", "d.jsonl:2", 2),
    "empty_file": ("empty.jsonl", b"", "empty_file", "empty.jsonl", 1),
    "blank_lines_only": ("blank.jsonl", b"\n\n  \n", "empty_file", "blank.jsonl", 1),
    "binary_file": ("image.txt", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "binary_file", "image.txt", 1),
    "too_long_jsonl": (
        "d.jsonl",
        b'{"text": "ok"}\n{"text": "' + b"x" * 150 + b'"}\n',
        "document_too_long",
        "d.jsonl:2",
        2,
    ),
    "too_long_txt": ("long.txt", b"y" * 500, "document_too_long", "long.txt", 1),
    "too_long_csv": ("d.csv", b"text\nok\n" + b"z" * 150 + b"\n", "document_too_long", "d.csv:3", 2),
    "header_only_csv": ("d.csv", b"id,text\n", "empty_file", "d.csv", 1),
    "numbers_column": ("n.parquet", parquet_bytes(pa.table({"text": [1, 2]})), "not_text", "n.parquet", 1),
    "numbers_arrow": ("n.arrow", arrow_stream_bytes(pa.table({"text": [1, 2]})), "not_text", "n.arrow", 1),
    "not_arrow": ("d.arrow", b"ARROW1 but nothing more", "unreadable_file", "d.arrow", 1),
    "damaged_gzip": ("d.jsonl.gz", b"\x1f\x8b\x08\x00garbage", "unreadable_file", "d.jsonl.gz", 1),
}


@pytest.mark.parametrize("kind", sorted(BAD_INPUTS))
def test_bad_input_is_skipped_into_the_ledger_or_stops_a_strict_source(tmp_path: Path, kind: str) -> None:
    name, content, reason, where, records = BAD_INPUTS[kind]
    (tmp_path / name).write_bytes(content)
    (tmp_path / "good.txt").write_text("A good document keeps the source alive.", encoding="utf-8")
    docs, ledger = ingest_with_ledger([name, "good.txt"], tmp_path, max_document_chars=100)
    (row,) = [row for row in ledger if row["path"] == name]
    assert row["reason"] == reason and row["block"] == "ingest" and row["source"] == "domain"
    line = int(where.rpartition(":")[2]) if ":" in where else None
    assert row["line"] == line
    assert len(docs) + len(ledger) == records + 1  # nothing is lost: each record is a document or a ledger row

    with pytest.raises(DataError) as error:
        ingest([name, "good.txt"], tmp_path, max_document_chars=100, strict=True)
    assert str(error.value).startswith(f"{where}: ") and "strict" in str(error.value)


def test_leading_blank_lines_do_not_make_a_file_empty(tmp_path: Path) -> None:
    (tmp_path / "d.jsonl").write_text("\n" * 10_000 + '{"text": "late"}\n', encoding="utf-8")
    assert [(doc["text"], doc["meta"]["line"]) for doc in ingest(["d.jsonl"], tmp_path)] == [("late", 10_001)]


def test_strict_errors_say_how_to_fix_the_record(tmp_path: Path) -> None:
    (tmp_path / "d.jsonl").write_text('{"body": "x"}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"d\.jsonl:1: no field 'text' \(keys in this record: body\); set text_field:"):
        ingest(["d.jsonl"], tmp_path, strict=True)
    (tmp_path / "latin.txt").write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin\.txt:1: not valid UTF-8 .*re-save it as UTF-8"):
        ingest(["latin.txt"], tmp_path, strict=True)


def test_without_a_ledger_rejections_are_counted_and_logged(tmp_path: Path, caplog) -> None:
    (tmp_path / "d.jsonl").write_text('{"text": "ok"}\n{"text": \n', encoding="utf-8")
    assert [doc["text"] for doc in ingest(["d.jsonl"], tmp_path)] == ["ok"]
    assert "1 record(s) skipped (malformed_json 1), e.g. d.jsonl:2" in caplog.text


def test_config_mistakes_stay_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError) as error:
        ingest(["missing/*.jsonl"], tmp_path)
    assert "missing/*.jsonl" in str(error.value) and str(tmp_path.resolve()) in str(error.value)
    (tmp_path / "report.docx").write_bytes(b"PK")
    with pytest.raises(DataError, match=r"unsupported file type '\.docx'.*\.txt, \.md, \.jsonl, \.csv, \.tsv"):
        ingest(["report.docx"], tmp_path)
    (tmp_path / "backup.tar.gz").write_bytes(b"")
    with pytest.raises(DataError, match=r"unsupported file type '\.tar\.gz'"):
        ingest(["backup.tar.gz"], tmp_path)


def test_one_huge_line_is_never_held_in_memory(tmp_path: Path) -> None:
    with (tmp_path / "d.jsonl").open("w", encoding="utf-8") as handle:
        handle.write('{"text": "before"}\n{"text": "' + "w" * 30_000_000 + '"}\n{"text": "after"}\n')
    tracemalloc.start()
    try:
        docs, ledger = ingest_with_ledger(["d.jsonl"], tmp_path, max_document_chars=10_000)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert [doc["text"] for doc in docs] == ["before", "after"]
    assert [(row["line"], row["reason"]) for row in ledger] == [(2, "document_too_long")]
    assert peak < 5_000_000  # the 30 MB line was read in 84 KB pieces and dropped


# -- inputs at scale: many files, Parquet datasets, datasets' save_to_disk folders ----------------------------------


def test_a_folder_of_thousands_of_files_is_read_in_path_order(tmp_path: Path) -> None:
    for number in range(1_500):
        folder = tmp_path / "notes" / f"group{number // 500}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"note{number % 500:04d}.txt").write_text(f"note {number}", encoding="utf-8")
    (tmp_path / "notes" / ".cache").mkdir()
    (tmp_path / "notes" / ".cache" / "old.txt").write_text("hidden folder", encoding="utf-8")
    (tmp_path / "notes" / "group0" / ".draft.txt").write_text("hidden file", encoding="utf-8")
    (tmp_path / "notes" / "README").write_text("no supported suffix", encoding="utf-8")
    docs = ingest(["notes"], tmp_path)
    assert [doc["text"] for doc in docs] == [f"note {number}" for number in range(1_500)]
    assert docs[501]["meta"] == {"path": "notes/group1/note0001.txt"}
    assert [doc["id"] for doc in ingest(["notes/**/*.txt"], tmp_path)] == [doc["id"] for doc in docs]


def test_a_parquet_dataset_in_many_files_reads_as_one_in_path_order(tmp_path: Path) -> None:
    # Spark / Hive layout: partition folders, part files, a _SUCCESS marker and hidden checksum files.
    rows = iter(range(10_000))
    for year in (2023, 2024):
        folder = tmp_path / "corpus" / f"year={year}"
        folder.mkdir(parents=True)
        for part in range(3):
            texts = [f"row {next(rows)}" for _ in range(1_000 + part)]
            pq.write_table(pa.table({"text": texts}), folder / f"part-{part:05d}.parquet", row_group_size=300)
            (folder / f".part-{part:05d}.parquet.crc").write_bytes(b"crc")
    (tmp_path / "corpus" / "_SUCCESS").write_bytes(b"")
    pq.write_table(pa.table({"body": ["wrong column"]}), tmp_path / "corpus" / "year=2024" / "part-00003.parquet")
    pq.write_table(pa.table({"text": ["kept", None, "kept too"]}), tmp_path / "corpus" / "zz.parquet")

    docs, ledger = ingest_with_ledger(["corpus"], tmp_path)
    assert [doc["text"] for doc in docs] == [f"row {n}" for n in range(6_006)] + ["kept", "kept too"]
    assert docs[1_001]["meta"] == {"path": "corpus/year=2023/part-00001.parquet", "row": 1}  # part 0 holds 1,000
    assert docs[-1]["meta"] == {"path": "corpus/zz.parquet", "row": 2}
    assert [(row["path"], row["line"], row["reason"]) for row in ledger] == [
        ("corpus/year=2024/part-00003.parquet", None, "missing_field"),
        ("corpus/zz.parquet", 1, "empty_text"),
    ]


def test_a_datasets_save_to_disk_folder_is_read_in_its_own_order(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")  # in the dev extras (via lm-eval); dapt itself never imports it
    texts = [f"example {i}" for i in range(2_500)]
    texts[1_234] = None
    dataset = datasets.Dataset.from_dict({"text": texts, "label": list(range(2_500))})
    dataset.save_to_disk(str(tmp_path / "hf"), num_shards=3)
    # A cache file that `.map` on the loaded dataset leaves in its folder is not part of the saved dataset.
    (tmp_path / "hf" / "cache-0123abcd.arrow").write_bytes((tmp_path / "hf" / "data-00000-of-00003.arrow").read_bytes())

    docs, ledger = ingest_with_ledger(["hf"], tmp_path)
    assert [doc["text"] for doc in docs] == [text for text in texts if text is not None]
    assert docs[0]["meta"] == {"path": "hf/data-00000-of-00003.arrow", "row": 0}
    assert docs[-1]["meta"] == {"path": "hf/data-00002-of-00003.arrow", "row": 832}  # shards of 834, 833, 833
    assert [(row["path"], row["line"], row["reason"]) for row in ledger] == [
        ("hf/data-00001-of-00003.arrow", 1_234 - 834, "empty_text")
    ]

    splits = datasets.DatasetDict({"train": dataset.select(range(5)), "test": dataset.select(range(100, 102))})
    splits.save_to_disk(str(tmp_path / "splits"))
    docs = ingest(["splits"], tmp_path)
    assert [doc["text"] for doc in docs] == texts[:5] + texts[100:102]  # train, then test: dataset_dict.json's order
    assert docs[-1]["meta"] == {"path": "splits/test/data-00000-of-00001.arrow", "row": 1}


def test_save_to_disk_folders_and_arrow_files_are_read_without_datasets(tmp_path: Path) -> None:
    folder = tmp_path / "hf"
    folder.mkdir()
    table = pa.table({"text": [f"row {i}" for i in range(5)]})
    (folder / "data-00000-of-00002.arrow").write_bytes(arrow_stream_bytes(table.slice(0, 3)))
    (folder / "data-00001-of-00002.arrow").write_bytes(arrow_stream_bytes(table.slice(3)))
    listed = [{"filename": "data-00001-of-00002.arrow"}, {"filename": "data-00000-of-00002.arrow"}]
    (folder / "state.json").write_text(json.dumps({"_data_files": listed}))
    with pa.ipc.new_file(tmp_path / "feather.arrow", table.schema) as writer:  # the IPC file format too
        writer.write_table(table.slice(0, 2))
    code = (
        "import sys; from pathlib import Path; from dapt.data.ingest import iter_file_documents; "
        f"docs = list(iter_file_documents(['hf', 'feather.arrow'], source='s', base_dir=Path({str(tmp_path)!r}))); "
        "print([doc['text'] for doc in docs]); print('datasets' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    # state.json's order, not the names' order
    assert result.stdout.splitlines() == ["['row 3', 'row 4', 'row 0', 'row 1', 'row 2', 'row 0', 'row 1']", "False"]

    (folder / "data-00001-of-00002.arrow").unlink()
    with pytest.raises(DataError, match=r"state\.json lists data-00001-of-00002\.arrow, which the folder lacks"):
        ingest(["hf"], tmp_path)
    (folder / "state.json").write_text("{}")
    with pytest.raises(DataError, match=r"not a datasets state\.json"):
        ingest(["hf"], tmp_path)


def test_a_truncated_arrow_file_keeps_what_was_read_and_says_where_it_broke(tmp_path: Path) -> None:
    data = arrow_stream_bytes(pa.table({"text": [f"row {i}" for i in range(100)]}))  # batches of 2 rows
    (tmp_path / "cut.arrow").write_bytes(data[: len(data) // 2])
    docs, ledger = ingest_with_ledger(["cut.arrow"], tmp_path)
    assert 0 < len(docs) < 100 and [doc["text"] for doc in docs] == [f"row {i}" for i in range(len(docs))]
    (row,) = ledger
    assert row["reason"] == "unreadable_file" and f"after record {len(docs) - 1}" in row["detail"]


# -- writing ------------------------------------------------------------------------------------------------


def test_written_documents_read_back(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "d.jsonl", [{"text": f"document {i}"} for i in range(25)])
    docs = ingest(["d.jsonl"], tmp_path)
    assert write_documents(docs, tmp_path / "corpus.parquet", batch_size=10) == 25
    table = read_documents(tmp_path / "corpus.parquet")
    assert table.schema == DOCUMENT_SCHEMA
    assert table.column("text").to_pylist() == [doc["text"] for doc in docs]
    assert json.loads(table.column("meta")[3].as_py()) == {"path": "d.jsonl", "line": 4}
    assert pq.ParquetFile(tmp_path / "corpus.parquet").num_row_groups == 3
    # long documents close a row group early: memory per batch is bounded in characters too
    assert write_documents(docs, tmp_path / "chars.parquet", batch_chars=30) == 25
    assert pq.ParquetFile(tmp_path / "chars.parquet").num_row_groups == 9
    assert write_documents([], tmp_path / "empty.parquet") == 0
    assert read_documents(tmp_path / "empty.parquet").num_rows == 0


def test_ingest_stage_writes_documents_and_ledger_and_counts_rejections(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "d.jsonl").write_text('{"text": "one"}\n{"text": 1}\n{oops\n{"text": "two"}\n', encoding="utf-8")
    (tmp_path / "b.txt").write_text("plain", encoding="utf-8")
    sources = [
        SourceConfig(name="web", role="domain", paths=["d.jsonl"]),
        SourceConfig(name="notes", role="replay", paths=["b.txt"]),
    ]
    out = tmp_path / "ingest"
    out.mkdir()
    logged: list[str] = []
    metrics = ingest_sources(sources, out, logged.append)
    assert metrics["documents"] == 3 and metrics["rejected"] == 2
    assert metrics["rejected_by_reason"] == {"malformed_json": 1, "not_text": 1}
    assert metrics["by_source"]["web"] == {"role": "domain", "documents": 2, "chars": 6, "rejected": 2}
    assert read_documents(out / "documents.parquet").num_rows == 3
    ledger = pq.read_table(out / "rejection_ledger.parquet")
    assert ledger.schema == REJECTION_LEDGER_SCHEMA
    assert ledger.select(["source", "path", "line", "reason"]).to_pylist() == [
        {"source": "web", "path": "d.jsonl", "line": 2, "reason": "not_text"},
        {"source": "web", "path": "d.jsonl", "line": 3, "reason": "malformed_json"},
    ]
    assert any("rejected 2 records" in line for line in logged)

    strict = [SourceConfig(name="web", role="domain", paths=["d.jsonl"], strict=True)]
    with pytest.raises(DataError, match=r"d\.jsonl:2: field 'text' is int"):
        ingest_sources(strict, out, logged.append)


def test_source_config_default_matches_the_reader() -> None:
    source = SourceConfig(name="s", role="domain", paths=["x"])
    assert source.max_document_chars == DEFAULT_MAX_DOCUMENT_CHARS and source.strict is False
