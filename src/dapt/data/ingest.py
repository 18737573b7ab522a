"""Read the user's files into document dicts: text, Markdown, JSONL, CSV/TSV, Parquet, Arrow, HTML and PDF,
and the text formats gzip- or zstd-compressed (`.jsonl.gz`, `.txt.zst`, ...).

Inputs at scale: a folder (or a glob) of thousands of files is read file after file in sorted path order; a
Parquet dataset split in many files is such a folder (`part-00000.parquet`, ..., Hive-style subfolders
included); a Hugging Face `datasets` folder written by `Dataset.save_to_disk` (Arrow IPC stream files
`data-0000x-of-0000N.arrow` beside `state.json`) is read through pyarrow's IPC reader in the order its
`state.json` lists, without importing `datasets`, and a `DatasetDict` folder split after split. Many small
files cost little more than one file of the same documents: 2,000 JSONL files 1.16x its time, 2,000 Parquet
files of 10 kB 1.6x (pyarrow's ~150 µs to open each), 200 files no more (docs/data-and-curation.md).

Memory stays bounded whatever the corpus size: line-based files are read one line at a time (a line is
read at most up to a byte limit, so one huge line cannot fill memory either), Parquet and Arrow one record
batch at a time (Arrow files memory-mapped), and a whole-file document (text, HTML, PDF) only up to
`max_document_chars`.

A record that cannot be used as it is — a malformed JSON line or CSV row, bytes that are not UTF-8, a
missing or non-string text field, an empty or binary file, a document longer than `max_document_chars`, a
corrupt or truncated file — is never guessed at (no Latin-1 fallback, no repair). By default it is skipped
and written to the ingest rejection ledger with its file, line and reason, so that nothing is dropped
without a trace; with `strict` the first one stops ingestion with a `DataError` naming `file:line` and
the fix. A pattern that matches no file, an unsupported file type and a source none of whose records can
be read are mistakes in the config, not bad records, and are always errors.
"""

from __future__ import annotations

import csv
import glob
import gzip
import io
import json
import logging
import os
import zlib
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import pyarrow as pa
import pyarrow.parquet as pq

from dapt.data.curate import LEDGER_SCHEMA
from dapt.data.documents import make_doc_id, stream_parquet
from dapt.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

# File formats by suffix; the text formats may also end in a compression suffix.
FORMATS = {
    ".txt": "text",
    ".md": "text",
    ".jsonl": "jsonl",
    ".csv": "csv",
    ".tsv": "tsv",
    ".html": "html",
    ".htm": "html",
    ".parquet": "parquet",
    ".arrow": "arrow",  # Arrow IPC, stream or file format (what `datasets` writes)
    ".pdf": "pdf",
}
COMPRESSIONS = {".gz": "gzip", ".zst": "zstd"}
COMPRESSIBLE_FORMATS = ("text", "jsonl", "csv", "tsv", "html")
_SUPPORTED_TEXT = (
    ", ".join(FORMATS) + "; the text formats also as .gz or .zst; a `datasets` save_to_disk folder (state.json)"
)
# Rows of a Parquet or Arrow batch turned into Python strings at a time: memory follows this, not the file.
_ROWS_AT_A_TIME = 1024

# 10M characters is about three times "War and Peace": a longer "document" is a dump or a concatenation,
# and reading it would cost up to 40 MB of memory per document. Curation's max_chars (100k by default) is
# the length filter to tune; this limit only keeps ingestion's memory bounded.
DEFAULT_MAX_DOCUMENT_CHARS = 10_000_000
# UTF-8 takes at most 4 bytes a character, so a whole-file document of more bytes is surely too long.
_BYTES_PER_CHAR = 4
# A JSONL line also holds keys, other fields and escapes (`\u00e9` is 6 bytes for 1 character).
_JSONL_BYTES_PER_CHAR = 8
_SNIFF_BYTES = 8192  # a NUL byte in the first 8 KiB marks a binary file, as git and grep decide it
_UTF8_FIX = "re-save it as UTF-8 (e.g. `iconv -f latin1 -t utf-8 in > out`)"

# Every reason ingestion rejects a record for, with the fix a strict-mode error suggests.
REJECTION_FIXES = {
    "malformed_json": "each line of a .jsonl file must be one complete JSON object",
    "malformed_csv": 'quote fields holding the delimiter, a quote or a line break ("..."), as spreadsheets export them',
    "undecodable": _UTF8_FIX,
    "binary_file": "it is not a text file; remove it or narrow the source's paths",
    "empty_file": "remove the empty file or narrow the source's paths",
    "empty_text": "remove the empty record, or check that text_field names the text",
    "missing_field": "set text_field: to the key or column holding the text (a dotted path like doc.body reaches "
    "nested objects)",
    "not_text": "set text_field: to the key holding the text, or fix this record",
    "document_too_long": "split the document, or raise the source's max_document_chars if it really is one document",
    "unreadable_file": "re-create or re-download the file",
}

# The rejection ledger of ingestion: curation's ledger columns (block is "ingest") plus where the record is.
# `line` is the 1-based line of a text format, the 0-based row of a Parquet or Arrow file, the 1-based page of a
# PDF, and null when the whole file was rejected.
REJECTION_LEDGER_SCHEMA = pa.schema([*LEDGER_SCHEMA, pa.field("path", pa.string()), pa.field("line", pa.int64())])
INGEST_BLOCK = "ingest"


def file_format(path: Path) -> tuple[str, str | None] | None:
    """(format, compression or None) of a file from its name, or None when it is not supported."""
    name = path.name.lower()
    compression = None
    for suffix, kind in COMPRESSIONS.items():
        if name.endswith(suffix):
            name, compression = name.removesuffix(suffix), kind
    fmt = FORMATS.get(os.path.splitext(name)[1])
    if fmt is None or (compression is not None and fmt not in COMPRESSIBLE_FORMATS):
        return None
    return fmt, compression


def location(path: str, line: int | None) -> str:
    """A record's place as people write it: `a.jsonl:3`, `t.parquet row 3`, `doc.pdf page 3`, or the path."""
    if line is None:
        return path
    if path.lower().endswith((".parquet", ".arrow")):
        return f"{path} row {line}"
    if path.lower().endswith(".pdf"):
        return f"{path} page {line}"
    return f"{path}:{line}"


def _excerpt(text: str, limit: int = 60) -> str:
    text = " ".join(text.split())
    return repr(text if len(text) <= limit else text[:limit] + "…")


@dataclass(frozen=True)
class Rejected:
    """A record ingestion cannot use: `reason` is a stable key to count by, `detail` says what was found.

    `line` locates it in its file (see REJECTION_LEDGER_SCHEMA); None means the whole file.
    """

    reason: str
    detail: str
    line: int | None = None


# ---------------------------------------------------------------------------------------------------------
# the ledger


class IngestLedger:
    """The records ingestion skipped, one row each (REJECTION_LEDGER_SCHEMA), counted by reason and source.

    With a `path`, rows are streamed to that Parquet file in batches, so a corpus with millions of bad lines
    does not fill memory; the file is written even when nothing was rejected, so readers never meet a
    missing file. Without one, rows are only counted. Use as a context manager, or call `close()`.
    """

    def __init__(self, path: Path | None = None, *, batch_size: int = 10_000) -> None:
        self.path = None if path is None else Path(path)
        self.batch_size = batch_size
        self.by_reason: Counter[str] = Counter()
        self.by_source: Counter[str] = Counter()
        self.first: Rejected | None = None
        self.first_where = ""
        self._rows: dict[str, list[Any]] = {name: [] for name in REJECTION_LEDGER_SCHEMA.names}
        self._writer: pq.ParquetWriter | None = None

    @property
    def total(self) -> int:
        return sum(self.by_reason.values())

    def add(self, rejected: Rejected, *, source: str, path: str) -> None:
        locator = path if rejected.line is None else f"{path}:{rejected.line}"  # the id the document would have had
        self.by_reason[rejected.reason] += 1
        self.by_source[source] += 1
        if self.first is None:
            self.first, self.first_where = rejected, location(path, rejected.line)
        if self.path is None:
            return
        row = (
            make_doc_id(source, locator),
            source,
            INGEST_BLOCK,
            rejected.reason,
            rejected.detail,
            path,
            rejected.line,
        )
        for name, value in zip(REJECTION_LEDGER_SCHEMA.names, row, strict=True):
            self._rows[name].append(value)
        if len(self._rows["id"]) >= self.batch_size:
            self._flush()

    def summary(self) -> str:
        """`malformed_json 2, empty_text 1`: the counts by reason, most frequent first."""
        return ", ".join(f"{reason} {count}" for reason, count in self.by_reason.most_common()) or "none"

    def _flush(self) -> None:
        assert self.path is not None
        if self._writer is None:
            self._writer = pq.ParquetWriter(self.path, REJECTION_LEDGER_SCHEMA, compression="zstd")
        self._writer.write_table(pa.table(self._rows, schema=REJECTION_LEDGER_SCHEMA))
        for column in self._rows.values():
            column.clear()

    def close(self) -> None:
        if self.path is None:
            return
        if self._rows["id"] or self._writer is None:
            self._flush()
        assert self._writer is not None
        self._writer.close()

    def __enter__(self) -> IngestLedger:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def strict_error(rejected: Rejected, where: str) -> DataError:
    """The error strict mode raises for a rejected record: where, what, and how to fix it."""
    return DataError(
        f"{where}: {rejected.detail}; {REJECTION_FIXES[rejected.reason]} (strict: true stops at the first bad "
        "record; without it the record is skipped and listed in the ingest rejection ledger)"
    )


# ---------------------------------------------------------------------------------------------------------
# records and fields


def lookup_field(record: dict, field: str) -> Any:
    """The value at `field` in a JSON-like record; a dotted field (`doc.body`) walks nested objects.

    A key that itself contains dots is matched first, so `{"doc.body": ...}` works too. Raises KeyError
    when the path does not exist.
    """
    if field in record:
        return record[field]
    value: Any = record
    for part in field.split("."):
        if not isinstance(value, dict) or part not in value:
            raise KeyError(field)
        value = value[part]
    return value


def _field_text(record: dict, field: str) -> str | Rejected:
    """The string at `field` in `record`, or why there is none."""
    try:
        value = lookup_field(record, field)
    except KeyError:
        keys = ", ".join(sorted(map(str, record))) or "none"
        return Rejected("missing_field", f"no field '{field}' (keys in this record: {keys})")
    if value is None:
        return Rejected("empty_text", f"field '{field}' is null")
    if not isinstance(value, str):
        return Rejected("not_text", f"field '{field}' is {type(value).__name__}, not a string")
    return value


def text_of(record: dict, field: str, where: str, setting: str = "text_field") -> str:
    """The string at `field` in `record`, else a DataError saying where, what and which setting to fix."""
    text = _field_text(record, field)
    if not isinstance(text, Rejected):
        return text
    if text.reason == "missing_field":
        fix = f"set {setting}: to the key holding the text (a dotted path like doc.body reaches nested objects)"
    else:
        fix = f"set {setting}: to the key holding the text, or fix this record"
    raise DataError(f"{where}: {text.detail}; {fix}")


def _display(path: Path, base_dir: Path) -> str:
    """The path as the user wrote it relative to base_dir when possible: short and machine-independent.

    A string prefix rather than `Path.relative_to`, which cost more than opening the file when thousands of
    small files are read.
    """
    shown, base = path.as_posix(), base_dir.as_posix().rstrip("/") + "/"
    return shown[len(base) :] if shown.startswith(base) else shown


def saved_dataset_files(folder: Path) -> list[Path] | None:
    """The Arrow files of a Hugging Face `datasets` folder written by `save_to_disk`, in the dataset's row
    order; None when `folder` is not one.

    A `Dataset` folder lists its files in `state.json` (`_data_files`); a `DatasetDict` folder lists its splits
    in `dataset_dict.json`, each a `Dataset` folder, and gives their files split after split. Only the listed
    files are read: `cache-*.arrow` files that `datasets` leaves beside them (from `.map` on a loaded
    dataset) are not part of the saved dataset.
    """
    splits_file, state_file = folder / "dataset_dict.json", folder / "state.json"
    if splits_file.is_file():
        try:
            splits = json.loads(splits_file.read_text(encoding="utf-8"))["splits"]
        except (ValueError, KeyError, TypeError):
            raise DataError(f'{splits_file}: not a datasets dataset_dict.json (no "splits" list)') from None
        files: list[Path] = []
        for split in splits:
            found = saved_dataset_files(folder / str(split))
            if found is None:
                raise DataError(
                    f"{splits_file} lists the split '{split}', but {folder / str(split)} holds no state.json; "
                    "save the DatasetDict again with save_to_disk"
                )
            files += found
        return files
    if not state_file.is_file():
        return None
    try:
        names = [entry["filename"] for entry in json.loads(state_file.read_text(encoding="utf-8"))["_data_files"]]
    except (ValueError, KeyError, TypeError):
        raise DataError(
            f'{state_file}: not a datasets state.json (no "_data_files" list of {{"filename": ...}}); '
            "save the dataset again with save_to_disk"
        ) from None
    missing = [name for name in names if not (folder / name).is_file()]
    if missing:
        raise DataError(
            f"{folder}: state.json lists {', '.join(missing)}, which the folder lacks; copy the whole folder, or "
            "save the dataset again with save_to_disk"
        )
    return [folder / name for name in names]


def _folder_files(folder: Path) -> list[Path]:
    """The supported files under `folder` in sorted path order, hidden files and folders skipped; a
    `save_to_disk` folder (here or below) gives its own files in its own order instead.

    One `os.scandir` per folder (no stat per file beyond what the directory listing tells): listing 2,000
    files costs milliseconds. Symlinked folders inside are not followed, so a link cannot make a loop.
    """
    dataset = saved_dataset_files(folder)
    if dataset is not None:
        return dataset
    files: list[Path] = []
    with os.scandir(folder) as listing:
        entries = sorted(listing, key=lambda entry: entry.name)
    for entry in entries:
        if entry.name.startswith("."):
            continue
        if entry.is_dir(follow_symlinks=False):
            files += _folder_files(Path(entry.path))
        elif file_format(Path(entry.name)) is not None and entry.is_file():
            files.append(Path(entry.path))
    return files


def _expand_patterns(patterns: list[str], base_dir: Path) -> list[Path]:
    """The files the patterns name, in pattern order, each file once; folders expand to supported files."""
    files: dict[Path, None] = {}  # an ordered set
    for pattern in patterns:
        expanded = os.path.expanduser(pattern)
        full = expanded if os.path.isabs(expanded) else os.path.join(glob.escape(str(base_dir)), expanded)
        matches = sorted(glob.glob(full, recursive=True))
        if not matches:
            folder = Path(full).parent if os.path.isabs(expanded) else base_dir
            raise DataError(
                f"input pattern '{pattern}' matched no file (searched in {folder.resolve()}); "
                "check the path, or make it absolute"
            )
        for match in map(Path, matches):
            if match.is_dir():
                found = _folder_files(match)
                if not found:
                    raise DataError(
                        f"input pattern '{pattern}': folder {match.resolve()} holds no supported file "
                        f"({_SUPPORTED_TEXT})"
                    )
                files.update(dict.fromkeys(found))
            elif file_format(match) is None:
                raise DataError(
                    f"{match}: unsupported file type '{''.join(match.suffixes[-2:]) or '(none)'}'; supported: "
                    f"{_SUPPORTED_TEXT}. Narrow the pattern '{pattern}' or convert the file"
                )
            else:
                files[match] = None
    return list(files)


# ---------------------------------------------------------------------------------------------------------
# byte streams


class _ZstdReader(io.RawIOBase):
    """The decompressed bytes of a .zst file (one or more frames), read chunk by chunk.

    zstandard's own stream reader returns a truncated file's bytes as a short read without an error; here a
    file ending inside a frame is an EOFError, so a cut-off download is reported rather than read as complete.
    """

    def __init__(self, handle: IO[bytes]) -> None:
        try:
            import zstandard
        except ImportError:
            raise ConfigError("reading .zst files needs the zstandard package: pip install zstandard") from None
        self._handle = handle
        self._decompressor = zstandard.ZstdDecompressor()
        self._error = zstandard.ZstdError
        self._frame = self._decompressor.decompressobj()
        self._in_frame = False
        self._pending = b""
        self._offset = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while self._offset >= len(self._pending):
            chunk = self._handle.read(1 << 16)
            if not chunk:
                if self._in_frame:
                    raise EOFError("the zstd stream ends inside a frame: the file is truncated")
                return 0
            self._pending, self._offset = self._decompress(chunk), 0
        size = min(len(buffer), len(self._pending) - self._offset)
        buffer[:size] = self._pending[self._offset : self._offset + size]
        self._offset += size
        return size

    def _decompress(self, chunk: bytes) -> bytes:
        out = []
        try:
            while chunk:
                if self._frame.eof:  # a new frame starts: zstd files may hold several, one after the other
                    self._frame = self._decompressor.decompressobj()
                out.append(self._frame.decompress(chunk))
                self._in_frame = not self._frame.eof
                chunk = self._frame.unused_data if self._frame.eof else b""
        except self._error as error:
            raise OSError(f"not valid zstd data ({error})") from None
        return b"".join(out)


@contextmanager
def _open_binary(path: Path, compression: str | None) -> Iterator[IO[bytes]]:
    with path.open("rb") as handle:
        if compression == "gzip":
            with gzip.GzipFile(fileobj=handle) as stream:
                yield stream  # type: ignore[misc]
        elif compression == "zstd":
            with io.BufferedReader(_ZstdReader(handle), 1 << 16) as stream:
                yield stream
        else:
            yield handle


def _read_at_most(path: Path, compression: str | None, limit: int) -> bytes:
    """The file's (decompressed) bytes, at most limit + 1 of them: one more than allowed tells it is too long."""
    with _open_binary(path, compression) as stream:
        return stream.read(limit + 1)


def _lines(stream: IO[bytes], limit: int) -> Iterator[tuple[int, bytes, bool]]:
    """(line number, bytes, cut) for each line; a line over `limit` bytes is cut to its first `limit` bytes
    and the rest is read and dropped, so one huge line never sits in memory."""
    number = 0
    while raw := stream.readline(limit):
        number += 1
        cut = False
        if len(raw) == limit and not raw.endswith(b"\n"):
            rest = stream.readline(limit)
            cut = rest not in (b"", b"\n")
            while rest and not rest.endswith(b"\n"):
                rest = stream.readline(limit)
        yield number, raw, cut


def _sniffed(head: bytes) -> Rejected | None:
    """Why a text-format file cannot be read, from its first bytes: empty, UTF-16, or binary."""
    if not head.strip() and len(head) < _SNIFF_BYTES:  # the whole file was seen
        return Rejected("empty_file", "the file is empty" if not head else "the file holds only whitespace")
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        return Rejected("undecodable", "UTF-16 text, not UTF-8")
    if b"\0" in head:
        return Rejected("binary_file", f"NUL bytes in the first {_SNIFF_BYTES} bytes: a binary file, not text")
    return None


def _decoded(raw: bytes, line: int) -> str | Rejected:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        return Rejected("undecodable", f"not valid UTF-8 ({error.reason} at byte {error.start})", line)


# ---------------------------------------------------------------------------------------------------------
# readers: each yields (text, meta) for a document, or Rejected for a record it cannot use

Record = tuple[str, dict] | Rejected


def _placed(text: str | Rejected, line: int, meta: dict) -> Record:
    """A record's text as a document with `meta`, or why not, placed at `line` of its file."""
    return Rejected(text.reason, text.detail, line) if isinstance(text, Rejected) else (text, meta)


def _text_document(path: Path, compression: str | None, shown: str, max_chars: int) -> Iterator[Record]:
    limit = _BYTES_PER_CHAR * max_chars + 3  # + a UTF-8 byte order mark
    raw = _read_at_most(path, compression, limit)
    if len(raw) > limit:
        yield Rejected("document_too_long", f"more than {limit:,} bytes, so over max_document_chars {max_chars:,}")
        return
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        yield Rejected("undecodable", f"not valid UTF-8 ({error.reason})", line)
        return
    yield text, {"path": shown}


def _jsonl_records(stream: IO[bytes], line_limit: int) -> Iterator[tuple[int, dict | Rejected]]:
    """(line number, object or why not) for every non-blank line of a JSONL stream."""
    for number, raw, cut in _lines(stream, line_limit):
        if cut:
            yield number, Rejected("document_too_long", f"a line of more than {line_limit:,} bytes", number)
            continue
        line = _decoded(raw, number)
        if isinstance(line, Rejected):
            yield number, line
            continue
        if number == 1:
            line = line.removeprefix("\ufeff")
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            detail = f"not valid JSON ({error.msg} at column {error.colno}): {_excerpt(line)}"
            yield number, Rejected("malformed_json", detail, number)
            continue
        if not isinstance(record, dict):
            detail = f'a JSON {type(record).__name__}, not an object like {{"text": "..."}}: {_excerpt(line)}'
            yield number, Rejected("malformed_json", detail, number)
            continue
        yield number, record


def iter_jsonl_records(path: Path, shown: str) -> Iterator[tuple[str, int, dict]]:
    """(`file:line`, line number, object) for every non-blank line of a JSONL file; bad lines are DataErrors."""
    with path.open("rb") as stream:
        for number, record in _jsonl_records(stream, _JSONL_BYTES_PER_CHAR * DEFAULT_MAX_DOCUMENT_CHARS):
            where = f"{shown}:{number}"
            if isinstance(record, Rejected):
                raise DataError(f"{where}: {record.detail}; {REJECTION_FIXES[record.reason]}")
            yield where, number, record


def _jsonl_documents(
    path: Path, compression: str | None, shown: str, text_field: str, max_chars: int
) -> Iterator[Record]:
    records = 0
    with _open_binary(path, compression) as stream:
        for number, record in _jsonl_records(stream, _JSONL_BYTES_PER_CHAR * max_chars + 4096):
            records += 1
            if isinstance(record, Rejected):
                yield record
                continue
            yield _placed(_field_text(record, text_field), number, {"path": shown, "line": number})
    if not records:
        yield Rejected("empty_file", "no JSON line in the file")


def _csv_documents(
    path: Path, compression: str | None, shown: str, text_field: str, max_chars: int, delimiter: str
) -> Iterator[Record]:
    # Python's csv module refuses fields over 128k characters by default; a field past max_document_chars
    # stops the reader with csv.Error, which keeps memory bounded.
    csv.field_size_limit(max(csv.field_size_limit(), max_chars + 1))
    line_limit = _BYTES_PER_CHAR * max_chars + 4096
    position = {"line": 0}
    trouble: list[Rejected] = []  # what the line reader found in the record being parsed

    def decoded_lines(stream: IO[bytes]) -> Iterator[str]:
        for number, raw, cut in _lines(stream, line_limit):
            position["line"] = number
            if cut:
                trouble.append(Rejected("document_too_long", f"a line of more than {line_limit:,} bytes", number))
            text = _decoded(raw, number)
            if isinstance(text, Rejected):
                trouble.append(text)
                text = raw.decode("utf-8", "replace")  # parsed to find the record's end; the record is rejected
            yield text.removeprefix("\ufeff") if number == 1 else text

    with _open_binary(path, compression) as stream:
        # strict: a stray quote or a quoted field left open is an error, not a silently altered record.
        reader = csv.reader(decoded_lines(stream), delimiter=delimiter, strict=True)
        header = next(reader, None)
        if header is None:
            yield Rejected("empty_file", "no header line")
            return
        if trouble:
            yield Rejected(trouble[0].reason, f"the header line: {trouble[0].detail}", 1)
            return
        if text_field not in header:
            yield Rejected("missing_field", f"no column '{text_field}' (columns: {', '.join(header)})")
            return
        column = header.index(text_field)
        rows = 0
        while True:
            start = position["line"] + 1
            trouble.clear()
            try:
                row = next(reader)
            except StopIteration:
                break
            except csv.Error as error:
                rows += 1
                reason = "document_too_long" if "field larger" in str(error) else "malformed_csv"
                yield Rejected(reason, f"not valid CSV ({error})", start)
                continue
            if not row:
                continue  # a blank line
            rows += 1
            if trouble:
                yield trouble[0]
            elif len(row) != len(header):
                detail = (
                    f"{len(row)} fields, the header has {len(header)} (an unquoted delimiter or quote in a field?): "
                    f"{_excerpt(delimiter.join(row))}"
                )
                yield Rejected("malformed_csv", detail, start)
            else:
                yield row[column], {"path": shown, "line": start}
    if not rows:
        yield Rejected("empty_file", "a header line and no rows")


def _text_column(schema: pa.Schema, text_field: str) -> str | Rejected:
    """The column of a Parquet or Arrow schema that holds `text_field`, or why there is none.

    A dotted text_field names a column and then fields inside its structs (`doc.body`).
    """
    columns = schema.names
    column = text_field if text_field in columns else text_field.split(".")[0]
    if column not in columns:
        return Rejected("missing_field", f"no column '{column}' (columns: {', '.join(columns)})")
    column_type = schema.field(column).type
    is_string_view = getattr(pa.types, "is_string_view", lambda _: False)  # pyarrow >= 16
    text_types = (pa.types.is_string, pa.types.is_large_string, is_string_view)
    if column == text_field and not any(is_text(column_type) for is_text in text_types):
        return Rejected("not_text", f"column '{column}' holds {column_type}, not strings")
    return column


def _column_records(batches: Iterator[pa.RecordBatch], column: str, text_field: str, shown: str) -> Iterator[Record]:
    """One record per row of `column`, its 0-based row in the file as its place; an empty file is rejected."""
    row = 0
    for batch in batches:
        values = batch.column(column)
        for start in range(0, batch.num_rows, _ROWS_AT_A_TIME):
            for value in values.slice(start, _ROWS_AT_A_TIME).to_pylist():
                yield _placed(_field_text({column: value}, text_field), row, {"path": shown, "row": row})
                row += 1
    if not row:
        yield Rejected("empty_file", "no rows")


def _parquet_documents(path: Path, shown: str, text_field: str) -> Iterator[Record]:
    try:
        parquet = stream_parquet(path)
    except (pa.ArrowException, OSError) as error:
        yield Rejected("unreadable_file", f"not a readable Parquet file ({error})")
        return
    column = _text_column(parquet.schema_arrow, text_field)
    if isinstance(column, Rejected):
        yield column
        return
    # use_threads=False: one column gains nothing from pyarrow's thread pool, and starting it for every file
    # made 2,000 small files read 4x slower than one file of the same rows.
    batches = parquet.iter_batches(columns=[column], batch_size=_ROWS_AT_A_TIME, use_threads=False)
    yield from _column_records(batches, column, text_field, shown)


def _arrow_documents(path: Path, shown: str, text_field: str) -> Iterator[Record]:
    """Rows of an Arrow IPC file, stream format (what `datasets.save_to_disk` writes) or file format (Feather
    v2), memory-mapped: a batch is read from the page cache when its rows are turned into strings."""
    try:
        source = pa.memory_map(str(path))
    except OSError as error:
        yield Rejected("unreadable_file", f"cannot open it ({error})")
        return
    with source:
        batches: Iterator[pa.RecordBatch]
        try:
            stream = pa.ipc.open_stream(source)
            schema, batches = stream.schema, iter(stream)
        except pa.ArrowInvalid:
            source.seek(0)
            try:
                file = pa.ipc.open_file(source)
            except pa.ArrowInvalid as error:
                yield Rejected("unreadable_file", f"not a readable Arrow IPC file, stream or file format ({error})")
                return
            schema, batches = file.schema, (file.get_batch(i) for i in range(file.num_record_batches))
        column = _text_column(schema, text_field)
        if isinstance(column, Rejected):
            yield column
            return
        yield from _column_records(batches, column, text_field, shown)


def _html_document(path: Path, compression: str | None, shown: str, max_chars: int) -> Iterator[Record]:
    try:
        from resiliparse.extract.html2text import extract_plain_text
        from resiliparse.parse.encoding import detect_encoding
        from resiliparse.parse.html import HTMLTree
    except ImportError:
        raise ConfigError("reading .html files needs the resiliparse package: pip install resiliparse") from None
    limit = _BYTES_PER_CHAR * max_chars  # markup included: a page this big is not one document
    raw = _read_at_most(path, compression, limit)
    if len(raw) > limit:
        yield Rejected("document_too_long", f"more than {limit:,} bytes of HTML (max_document_chars {max_chars:,})")
        return
    # An HTML page declares its encoding (or a browser would guess it): decoding it so is reading, not guessing.
    tree = HTMLTree.parse_from_bytes(raw, detect_encoding(raw))
    # main_content drops navigation, headers, footers and sidebars; alt texts of images are mostly "logo".
    text = extract_plain_text(tree, main_content=True, alt_texts=False)
    if not text.strip():
        yield Rejected("empty_text", "no main text found in the page")
        return
    meta = {"path": shown}
    if tree.title and tree.title.strip():
        meta["title"] = tree.title.strip()
    yield text, meta


def _pdf_document(path: Path, shown: str, max_chars: int) -> Iterator[Record]:
    try:
        import pypdfium2 as pdfium
    except ImportError:
        raise ConfigError("reading .pdf files needs the pypdfium2 package: pip install pypdfium2") from None
    try:
        document = pdfium.PdfDocument(path)
    except pdfium.PdfiumError as error:
        yield Rejected("unreadable_file", f"not a readable PDF ({error}; password-protected or damaged?)")
        return
    pages: list[str] = []
    chars = 0
    try:
        for number in range(1, len(document) + 1):
            try:
                page = document[number - 1]
                text_page = page.get_textpage()
                text = text_page.get_text_range()
                text_page.close()
                page.close()
            except pdfium.PdfiumError as error:
                yield Rejected("unreadable_file", f"page {number} cannot be read ({error})", number)
                return
            # PDFium ends lines with \r\n and marks a hyphen that splits a word at a line end as U+FFFE.
            text = text.replace("\r\n", "\n").replace("\ufffe", "")
            chars += len(text)
            if chars > max_chars:
                yield Rejected("document_too_long", f"over max_document_chars {max_chars:,} by page {number}")
                return
            pages.append(text)
    finally:
        document.close()
    if not "".join(pages).strip():
        detail = f"no text in its {len(pages)} page(s): scanned images? Run OCR first (e.g. ocrmypdf)"
        yield Rejected("empty_text", detail)
        return
    # One document per file: a page break is not a topic break, and pages cut sentences in two.
    yield "\n\n".join(pages), {"path": shown, "pages": len(pages)}


def _file_records(
    path: Path, fmt: str, compression: str | None, shown: str, text_field: str, max_chars: int
) -> Iterator[Record]:
    if fmt == "parquet":
        yield from _parquet_documents(path, shown, text_field)
        return
    if fmt == "arrow":
        yield from _arrow_documents(path, shown, text_field)
        return
    if fmt == "pdf":
        yield from _pdf_document(path, shown, max_chars)
        return
    trouble = _sniffed(_read_at_most(path, compression, _SNIFF_BYTES - 1))
    if trouble is not None:
        yield trouble
    elif fmt == "text":
        yield from _text_document(path, compression, shown, max_chars)
    elif fmt == "jsonl":
        yield from _jsonl_documents(path, compression, shown, text_field, max_chars)
    elif fmt in ("csv", "tsv"):
        yield from _csv_documents(path, compression, shown, text_field, max_chars, "," if fmt == "csv" else "\t")
    else:
        yield from _html_document(path, compression, shown, max_chars)


# Errors of a damaged file: truncated or corrupt compression, an unreadable Parquet page, an I/O error.
_READ_ERRORS = (OSError, EOFError, zlib.error, pa.ArrowException)


def _guarded(records: Iterator[Record]) -> Iterator[Record]:
    """The records, then a rejection of the rest of the file if it turns out to be damaged part-way."""
    last: int | None = None
    try:
        for record in records:
            position = record.line if isinstance(record, Rejected) else record[1].get("line", record[1].get("row"))
            last = position if position is not None else last
            yield record
    except _READ_ERRORS as error:
        after = "" if last is None else f" after record {last} (the records before it were read)"
        yield Rejected("unreadable_file", f"damaged file{after}: {error or type(error).__name__}")


def iter_file_documents(
    patterns: list[str],
    *,
    source: str,
    text_field: str = "text",
    base_dir: Path,
    max_document_chars: int = DEFAULT_MAX_DOCUMENT_CHARS,
    strict: bool = False,
    ledger: IngestLedger | None = None,
) -> Iterator[dict]:
    """Document dicts (id, text, source, meta) from the files matching `patterns`, in a stable order.

    Patterns are globs relative to `base_dir` (`**` recurses); a folder means every supported file under
    it, in sorted path order (a Parquet dataset split in many files is such a folder), and a `datasets`
    `save_to_disk` folder means its Arrow files in its own order (`saved_dataset_files`). `.txt`, `.md`,
    `.html`/`.htm` (main text only: navigation, headers, footers dropped) and `.pdf` (the text of every
    page) files are one document each; `.jsonl` files one per line, `.csv`/`.tsv` one per row and `.parquet`
    and `.arrow` files one per row, with the text in `text_field` (a key, dotted for nested JSON objects, or
    a column). The text formats may be gzip- (`.gz`) or zstd-compressed (`.zst`).

    `meta` records the path (relative to base_dir when under it) and the line (JSONL and CSV, 1-based), the
    row (Parquet and Arrow, 0-based), the page count (PDF) or the title (HTML); the id is derived from the
    path and line or row, so re-ingesting unchanged files gives the same ids.

    A record that cannot be used (see the module docstring) goes to `ledger`, or with `strict` raises a
    DataError naming its file and line. Without a ledger, rejections are counted and logged as a warning.
    A source that yields no document at all is a DataError: its paths or text_field are wrong.
    """
    base_dir = Path(base_dir)
    own_ledger = ledger is None
    ledger = IngestLedger() if ledger is None else ledger
    documents = 0
    rejected: Counter[str] = Counter()
    first_rejection = ""
    for path in _expand_patterns(patterns, base_dir):
        shown = _display(path, base_dir)
        format_and_compression = file_format(path)
        assert format_and_compression is not None  # _expand_patterns keeps supported files only
        fmt, compression = format_and_compression
        for record in _guarded(_file_records(path, fmt, compression, shown, text_field, max_document_chars)):
            if not isinstance(record, Rejected):
                text, meta = record
                position = meta.get("line", meta.get("row"))
                if not text.strip():
                    record = (
                        Rejected("empty_file", "no text in the file")
                        if position is None
                        else Rejected("empty_text", "the text is empty or only whitespace", position)
                    )
                elif len(text) > max_document_chars:
                    detail = f"{len(text):,} characters > max_document_chars {max_document_chars:,}"
                    record = Rejected("document_too_long", detail, position)
            if isinstance(record, Rejected):
                if strict:
                    raise strict_error(record, location(shown, record.line))
                ledger.add(record, source=source, path=shown)
                rejected[record.reason] += 1
                first_rejection = first_rejection or f"{location(shown, record.line)}: {record.detail}"
                continue
            locator = shown if position is None else f"{shown}:{position}"
            documents += 1
            yield {"id": make_doc_id(source, locator), "text": text, "source": source, "meta": meta}
    summary = ", ".join(f"{reason} {count}" for reason, count in rejected.most_common())
    if not documents:
        raise DataError(
            f"source '{source}': no document could be read from {', '.join(patterns)}: "
            f"{rejected.total()} record(s) rejected ({summary}), e.g. {first_rejection}. Check the paths and text_field"
        )
    if own_ledger and rejected:
        logger.warning(
            "source '%s': %d record(s) skipped (%s), e.g. %s", source, rejected.total(), summary, first_rejection
        )
