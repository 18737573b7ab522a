"""The published quality and repetition rules of Gopher (Rae et al. 2021, MassiveText) and C4 (Raffel et al.
2020), as curation blocks, with defaults that keep technical documentation full of code.

Each rule is a threshold; `None` turns that rule off. The published thresholds were set on web text, and a
few of them drop exactly what a documentation or code corpus is made of. Every default below was measured
on SciPy 1.17's and Python 3.11's standard-library docstrings (>= 200 chars, after normalisation and PII
scrubbing: 5,106 documents, the demo's domain and replay corpus) by `bench/quality_rules.py`, which counts
what each rule, alone, drops at the published threshold and at ours; the counts are next to each default.
"Published" below means the paper's value; where ours differs, the comment says why.

Words are whitespace-separated tokens (as in Gopher); the n-gram rules count lowercased runs of letters and
digits, so that `np.array(` and `np.array,` are the same two words.
"""

from __future__ import annotations

import operator
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from itertools import compress, count, islice, repeat
from typing import Any

from dapt.curation_defaults import (
    DEFAULT_C4_CURLY_BRACKET,
    DEFAULT_C4_LOREM_IPSUM,
    DEFAULT_C4_MAX_JAVASCRIPT_LINES_RATIO,
    DEFAULT_C4_MAX_POLICY_LINES_RATIO,
    DEFAULT_C4_MIN_SENTENCES,
    DEFAULT_C4_MIN_TERMINAL_PUNCT_LINES_RATIO,
    DEFAULT_GOPHER_MAX_BULLET_LINES_RATIO,
    DEFAULT_GOPHER_MAX_ELLIPSIS_LINES_RATIO,
    DEFAULT_GOPHER_MAX_MEAN_WORD_CHARS,
    DEFAULT_GOPHER_MAX_SYMBOL_WORD_RATIO,
    DEFAULT_GOPHER_MAX_WORDS,
    DEFAULT_GOPHER_MIN_ALPHA_WORDS_RATIO,
    DEFAULT_GOPHER_MIN_MEAN_WORD_CHARS,
    DEFAULT_GOPHER_MIN_STOP_WORDS,
    DEFAULT_GOPHER_MIN_WORDS,
    DEFAULT_MAX_DUP_LINE_CHAR_FRACTION,
    DEFAULT_MAX_DUP_LINE_FRACTION,
    DEFAULT_MAX_DUP_NGRAM_CHAR_FRACTION,
    DEFAULT_MAX_DUP_PARAGRAPH_CHAR_FRACTION,
    DEFAULT_MAX_DUP_PARAGRAPH_FRACTION,
    DEFAULT_MAX_TOP_NGRAM_CHAR_FRACTION,
)
from dapt.data.blocks import CurationBlock, Rejection, whitespace_tokens

GOPHER_STOP_WORDS = frozenset({"the", "be", "to", "of", "and", "that", "have", "with"})

_WORD = re.compile(r"[^\W_]+")
# Each ASCII byte lowercased if it is a _WORD character, else a space: split() on an ASCII text's bytes put
# through it gives its lowercased _WORD runs, 2x faster than the pattern (most documents are ASCII).
_ASCII_WORD_CHARS = bytes(ord(chr(code).lower()) if _WORD.match(chr(code)) else ord(" ") for code in range(256))
# A stop word as a whole _WORD token of the lowercased text (not preceded or followed by a word character).
_STOP_WORD = re.compile(rf"(?<![^\W_])(?:{'|'.join(sorted(GOPHER_STOP_WORDS))})(?![^\W_])")
_HAS_LETTER = re.compile(r"[^\W\d_]")
_ALNUM = re.compile(r"[^\W_]")
_PARAGRAPH_BREAK = re.compile(r"\n\s*\n")
# The ASCII characters that are neither _ALNUM nor whitespace.
_ASCII_PUNCTUATION = "".join(chr(code) for code in range(128) if not (_ALNUM.match(chr(code)) or chr(code).isspace()))
_BULLETS = ("•", "●", "○", "▪", "▫", "■", "□", "‣", "⁃", "◦", "-", "*", "–", "—")
_ELLIPSES = ("...", "…")
_TERMINAL_PUNCT = (".", "!", "?", '"', "'", "”", "’", ":")  # ':' ends the line before a list or example
_SENTENCE_END = re.compile(r"[.!?][\"')\]]*(?=\s|$)")
_POLICY = ("terms of use", "privacy policy", "cookie policy", "uses cookies", "use of cookies", "use cookies")


def _lowercase_words(text: str) -> list[str]:
    """The runs of letters and digits of `text`, lowercased."""
    if text.isascii():
        return text.encode("ascii").translate(_ASCII_WORD_CHARS).decode("ascii").split()
    return _WORD.findall(text.lower())


def _stripped_lines(text: str) -> list[str]:
    """The lines of `text` that are not blank, stripped."""
    return list(filter(None, map(str.strip, text.split("\n"))))


def _share(part: int, whole: int) -> float:
    return part / whole if whole else 0.0


@dataclass
class GopherQualityFilter(CurationBlock):
    """Gopher's document quality rules: word count, mean word length, '#'/'...' per word, bullet and
    ellipsis line shares, share of words with a letter, presence of English stop words. `None`: rule off."""

    min_words: int | None = DEFAULT_GOPHER_MIN_WORDS
    max_words: int | None = DEFAULT_GOPHER_MAX_WORDS
    min_mean_word_chars: float | None = DEFAULT_GOPHER_MIN_MEAN_WORD_CHARS
    max_mean_word_chars: float | None = DEFAULT_GOPHER_MAX_MEAN_WORD_CHARS
    max_symbol_word_ratio: float | None = DEFAULT_GOPHER_MAX_SYMBOL_WORD_RATIO
    max_bullet_lines_ratio: float | None = DEFAULT_GOPHER_MAX_BULLET_LINES_RATIO
    max_ellipsis_lines_ratio: float | None = DEFAULT_GOPHER_MAX_ELLIPSIS_LINES_RATIO
    min_alpha_words_ratio: float | None = DEFAULT_GOPHER_MIN_ALPHA_WORDS_RATIO
    min_stop_words: int | None = DEFAULT_GOPHER_MIN_STOP_WORDS
    name: str = field(init=False, default="gopher_quality")

    def judge(self, doc_id: str, text: str) -> Rejection | None:
        return next(self.failures(text), None)

    def failures(self, text: str) -> Iterator[Rejection]:
        """Every rule `text` fails, in a fixed order (`judge` reports the first)."""
        tokens = whitespace_tokens(text)
        # Tokens of punctuation alone (`>>>`, `...`, an rst underline `=====`) are not words: as in the
        # common implementations (datatrove), they count neither as words nor in the mean word length.
        if text.isascii():
            # An ASCII token stripped of its punctuation is empty when it has no letter or digit: 2x faster
            # than a search per token (bench/block_speed.py), the same words.
            words = list(compress(tokens, map(str.strip, tokens, repeat(_ASCII_PUNCTUATION))))
        else:
            words = list(filter(_ALNUM.search, tokens))
        n_words = len(words)
        if self.min_words is not None and n_words < self.min_words:
            yield Rejection("gopher_too_few_words", f"{n_words} words < min_words {self.min_words}")
        if self.max_words is not None and n_words > self.max_words:
            yield Rejection("gopher_too_many_words", f"{n_words} words > max_words {self.max_words}")
        if not words:
            return  # no word to measure; the length block drops empty documents
        mean_chars = sum(map(len, words)) / n_words
        if self.min_mean_word_chars is not None and mean_chars < self.min_mean_word_chars:
            yield Rejection(
                "gopher_short_words",
                f"mean word length {mean_chars:.2f} < min_mean_word_chars {self.min_mean_word_chars}",
            )
        if self.max_mean_word_chars is not None and mean_chars > self.max_mean_word_chars:
            yield Rejection(
                "gopher_long_words",
                f"mean word length {mean_chars:.2f} > max_mean_word_chars {self.max_mean_word_chars}",
            )
        if self.max_symbol_word_ratio is not None:
            symbols = text.count("#") + text.count("...") + text.count("…")
            ratio = symbols / n_words
            if ratio > self.max_symbol_word_ratio:
                yield Rejection(
                    "gopher_symbol_word_ratio",
                    f"{symbols} '#'/'...' for {n_words} words: {ratio:.3f} > max_symbol_word_ratio "
                    f"{self.max_symbol_word_ratio}",
                )
        lines = _stripped_lines(text)
        if self.max_bullet_lines_ratio is not None:
            ratio = _share(sum(map(str.startswith, lines, repeat(_BULLETS))), len(lines))
            if ratio > self.max_bullet_lines_ratio:
                yield Rejection(
                    "gopher_bullet_lines",
                    f"bullet lines {ratio:.3f} of {len(lines)} > max_bullet_lines_ratio {self.max_bullet_lines_ratio}",
                )
        if self.max_ellipsis_lines_ratio is not None:
            ratio = _share(sum(map(str.endswith, lines, repeat(_ELLIPSES))), len(lines))
            if ratio > self.max_ellipsis_lines_ratio:
                yield Rejection(
                    "gopher_ellipsis_lines",
                    f"lines ending in an ellipsis {ratio:.3f} of {len(lines)} > max_ellipsis_lines_ratio "
                    f"{self.max_ellipsis_lines_ratio}",
                )
        if self.min_alpha_words_ratio is not None:
            ratio = sum(map(bool, map(_HAS_LETTER.search, tokens))) / len(tokens)
            if ratio < self.min_alpha_words_ratio:
                yield Rejection(
                    "gopher_alpha_words",
                    f"words with a letter {ratio:.3f} < min_alpha_words_ratio {self.min_alpha_words_ratio}",
                )
        if self.min_stop_words is not None:
            # Counted up to the minimum only: most documents have a 'the' in their first line.
            found = sum(1 for _ in islice(_STOP_WORD.finditer(text.lower()), self.min_stop_words))
            if found < self.min_stop_words:
                yield Rejection(
                    "gopher_stop_words",
                    f"{found} occurrence(s) of the stop words {'/'.join(sorted(GOPHER_STOP_WORDS))} < "
                    f"min_stop_words {self.min_stop_words}",
                )


def _duplicate_share(pieces: list[str]) -> tuple[int, int]:
    """(number of pieces equal to an earlier piece, their characters)."""
    seen: set[str] = set()
    count = chars = 0
    for piece in pieces:
        if piece in seen:
            count += 1
            chars += len(piece)
        else:
            seen.add(piece)
    return count, chars


@dataclass
class GopherRepetitionFilter(CurationBlock):
    """Gopher's repetition rules: documents repeating lines, paragraphs or n-grams (boilerplate, spam,
    degenerate generations). `None` / a missing n: rule off.

    - duplicate line (paragraph) fraction: lines (paragraphs) equal to an earlier one, over all of them;
      the char fractions weigh them by length, over the document's characters;
    - top n-gram char fraction (n in `max_top_ngram_char_fraction`): characters in the occurrences of the
      most frequent n-gram, over the characters of all words;
    - duplicate n-gram char fraction: characters of the words covered by an n-gram occurring earlier in the
      document (a word covered twice counts once), over the characters of all words.
    """

    max_dup_line_fraction: float | None = DEFAULT_MAX_DUP_LINE_FRACTION
    max_dup_paragraph_fraction: float | None = DEFAULT_MAX_DUP_PARAGRAPH_FRACTION
    max_dup_line_char_fraction: float | None = DEFAULT_MAX_DUP_LINE_CHAR_FRACTION
    max_dup_paragraph_char_fraction: float | None = DEFAULT_MAX_DUP_PARAGRAPH_CHAR_FRACTION
    max_top_ngram_char_fraction: dict[int, float] = field(
        default_factory=lambda: dict(DEFAULT_MAX_TOP_NGRAM_CHAR_FRACTION)
    )
    max_dup_ngram_char_fraction: dict[int, float] = field(
        default_factory=lambda: dict(DEFAULT_MAX_DUP_NGRAM_CHAR_FRACTION)
    )
    name: str = field(init=False, default="gopher_repetition")

    def judge(self, doc_id: str, text: str) -> Rejection | None:
        return next(self.failures(text), None)

    def failures(self, text: str) -> Iterator[Rejection]:
        """Every rule `text` fails, cheapest first (`judge` reports the first)."""
        if not text:
            return
        for unit, pieces, max_fraction, max_char_fraction in (
            (
                "line",
                [line for line in text.split("\n") if line.strip()],
                self.max_dup_line_fraction,
                self.max_dup_line_char_fraction,
            ),
            (
                "paragraph",
                [p.strip() for p in _PARAGRAPH_BREAK.split(text) if p.strip()],
                self.max_dup_paragraph_fraction,
                self.max_dup_paragraph_char_fraction,
            ),
        ):
            if max_fraction is None and max_char_fraction is None:
                continue
            count, chars = _duplicate_share(pieces)
            fraction = _share(count, len(pieces))
            if max_fraction is not None and fraction > max_fraction:
                yield Rejection(
                    f"dup_{unit}_fraction",
                    f"{count} of {len(pieces)} {unit}s repeat an earlier one: {fraction:.3f} > "
                    f"max_dup_{unit}_fraction {max_fraction}",
                )
            char_fraction = chars / len(text)
            if max_char_fraction is not None and char_fraction > max_char_fraction:
                yield Rejection(
                    f"dup_{unit}_char_fraction",
                    f"repeated {unit}s hold {char_fraction:.3f} of the characters > max_dup_{unit}_char_fraction "
                    f"{max_char_fraction}",
                )
        if not self.max_top_ngram_char_fraction and not self.max_dup_ngram_char_fraction:
            return
        words = _lowercase_words(text)
        if not words:
            return
        grams = _NGrams(words)
        total = sum(grams.word_chars)
        for n, max_fraction in sorted(self.max_top_ngram_char_fraction.items()):
            if len(words) < n:
                continue
            # An n-gram occurs no more often than each of its words, so its occurrences hold at most n times
            # the characters of the document's heaviest word (all its occurrences): under the threshold (with
            # a margin for rounding), counting the n-grams cannot fail the rule. Most documents skip all three
            # counts this way (bench/block_speed.py, same verdicts).
            if n * grams.heaviest_word_chars() < (max_fraction - 1e-9) * total:
                continue
            start, occurrences = Counter(grams.first_positions(n)).most_common(1)[0]
            if occurrences < 2:
                continue
            fraction = occurrences * sum(grams.word_chars[start : start + n]) / total
            if fraction > max_fraction:
                shown = " ".join(words[start : start + n])
                yield Rejection(
                    "top_ngram_char_fraction",
                    f"the {n}-gram '{shown}' ({occurrences}x) holds {fraction:.3f} of the characters > "
                    f"max_top_ngram_char_fraction[{n}] {max_fraction}",
                )
        dup_rules = sorted(self.max_dup_ngram_char_fraction.items())
        for index, (n, max_fraction) in enumerate(dup_rules):
            chars = grams.repeated_chars(n)
            if chars is None:
                break  # no n-gram repeats, so no longer one does either
            fraction = chars / total
            if fraction > max_fraction:
                yield Rejection(
                    "dup_ngram_char_fraction",
                    f"repeated {n}-grams cover {fraction:.3f} of the characters > max_dup_ngram_char_fraction[{n}] "
                    f"{max_fraction}",
                )
            # Longer repeated n-grams cover no word that shorter ones do not (a repeated (n+1)-gram is two
            # repeated n-grams), so once this share is under every remaining threshold none of them can fail:
            # on the demo corpus most documents stop at n = 5.
            if all(fraction <= later for _, later in dup_rules[index + 1 :]):
                break


class _NGrams:
    """The n-grams of a list of words, each named by the position of its first occurrence.

    The n-grams are never built as tuples of n words kept in a list: an n-gram is the tuple (the name of a
    shorter k-gram it starts with, its remaining n-k words' names), so each n costs one dict of small tuples
    of ints, built and read in C, and the repeats are found without a Python loop over the n-grams. The
    names of an n are built from the longest shorter n known (the words themselves at first: the rules ask
    for n = 5 first when the top n-gram rules are skipped), one pass whatever the gap
    (bench/block_speed.py: from 225 to 118 µs per demo document with pairs from n-1, shared machine).
    """

    def __init__(self, words: list[str]) -> None:
        self.words = words
        self.word_chars = list(map(len, words))
        self._positions: dict[int, list[int]] = {1: self._first_positions(words)}
        self._heaviest_word_chars: int | None = None

    @staticmethod
    def _first_positions(keys: Iterable) -> list[int]:
        # setdefault gives a key's earliest position, storing this one when the key is new.
        first: dict = {}
        return list(map(first.setdefault, keys, count()))

    def first_positions(self, n: int) -> list[int]:
        """For each n-gram (by its start), where the same n-gram first occurs: equal n-grams, equal numbers,
        numbered in order of first occurrence."""
        if n not in self._positions:
            k = max(k for k in self._positions if k < n)
            # (k-gram at i, word i+k, ..., word i+n-1): equal tuples exactly when the n-grams are equal.
            words = self._positions[1]
            self._positions[n] = self._first_positions(
                zip(self._positions[k], *(words[j:] for j in range(k, n)), strict=False)
            )
        return self._positions[n]

    def heaviest_word_chars(self) -> int:
        """The characters of all occurrences of the word that holds the most of them."""
        if self._heaviest_word_chars is None:
            # positions[1] names each word by its first position, so word_chars[name] is its length.
            occurrences = Counter(self._positions[1])
            self._heaviest_word_chars = max(
                map(operator.mul, occurrences.values(), map(self.word_chars.__getitem__, occurrences))
            )
        return self._heaviest_word_chars

    def repeated_chars(self, n: int) -> int | None:
        """Characters of the words covered by an n-gram equal to an earlier one (a word covered twice counts
        once), or None when no n-gram repeats."""
        positions = self.first_positions(n)
        # One byte per n-gram, 1 where the same n-gram occurred before.
        repeats = bytes(map(operator.ne, positions, range(len(positions))))
        if not any(repeats):
            return None
        # Word j is covered when a repeat starts at one of j-n+1 .. j: OR of n shifted copies of the bytes
        # (read as one integer, a shift by 8 bits moves every byte one word on; bytes of 0/1 OR without carries).
        starts = int.from_bytes(repeats, "little")
        covered = 0
        for shift in range(n):
            covered |= starts << (8 * shift)
        return sum(compress(self.word_chars, covered.to_bytes(len(self.words), "little")))


@dataclass
class C4Filter(CurationBlock):
    """C4's page rules as document rules: 'lorem ipsum', '{' (code), javascript and cookie / terms-of-use
    notice lines, lines without terminal punctuation, fewer than 3 sentences. `None` / False: rule off."""

    lorem_ipsum: bool = DEFAULT_C4_LOREM_IPSUM
    curly_bracket: bool = DEFAULT_C4_CURLY_BRACKET
    max_javascript_lines_ratio: float | None = DEFAULT_C4_MAX_JAVASCRIPT_LINES_RATIO
    max_policy_lines_ratio: float | None = DEFAULT_C4_MAX_POLICY_LINES_RATIO
    min_terminal_punct_lines_ratio: float | None = DEFAULT_C4_MIN_TERMINAL_PUNCT_LINES_RATIO
    min_sentences: int | None = DEFAULT_C4_MIN_SENTENCES
    name: str = field(init=False, default="c4")

    def judge(self, doc_id: str, text: str) -> Rejection | None:
        return next(self.failures(text), None)

    def failures(self, text: str) -> Iterator[Rejection]:
        """Every rule `text` fails (`judge` reports the first)."""
        lowered = text.lower()
        if self.lorem_ipsum and "lorem ipsum" in lowered:
            yield Rejection("lorem_ipsum", "contains 'lorem ipsum' (placeholder text)")
        if self.curly_bracket and "{" in text:
            yield Rejection("curly_bracket", f"contains '{{' at character {text.index('{')} (C4's code rule)")
        if self.min_sentences is not None:
            sentences = len(_SENTENCE_END.findall(text))
            if sentences < self.min_sentences:
                yield Rejection("too_few_sentences", f"{sentences} sentence(s) < min_sentences {self.min_sentences}")
        lines = _stripped_lines(lowered)
        if not lines:
            return
        for reason, max_ratio, phrases, setting in (
            ("javascript_lines", self.max_javascript_lines_ratio, ("javascript",), "max_javascript_lines_ratio"),
            ("policy_lines", self.max_policy_lines_ratio, _POLICY, "max_policy_lines_ratio"),
        ):
            if max_ratio is None:
                continue
            matching = 0
            if any(phrase in lowered for phrase in phrases):  # no line has one when the text has none
                matching = sum(any(phrase in line for phrase in phrases) for line in lines)
            ratio = matching / len(lines)
            if ratio > max_ratio:
                yield Rejection(reason, f"{ratio:.3f} of {len(lines)} lines > {setting} {max_ratio}")
        if self.min_terminal_punct_lines_ratio is not None:
            ratio = sum(map(str.endswith, lines, repeat(_TERMINAL_PUNCT))) / len(lines)
            if ratio < self.min_terminal_punct_lines_ratio:
                yield Rejection(
                    "terminal_punctuation",
                    f"lines ending in terminal punctuation {ratio:.3f} of {len(lines)} < "
                    f"min_terminal_punct_lines_ratio {self.min_terminal_punct_lines_ratio}",
                )


def quality_blocks(
    gopher_quality: Mapping[str, Any] | None = None,
    gopher_repetition: Mapping[str, Any] | None = None,
    c4: Mapping[str, Any] | None = None,
) -> list[CurationBlock]:
    """The Gopher quality, Gopher repetition and C4 blocks from their config sections (CurateConfig's
    `gopher_quality`, `gopher_repetition`, `c4`: the blocks' fields plus `enabled`); None: the defaults."""
    blocks: list[CurationBlock] = []
    for block_class, options in (
        (GopherQualityFilter, gopher_quality),
        (GopherRepetitionFilter, gopher_repetition),
        (C4Filter, c4),
    ):
        options = dict(options or {})
        if options.pop("enabled", True):
            blocks.append(block_class(**options))
    return blocks
