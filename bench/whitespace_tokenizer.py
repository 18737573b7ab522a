"""The word tokenizer datatrove's filters get in bench/curation_speed.py: words are whitespace-separated,
as dapt's Gopher blocks count them (NLTK's English tokenizer would make each punctuation mark a word of its
own, and datatrove's Gopher rules then drop most docstrings as "below the alpha-words threshold")."""

from __future__ import annotations

import re

from datatrove.utils.word_tokenizers import WordTokenizer

_WORD = re.compile(r"\S+")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


class WhitespaceWordTokenizer(WordTokenizer):
    def __init__(self) -> None:
        super().__init__("eng")

    def word_tokenize(self, text: str) -> list[str]:
        return text.split()

    def sent_tokenize(self, text: str) -> list[str]:
        return [sentence for sentence in _SENTENCE_END.split(text) if sentence]

    def span_tokenize(self, text: str) -> list[tuple[int, int]]:
        return [match.span() for match in _WORD.finditer(text)]
