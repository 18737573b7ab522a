"""Toxicity: drop documents with an abusive or obscene paragraph, scored by alt-profanity-check.

alt-profanity-check is a linear SVM over TF-IDF word features (trained on ~200k human-labelled comments),
model files inside the package, scikit-learn to run it; nothing is downloaded. It is slow per call: 6.8 ms per
docstring here (scikit-learn's calibrated classifier costs ~4 ms a call, whatever the text), against 0.16 ms
per docstring when all paragraphs go in one call — a block judges one document at a time. Detoxify (BERT
models; not tried here) fetches its checkpoints over the network on first use, which fails offline. The
package pins exact scikit-learn and joblib releases and brings scikit-learn + SciPy (~165 MB), so it is the
optional extra `dapt-lm[toxicity]` and the block is off unless `curate.toxicity.enabled` is set.

Scoring is per paragraph, the document's score the highest: TF-IDF of a whole long document dilutes one
abusive paragraph into a low score. On the demo's 5,106 SciPy + stdlib docstrings (32.5k paragraphs of >= 30
characters) the highest paragraph scores were 0.87 (`>>> s.split('O')` giving `'hell'`), 0.69 ("A dumb and
slow but simple dbm clone"), 0.64; "Kill the subprocess" scores 0.58 as a whole docstring. Insults and
obscenities score 0.99-1.0. The default threshold 0.95 drops none of the docstrings.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from dapt.curation_defaults import (
    DEFAULT_TOXICITY_MAX_SCORE,
    DEFAULT_TOXICITY_MIN_PARAGRAPH_CHARS,
)
from dapt.data.blocks import CurationBlock, Rejection
from dapt.errors import ConfigError

_PARAGRAPH_BREAK = re.compile(r"\n\s*\n")

Scorer = Callable[[Sequence[str]], Sequence[float]]


def profanity_scorer() -> Scorer:
    """alt-profanity-check's `predict_prob` (its model loads on import: ~2 s)."""
    try:
        from profanity_check import predict_prob
    except ImportError:
        raise ConfigError(
            "curate.toxicity.enabled: the toxicity classifier is not installed; `pip install 'dapt-lm[toxicity]'` "
            "(alt-profanity-check), or set curate.toxicity.enabled: false"
        ) from None
    return lambda texts: [float(score) for score in predict_prob(list(texts))]


@dataclass
class ToxicityFilter(CurationBlock):
    """Drops documents whose most toxic paragraph scores above `max_score` (0..1)."""

    max_score: float = DEFAULT_TOXICITY_MAX_SCORE
    min_paragraph_chars: int = DEFAULT_TOXICITY_MIN_PARAGRAPH_CHARS
    name: str = field(init=False, default="toxicity")
    # Loaded on the first document, once per process.
    _score: Scorer | None = field(init=False, default=None, repr=False, compare=False)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_score"] = None
        return state

    def judge(self, doc_id: str, text: str) -> Rejection | None:
        paragraphs = [p.strip() for p in _PARAGRAPH_BREAK.split(text) if len(p.strip()) >= self.min_paragraph_chars]
        if not paragraphs:
            paragraphs = [text] if text.strip() else []
        if not paragraphs:
            return None
        if self._score is None:
            self._score = profanity_scorer()
        scores = self._score(paragraphs)
        worst = max(range(len(scores)), key=scores.__getitem__)
        if scores[worst] <= self.max_score:
            return None
        excerpt = paragraphs[worst][:80].replace("\n", " ")
        return Rejection(
            "toxic",
            f"paragraph {worst + 1} of {len(paragraphs)} scores {scores[worst]:.3f} > max_score {self.max_score} "
            f"(alt-profanity-check): '{excerpt}'",
        )


def toxicity_block(options: Mapping[str, Any] | None = None) -> list[CurationBlock]:
    """The toxicity block from CurateConfig's `toxicity` section (its fields plus `enabled`, default off)."""
    options = dict(options or {})
    if not options.pop("enabled", False):
        return []
    return [ToxicityFilter(**options)]
