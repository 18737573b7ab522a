"""Read the user's own files into document dicts: plain text, Markdown, JSONL and Parquet.

Every problem with an input file stops ingestion with a `DataError` that names the file and line (or
row), says what is wrong and how to fix it. Guessing (skipping a bad line, reading a file as Latin-1)
would turn a broken export into a silently smaller or garbled corpus.
"""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from dapt.data.documents import make_doc_id
from dapt.errors import DataError

WHOLE_FILE_SUFFIXES = (".txt", ".md")
SUPPORTED_SUFFIXES = (*WHOLE_FILE_SUFFIXES, ".jsonl", ".parquet")

_UTF8_FIX = "re-save it as UTF-8 (e.g. `iconv -f latin1 -t utf-8 in > out`)"


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


def text_of(record: dict, field: str, where: str, setting: str = "text_field") -> str:
    """The string at `field` in `record`, else a DataError saying where, what and which setting to fix."""
    try:
        value = lookup_field(record, field)
    except KeyError:
        raise DataError(
            f"{where}: no field '{field}' (keys in this record: {', '.join(sorted(record)) or 'none'}); "
            f"set {setting}: to the key holding the text (a dotted path like doc.body reaches nested objects)"
        ) from None
    if not isinstance(value, str):
        raise DataError(
            f"{where}: field '{field}' is {type(value).__name__}, not a string; "
            f"set {setting}: to the key holding the text, or fix this record"
        )
    return value


def _display(path: Path, base_dir: Path) -> str:
    """The path as the user wrote it relative to base_dir when possible: short and machine-independent."""
    try:
        return path.relative_to(base_dir).as_posix()
    except ValueError:
        return path.as_posix()


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
                found = sorted(
                    p
                    for p in match.rglob("*")
                    if p.is_file()
                    and p.suffix.lower() in SUPPORTED_SUFFIXES
                    and not any(part.startswith(".") for part in p.relative_to(match).parts)
                )
                if not found:
                    raise DataError(
                        f"input pattern '{pattern}': folder {match.resolve()} holds no supported file "
                        f"({', '.join(SUPPORTED_SUFFIXES)})"
                    )
                files.update(dict.fromkeys(found))
            elif match.suffix.lower() not in SUPPORTED_SUFFIXES:
                raise DataError(
                    f"{match}: unsupported file type '{match.suffix or '(none)'}'; supported: "
                    f"{', '.join(SUPPORTED_SUFFIXES)}. Narrow the pattern '{pattern}' or convert the file"
                )
            else:
                files[match] = None
    return list(files)


def _decode(raw: bytes, where: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise DataError(f"{where}: not valid UTF-8 ({error.reason} at byte {error.start}); {_UTF8_FIX}") from None


def _whole_file_documents(path: Path, shown: str) -> Iterator[tuple[str, dict]]:
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        raise DataError(f"{shown}:{line}: not valid UTF-8 ({error.reason}); {_UTF8_FIX}") from None
    yield text, {"path": shown}


def iter_jsonl_records(path: Path, shown: str) -> Iterator[tuple[str, int, dict]]:
    """(`file:line`, line number, object) for every non-blank line of a JSONL file; bad lines are DataErrors."""
    with path.open("rb") as lines:
        for number, raw in enumerate(lines, start=1):
            where = f"{shown}:{number}"
            line = _decode(raw, where)
            if number == 1:
                line = line.removeprefix("\ufeff")
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise DataError(
                    f"{where}: not valid JSON ({error.msg} at column {error.colno}); "
                    "each line of a .jsonl file must be one complete JSON object"
                ) from None
            if not isinstance(record, dict):
                raise DataError(
                    f"{where}: a JSON {type(record).__name__}, not an object; "
                    'each line must be an object like {"text": "..."}'
                )
            yield where, number, record


def _jsonl_documents(path: Path, shown: str, text_field: str) -> Iterator[tuple[str, dict]]:
    for where, number, record in iter_jsonl_records(path, shown):
        yield text_of(record, text_field, where), {"path": shown, "line": number}


def _parquet_documents(path: Path, shown: str, text_field: str) -> Iterator[tuple[str, dict]]:
    parquet = pq.ParquetFile(path)
    columns = parquet.schema_arrow.names
    # A dotted text_field names a column and then fields inside its structs (`doc.body`).
    column = text_field if text_field in columns else text_field.split(".")[0]
    if column not in columns:
        raise DataError(
            f"{shown}: no column '{column}' (columns: {', '.join(columns)}); "
            "set text_field: to the column holding the text"
        )
    row = 0
    for batch in parquet.iter_batches(columns=[column]):
        for value in batch.column(0).to_pylist():
            yield text_of({column: value}, text_field, f"{shown} row {row}"), {"path": shown, "row": row}
            row += 1


def iter_file_documents(
    patterns: list[str], *, source: str, text_field: str = "text", base_dir: Path
) -> Iterator[dict]:
    """Document dicts (id, text, source, meta) from the files matching `patterns`, in a stable order.

    Patterns are globs relative to `base_dir` (`**` recurses); a folder means every supported file
    under it. `.txt` and `.md` files are one document each; `.jsonl` files one per line and `.parquet`
    files one per row, with the text in `text_field`. Documents that are empty after stripping are
    skipped: they carry nothing to learn from. `meta` records the path (relative to base_dir when under
    it) and the line (JSONL, 1-based) or row (Parquet, 0-based); the id is derived from them, so
    re-ingesting unchanged files gives the same ids.
    """
    base_dir = Path(base_dir)
    for path in _expand_patterns(patterns, base_dir):
        shown = _display(path, base_dir)
        suffix = path.suffix.lower()
        if suffix in WHOLE_FILE_SUFFIXES:
            documents = _whole_file_documents(path, shown)
        elif suffix == ".jsonl":
            documents = _jsonl_documents(path, shown, text_field)
        else:
            documents = _parquet_documents(path, shown, text_field)
        for text, meta in documents:
            if not text.strip():
                continue
            position = meta.get("line", meta.get("row"))
            locator = shown if position is None else f"{shown}:{position}"
            yield {"id": make_doc_id(source, locator), "text": text, "source": source, "meta": meta}
