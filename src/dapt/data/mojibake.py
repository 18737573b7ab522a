"""Repair of text decoded with the wrong encoding ("mojibake": `cafÃ©` for `café`), with ftfy.

Text passed through a wrong decode (UTF-8 read as Windows-1252, often twice) is common in scraped and
exported data; ftfy (Speer 2019) detects such sequences and undoes them. Only its repairs run: its style
changes (straight quotes for curly ones, half-width for full-width characters, `fi` for the ligature `ﬁ`,
HTML unescaping) would rewrite text that is correct, and NFC normalisation is done by `normalize_text`.

ftfy reads every character, 1.6 MB/s here on SciPy's and the stdlib's docstrings (noisy, shared 2-core
machine). ASCII text cannot hold mojibake, which is made of non-ASCII characters, so ASCII documents without
control characters or terminal escapes skip it: 21 MB/s on the same 6.3 MB (78 of its 5,106 documents are
not ASCII; ftfy changed none of them).
"""

from __future__ import annotations

import re

import ftfy

_FIXES_ONLY = ftfy.TextFixerConfig(
    unescape_html=False,
    uncurl_quotes=False,
    fix_character_width=False,
    fix_latin_ligatures=False,
    fix_line_breaks=False,  # normalize_text turns \r\n and \r into \n
    normalization=None,  # normalize_text applies NFC after the repair
    explain=False,
)
# What ftfy would still change in ASCII text: C0 control characters and DEL (terminal escapes start with ESC).
_ASCII_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
# The other ASCII characters: an ASCII text without control characters is empty once they are deleted from
# its bytes (a C loop over the bytes, 10x faster than searching it with _ASCII_CONTROL).
_ASCII_NOT_CONTROL = bytes(code for code in range(128) if not _ASCII_CONTROL.match(chr(code)))


def fix_mojibake(text: str) -> str:
    """`text` with mis-decoded sequences repaired and control characters / terminal escapes removed."""
    if text.isascii() and not text.encode("ascii").translate(None, _ASCII_NOT_CONTROL):
        return text
    return ftfy.fix_text(text, _FIXES_ONLY)
