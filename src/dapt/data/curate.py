"""Clean a document table, keeping an account of every document that was dropped and why.

Curation runs small blocks in a fixed order: normalize (with mojibake repair) → PII scrub → length →
quality → language ID (`dapt.data.langid`) → Gopher quality → Gopher repetition → C4 (`dapt.data.quality`)
→ toxicity (`dapt.data.toxicity`, off by default) → decontaminate → exact dedup → near dedup. Each filter
answers "keep?" for one document and, when not, gives a `reason` (a stable key to count by) and a
`detail` a person can check (the measured value and the threshold, the kept duplicate's id, the eval task
whose text leaked). Dropped documents go to the rejection ledger rather than disappearing, so
`docs_in == kept + ledger` always holds and a surprising drop can be traced to its block.

PII scrubbing (`dapt.data.pii`) replaces e-mail addresses, phone numbers, IPs, card numbers, IBANs and
secrets with placeholders and drops nothing; it runs before every block that reads text, so that two
documents differing only in an address are exact duplicates and no filter's detail quotes the PII.

The order puts cheap per-document filters first and the stateful dedups last, so that a duplicate of a
document dropped for quality is reported as low quality, not as a duplicate of something not kept.
Near-duplicate detection (`dapt.data.near_dup`, MinHash + LSH) needs all documents at once, so it is a
pass over the documents that every per-document block kept; exact duplicates are gone by then, and
what it finds are copies with a few words changed, templated texts and re-flowed paragraphs.
"""

from __future__ import annotations

import hashlib
import logging
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from dapt.config import CurateConfig
from dapt.curation_defaults import (
    DEFAULT_MAX_CHARS,
    DEFAULT_MAX_MEAN_WORD_CHARS,
    DEFAULT_MAX_SYMBOL_RATIO,
    DEFAULT_MIN_ALPHA_WORDS_RATIO,
    DEFAULT_MIN_CHARS,
    DEFAULT_MIN_WORDS,
)
from dapt.data import mojibake
from dapt.data.blocks import CurationBlock, Rejection, whitespace_tokens
from dapt.data.langid import language_block
from dapt.data.near_dup import NearDuplicateFinder
from dapt.data.quality import quality_blocks
from dapt.data.toxicity import toxicity_block

logger = logging.getLogger(__name__)

LEDGER_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("source", pa.string()),
        ("block", pa.string()),
        ("reason", pa.string()),
        ("detail", pa.string()),
    ]
)


# The setting (under `curate.`) that governs each reason a block gives, named when a rule drops much of a source;
# a reason not listed names its block's section. tests/data/test_curate_warnings.py checks that each is a field.
REASON_SETTINGS = {
    "too_short": "min_chars",
    "too_long": "max_chars",
    "too_few_words": "min_words",
    "symbol_ratio": "max_symbol_ratio",
    "low_alpha_words": "min_alpha_words_ratio",
    "long_words": "max_mean_word_chars",
    "language": "language.min_language_share",
    "gopher_too_few_words": "gopher_quality.min_words",
    "gopher_too_many_words": "gopher_quality.max_words",
    "gopher_short_words": "gopher_quality.min_mean_word_chars",
    "gopher_long_words": "gopher_quality.max_mean_word_chars",
    "gopher_symbol_word_ratio": "gopher_quality.max_symbol_word_ratio",
    "gopher_bullet_lines": "gopher_quality.max_bullet_lines_ratio",
    "gopher_ellipsis_lines": "gopher_quality.max_ellipsis_lines_ratio",
    "gopher_alpha_words": "gopher_quality.min_alpha_words_ratio",
    "gopher_stop_words": "gopher_quality.min_stop_words",
    "dup_line_fraction": "gopher_repetition.max_dup_line_fraction",
    "dup_paragraph_fraction": "gopher_repetition.max_dup_paragraph_fraction",
    "dup_line_char_fraction": "gopher_repetition.max_dup_line_char_fraction",
    "dup_paragraph_char_fraction": "gopher_repetition.max_dup_paragraph_char_fraction",
    "top_ngram_char_fraction": "gopher_repetition.max_top_ngram_char_fraction",
    "dup_ngram_char_fraction": "gopher_repetition.max_dup_ngram_char_fraction",
    "lorem_ipsum": "c4.lorem_ipsum",
    "curly_bracket": "c4.curly_bracket",
    "too_few_sentences": "c4.min_sentences",
    "javascript_lines": "c4.max_javascript_lines_ratio",
    "policy_lines": "c4.max_policy_lines_ratio",
    "terminal_punctuation": "c4.min_terminal_punct_lines_ratio",
    "toxic": "toxicity.max_score",
    "contaminated": "decontaminate_max_doc_frequency",
    "exact_duplicate": "exact_dedup",
    "near_duplicate": "near_dedup_threshold",
}

_EXTRA_BLANK_LINES = re.compile(r"\n{4,}")  # 4 newlines = 3 blank lines
# Characters that are neither alphanumeric, whitespace nor common prose punctuation: `_`, brackets,
# operators, `>>>`, backticks, `|`, `*`, `/`, `=`, `+`, `#` …
_SYMBOL = re.compile(r"""[^\w\s.,;:!?'"()\-]|_""")
# The ASCII characters that are not _SYMBOLs: deleting them from an ASCII text's bytes leaves its symbols,
# 9x faster than finding them with the pattern (most documents are ASCII).
_NOT_SYMBOL_ASCII = bytes(code for code in range(128) if not _SYMBOL.match(chr(code)))
_HAS_LETTER = re.compile(r"[^\W\d_]")
# An ASCII text's bytes without the characters that are neither letters nor whitespace (as str.split sees
# it), whitespace made spaces: split() then gives one token per word with a letter, 3x faster than a search
# per word.
_ASCII_NEITHER_LETTER_NOR_SPACE = bytes(
    code for code in range(128) if not (_HAS_LETTER.match(chr(code)) or chr(code).isspace())
)
_ASCII_SPACES_AS_SPACE = bytes(ord(" ") if chr(code).isspace() else code for code in range(256))
_WORD = re.compile(r"[^\W_]+")


def normalize_text(text: str, *, fix_mojibake: bool = True) -> str:
    """Canonical form for training and for exact dedup: texts differing only in layout noise become equal.

    Mis-decoded text repaired (`cafÃ©` → `café`, `dapt.data.mojibake`, unless `fix_mojibake` is off),
    Unicode NFC (so "é" typed two ways is one token sequence), `\\r\\n` and lone `\\r` → `\\n`, no
    trailing spaces on lines, at most 2 consecutive blank lines, no leading/trailing whitespace.
    """
    if fix_mojibake:
        text = mojibake.fix_mojibake(text)
    text = unicodedata.normalize("NFC", text)
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    # str methods rather than the two patterns when they have nothing to do (3x faster, same text)
    text = "\n".join([line.rstrip(" \t") for line in text.split("\n")])
    if "\n\n\n\n" in text:
        text = _EXTRA_BLANK_LINES.sub("\n\n\n", text)
    return text.strip()


@dataclass
class LengthFilter(CurationBlock):
    """Drops documents too short to teach anything or so long they are likely dumps (logs, data)."""

    min_chars: int = DEFAULT_MIN_CHARS
    max_chars: int = DEFAULT_MAX_CHARS
    min_words: int = DEFAULT_MIN_WORDS
    name: str = field(init=False, default="length")

    def judge(self, doc_id: str, text: str) -> Rejection | None:
        if len(text) < self.min_chars:
            return Rejection("too_short", f"{len(text)} chars < min_chars {self.min_chars}")
        if len(text) > self.max_chars:
            return Rejection("too_long", f"{len(text)} chars > max_chars {self.max_chars}")
        words = len(whitespace_tokens(text))
        if words < self.min_words:
            return Rejection("too_few_words", f"{words} words < min_words {self.min_words}")
        return None


@dataclass
class QualityFilter(CurationBlock):
    """Drops text that is not prose: symbol soup, tables of numbers, encoded blobs.

    Three measures, each catching what the others miss:
    - symbol ratio: share of characters that are not letters, digits, whitespace or `.,;:!?'"()-`;
    - alpha-word ratio: share of whitespace-separated words containing a letter (numbers tables fail);
    - mean word length: base64 and hex dumps are letters-and-digits "words" dozens of characters long,
      which pass both ratios.
    Defaults are set from SciPy's docstrings, whose `>>> np.array([1, 2])` examples are symbol-heavy but
    are documentation we want to keep (the measurements are next to the DEFAULT_* constants).
    """

    max_symbol_ratio: float = DEFAULT_MAX_SYMBOL_RATIO
    min_alpha_words_ratio: float = DEFAULT_MIN_ALPHA_WORDS_RATIO
    max_mean_word_chars: float = DEFAULT_MAX_MEAN_WORD_CHARS
    name: str = field(init=False, default="quality")

    def judge(self, doc_id: str, text: str) -> Rejection | None:
        if not text:
            return Rejection("low_alpha_words", "empty text")
        symbol_ratio = _count_symbols(text) / len(text)
        if symbol_ratio > self.max_symbol_ratio:
            return Rejection(
                "symbol_ratio", f"symbol ratio {symbol_ratio:.3f} > max_symbol_ratio {self.max_symbol_ratio}"
            )
        words = whitespace_tokens(text)
        if not words:
            return Rejection("low_alpha_words", "no words")
        alpha_ratio = _count_words_with_a_letter(text, words) / len(words)
        if alpha_ratio < self.min_alpha_words_ratio:
            return Rejection(
                "low_alpha_words",
                f"alpha-word ratio {alpha_ratio:.3f} < min_alpha_words_ratio {self.min_alpha_words_ratio}",
            )
        mean_word_chars = sum(map(len, words)) / len(words)
        if mean_word_chars > self.max_mean_word_chars:
            return Rejection(
                "long_words",
                f"mean word length {mean_word_chars:.1f} > max_mean_word_chars {self.max_mean_word_chars}",
            )
        return None


def _count_words_with_a_letter(text: str, words: list[str]) -> int:
    """How many of `words` (the whitespace-separated tokens of `text`) hold a letter."""
    if text.isascii():
        return len(text.encode("ascii").translate(_ASCII_SPACES_AS_SPACE, _ASCII_NEITHER_LETTER_NOR_SPACE).split())
    # map/bool instead of a generator: this line sees every word of the corpus, and stays in C.
    return sum(map(bool, map(_HAS_LETTER.search, words)))


def _count_symbols(text: str) -> int:
    if text.isascii():
        return len(text.encode("ascii").translate(None, _NOT_SYMBOL_ASCII))
    return len(_SYMBOL.findall(text))


def word_ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    """The set of n-word sequences of `text`: lowercased, words split on whitespace and punctuation."""
    words = _WORD.findall(text.lower())
    return set(zip(*(words[i:] for i in range(n)), strict=False))


@dataclass
class Decontaminator(CurationBlock):
    """Drops documents that share any `n`-word sequence with a task's eval/test text.

    Training on a test set's text inflates the score that is supposed to show whether adaptation paid
    off. n=13 follows GPT-3's decontamination: long enough that common phrases do not match, short enough
    to catch a copied sentence. Eval texts shorter than n words cannot be matched and are not checked.
    """

    contamination: dict[str, list[str]] = field(default_factory=dict)
    n: int = 13
    name: str = field(init=False, default="decontaminate")
    by_task: Counter = field(init=False, default_factory=Counter)
    ignored_common_ngrams: int = field(init=False, default=0)

    @property
    def eval_ngrams(self) -> list[tuple[str, ...]]:
        """The n-grams checked, sorted: a document is contaminated when its own n-grams include one."""
        return sorted(self._tasks_of)

    def ignore_common(self, corpus_texts: Iterable[str], max_doc_frequency: int) -> None:
        """Stop matching eval n-grams that occur in more than `max_doc_frequency` corpus documents: boilerplate."""
        if not self._tasks_of or max_doc_frequency <= 0:
            return
        frequency: Counter = Counter()
        for text in corpus_texts:
            frequency.update(word_ngrams(text, self.n) & self._tasks_of.keys())
        self.ignore_frequent(frequency, max_doc_frequency)

    def ignore_frequent(self, frequency: Counter, max_doc_frequency: int) -> None:
        """`ignore_common` from counts already made: `frequency` maps an eval n-gram to its documents."""
        if max_doc_frequency <= 0:
            return
        common = [gram for gram, count in frequency.items() if count > max_doc_frequency and gram in self._tasks_of]
        for gram in common:
            del self._tasks_of[gram]
        self.ignored_common_ngrams = len(common)

    def __post_init__(self) -> None:
        # One dict from n-gram to the tasks holding it: a document is checked with one set
        # intersection, whatever the number of tasks.
        self._tasks_of: dict[tuple[str, ...], set[str]] = {}
        for task, texts in self.contamination.items():
            self.by_task[task] += 0
            grams = set().union(*(word_ngrams(text, self.n) for text in texts))
            if not grams:
                logger.warning(
                    "decontamination: no text of task '%s' has %d words; nothing can be checked against it",
                    task,
                    self.n,
                )
            for gram in grams:
                self._tasks_of.setdefault(gram, set()).add(task)

    def judge(self, doc_id: str, text: str) -> Rejection | None:
        if not self._tasks_of:
            return None
        return self.judge_shared(word_ngrams(text, self.n) & self._tasks_of.keys())

    def judge_shared(self, shared: Iterable[tuple[str, ...]]) -> Rejection | None:
        """The verdict on a document whose n-grams include `shared` among the eval n-grams (ignored ones
        are skipped), counted for its tasks."""
        shared = {gram for gram in shared if gram in self._tasks_of}
        if not shared:
            return None
        example = min(shared)  # deterministic choice of the n-gram to show
        tasks = sorted(set().union(*(self._tasks_of[gram] for gram in shared)))
        self.by_task.update(tasks)
        return Rejection(
            "contaminated",
            f"shares {len(shared)} {self.n}-gram(s) with the eval/test text of task(s) "
            f"{', '.join(tasks)}, e.g. '{' '.join(example)}'",
        )


@dataclass
class ExactDedup(CurationBlock):
    """Keeps the first occurrence (in input order) of each text; later copies name the one kept."""

    name: str = field(init=False, default="exact_dedup")

    def __post_init__(self) -> None:
        self._first_id: dict[bytes, str] = {}

    @staticmethod
    def digest(text: str) -> bytes:
        """What two texts share when they are equal: 20 bytes, kept for each document instead of its text."""
        return hashlib.sha1(text.encode()).digest()

    def judge(self, doc_id: str, text: str) -> Rejection | None:
        return self.judge_digest(doc_id, self.digest(text))

    def judge_digest(self, doc_id: str, digest: bytes) -> Rejection | None:
        """`judge` on the text's `digest`; documents must come in input order."""
        kept_id = self._first_id.setdefault(digest, doc_id)
        if kept_id != doc_id:
            return self.rejection(kept_id)
        return None

    @staticmethod
    def rejection(kept_id: str) -> Rejection:
        """The verdict on a later copy of the document `kept_id`."""
        return Rejection("exact_duplicate", f"same text as {kept_id}")


@dataclass
class NearDedup:
    """Drops documents whose k-word shingles overlap a kept document's by at least `finder.threshold`
    (Jaccard, estimated by MinHash); each names the kept document of its cluster, the first in input order.

    Unlike a `CurationBlock` it judges all documents at once (`judge_all`): near-duplicates are found by
    comparing documents with each other through LSH buckets, not one document against what came before.
    """

    finder: NearDuplicateFinder = field(default_factory=NearDuplicateFinder)
    name: str = field(init=False, default="near_dedup")
    seen: int = field(init=False, default=0)
    dropped: int = field(init=False, default=0)

    def judge_all(self, ids: Sequence[str], texts: Sequence[str]) -> list[Rejection | None]:
        """For each document, the rejection if it is a near-duplicate of an earlier kept one, else None."""
        return self.judge_signatures(ids, self.finder.signatures(texts))

    def judge_signatures(
        self, ids: Sequence[str], signatures: np.ndarray, candidates: np.ndarray | None = None
    ) -> list[Rejection | None]:
        """`judge_all` from the documents' MinHash signatures (`finder.signatures`), in input order;
        `candidates`: their LSH candidate pairs when found elsewhere (`NearDuplicateFinder.find_in_signatures`)."""
        self.seen += len(ids)
        verdicts: list[Rejection | None] = [None] * len(ids)
        threshold = self.finder.threshold
        for duplicate in self.finder.find_in_signatures(signatures, candidates):
            kept_id = ids[duplicate.kept]
            if duplicate.via == duplicate.kept:
                detail = f"near-duplicate of {kept_id}: estimated Jaccard {duplicate.jaccard:.2f} >= {threshold}"
            else:
                # Joined the cluster through another member (A≈B, B≈C, but C is further from A).
                detail = (
                    f"near-duplicate of {kept_id} through {ids[duplicate.via]}: estimated Jaccard "
                    f"{duplicate.via_jaccard:.2f} >= {threshold} with {ids[duplicate.via]}, "
                    f"{duplicate.jaccard:.2f} with {kept_id}"
                )
            verdicts[duplicate.index] = Rejection("near_duplicate", detail)
        self.dropped += sum(verdict is not None for verdict in verdicts)
        return verdicts


def curation_options(**options: Any) -> dict[str, Any]:
    """CurateConfig's fields with `options` applied and checked: the one source of curation defaults."""
    return CurateConfig(**options).model_dump()


def document_blocks(options: Mapping[str, Any]) -> list[CurationBlock]:
    """The per-document filters, in the order they run, built from CurateConfig's fields (`options`).

    They run after normalization and PII scrubbing and before the blocks that need more than one document
    (decontamination's corpus-wide count, exact and near dedup). A block here judges one document from its
    text alone and keeps no state between documents: each worker process builds its own copies, and the
    `seen` / `dropped` counts a report shows are recomputed from the verdicts.
    """
    return [
        LengthFilter(min_chars=options["min_chars"], max_chars=options["max_chars"], min_words=options["min_words"]),
        QualityFilter(
            max_symbol_ratio=options["max_symbol_ratio"],
            min_alpha_words_ratio=options["min_alpha_words_ratio"],
            max_mean_word_chars=options["max_mean_word_chars"],
        ),
        # after the quality block, so that a base64 blob or a table (which the identifier labels too) is
        # reported as what it is, and before Gopher's English stop-word rule, so a German text is "language"
        *language_block(options["language"]),
        *quality_blocks(options["gopher_quality"], options["gopher_repetition"], options["c4"]),
        *toxicity_block(options["toxicity"]),
    ]
