"""Mojibake repair in normalisation: broken text is fixed, correct text (ASCII or not) is left alone."""

from __future__ import annotations

import pyarrow as pa

from dapt.data.curate import normalize_text
from dapt.data.documents import DOCUMENT_SCHEMA
from dapt.data.executor import curate_documents
from dapt.data.mojibake import fix_mojibake


def test_mis_decoded_text_is_repaired() -> None:
    assert fix_mojibake("The cafÃ© serves crÃ¨me brÃ»lÃ©e") == "The café serves crème brûlée"
    assert fix_mojibake("â€œquotedâ€\x9d â€” dash") == "“quoted” — dash"  # UTF-8 read as Windows-1252
    assert fix_mojibake("colour \x1b[31mred\x1b[0m") == "colour red"  # terminal escapes, even in ASCII


def test_correct_text_is_not_restyled() -> None:
    for text in (
        "plain ascii with a\ttab, a form feed\x0c and code: x = {'a': [1, 2]}",
        "“curly quotes” stay curly, the ligature ﬁ stays, ｆｕｌｌ width stays",
        "Größe, naïve, 東京, Ελληνικά, עברית",
        "&lt;not unescaped&gt;",
        "",
    ):
        assert fix_mojibake(text) == text


def test_normalize_repairs_before_nfc_unless_turned_off() -> None:
    assert normalize_text("cafÃ©  \r\n") == "café"
    assert normalize_text("cafÃ©", fix_mojibake=False) == "cafÃ©"


def test_curate_keeps_the_repaired_text() -> None:
    text = (
        "The cafÃ© on the corner of the square opened in 1921. Its owner baked bread at night and sold it to "
        "the workers of the mill at dawn; by noon the shelves were empty and the ovens cooled for the evening."
    )
    documents = pa.table({"id": ["d"], "text": [text], "source": ["s"], "meta": ["{}"]}, schema=DOCUMENT_SCHEMA)
    assert "café" in curate_documents(documents).kept.column("text")[0].as_py()
    assert "cafÃ©" in curate_documents(documents, fix_mojibake=False).kept.column("text")[0].as_py()
