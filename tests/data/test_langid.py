"""Language ID: documents in other languages are dropped; English with code, or with a passage in another
language, is kept; the configured languages decide."""

from __future__ import annotations

import logging
import pickle

import pyarrow as pa
import pytest

from dapt.config import LanguageConfig
from dapt.data.documents import DOCUMENT_SCHEMA
from dapt.data.executor import curate_documents
from dapt.data.langid import LanguageFilter, language_block
from dapt.errors import ConfigError

ENGLISH = (
    "Compute the weighted mean of the values along the given axis. The weights must have the same shape as "
    "the values, and they are normalised so that they sum to one before the mean is taken."
)
ENGLISH_MORE = (
    "When no weights are given, every value counts the same, and the result is the arithmetic mean; a "
    "masked entry is left out of both the sum and the total weight."
)
GERMAN = (
    "Die Gemeinde liegt am Ufer eines kleinen Sees und ist von Wäldern umgeben. Im Sommer kommen viele "
    "Wanderer, die auf den alten Wegen zu den Hütten in den Bergen steigen und dort übernachten."
)
GERMAN_MORE = (
    "Die Schule des Ortes wurde im neunzehnten Jahrhundert gebaut. Heute lernen dort etwa hundert Kinder, "
    "und am Nachmittag treffen sich die Vereine in der Turnhalle, die vor einigen Jahren erneuert wurde."
)
FRENCH = (
    "Le village se trouve au bord d'une rivière et compte environ deux mille habitants. Chaque année, une "
    "fête réunit les familles de la région autour d'un grand repas sur la place de l'église."
)
CODE = """>>> import numpy as np
>>> x = np.linspace(0, 1, 5)
>>> np.average(x, weights=[1, 2, 3, 4, 5])
0.6666666666666666"""


def verdict(text: str, **options) -> tuple[str, str] | None:
    rejection = LanguageFilter(**options)("doc", text)
    return (rejection.reason, rejection.detail) if rejection else None


def test_english_kept_other_languages_dropped_with_the_measured_share() -> None:
    assert verdict(ENGLISH) is None
    reason, detail = verdict(GERMAN + "\n\n" + GERMAN.upper().lower())
    assert reason == "language"
    assert detail.startswith("en hold 0.00 of the ")
    assert "< min_language_share 0.2 (found de 1.00)" in detail
    assert verdict(FRENCH)[0] == "language"


def test_code_heavy_and_mixed_documents_are_kept() -> None:
    numpydoc = ENGLISH + "\n\nParameters\n----------\nx : array_like\n\nExamples\n--------\n" + CODE
    assert verdict(numpydoc) is None
    assert verdict(CODE) is None  # nothing in a clear language: not this block's call
    mixed = ENGLISH + "\n\n" + GERMAN + "\n\n" + ENGLISH.replace("mean", "median")  # two thirds English
    assert verdict(mixed) is None
    # mostly German with one English paragraph: English holds a third, above 0.2 -> kept; at 0.5 -> dropped
    mostly_german = GERMAN + "\n\n" + GERMAN.replace("Sommer", "Winter") + "\n\n" + ENGLISH
    assert verdict(mostly_german) is None
    assert verdict(mostly_german, min_language_share=0.5)[0] == "language"


def test_an_english_opening_does_not_decide_before_the_rest_is_read() -> None:
    # The block stops labelling once the rest cannot outvote what it has read; here it can, so it reads on.
    german_tail = "\n\n".join([GERMAN, GERMAN_MORE, GERMAN.replace("Sommer", "Winter"), GERMAN_MORE.upper().lower()])
    reason, detail = verdict(ENGLISH + "\n\n" + german_tail, min_language_share=0.3)
    assert reason == "language"
    assert detail.startswith("en hold 0.19 of the 965 characters") and "(found de 0.81, en 0.19)" in detail
    assert verdict(ENGLISH + "\n\n" + ENGLISH_MORE + "\n\n" + german_tail, min_language_share=0.3) is None


def test_configured_languages_decide() -> None:
    assert verdict(GERMAN, languages=["de"]) is None
    assert verdict(ENGLISH, languages=["de"])[0] == "language"
    assert verdict(FRENCH, languages=["de", "fr"]) is None
    assert verdict(GERMAN, languages=[]) is None  # every language kept
    assert language_block({"languages": []}) == []
    assert language_block({"enabled": False}) == []
    assert [block.name for block in language_block(LanguageConfig().model_dump())] == ["language"]


@pytest.mark.parametrize("text", ["", "   ", "x" * 100_000, "短い", "∑∫∂ ≤ ≥ → ∞" * 10])
def test_degenerate_text_is_judged_without_error(text: str) -> None:
    LanguageFilter()("doc", text)


def test_short_paragraphs_do_not_vote() -> None:
    assert verdict("Guten Tag, wie geht es?\n\n" + ENGLISH) is None
    assert verdict("Guten Tag, wie geht es Ihnen?", min_paragraph_chars=200) is None


def test_the_model_loads_once_on_first_use_and_is_not_pickled() -> None:
    block = LanguageFilter()
    assert block._detect is None  # building the block loads nothing
    block("a", ENGLISH)
    loaded = block._detect
    block("b", GERMAN)
    assert block._detect is loaded
    copy = pickle.loads(pickle.dumps(block))
    assert copy._detect is None and (copy.seen, copy.dropped) == (2, 1)
    assert copy("c", GERMAN) is not None


def test_unknown_language_code_is_a_config_error_naming_the_field() -> None:
    with pytest.raises(ConfigError, match="curate.language.languages: qq not among"):
        LanguageFilter(languages=["en", "qq"])("doc", ENGLISH)
    with pytest.raises(ValueError, match="not lowercase language codes"):
        LanguageConfig(languages=["EN"])
    with pytest.raises(ValueError):
        LanguageConfig(min_language_share=0)


def table(texts: list[str]) -> pa.Table:
    ids = [f"doc{i}" for i in range(len(texts))]
    return pa.table(
        {"id": ids, "text": texts, "source": ["t"] * len(texts), "meta": ["{}"] * len(texts)}, schema=DOCUMENT_SCHEMA
    )


def test_curate_counts_language_drops_and_warns_when_most_are_dropped(caplog) -> None:
    german_corpus = [f"{GERMAN}\n\nSeite {i}.\n\n{GERMAN_MORE}" for i in range(12)] + [ENGLISH + " " + ENGLISH_MORE]
    with caplog.at_level(logging.WARNING, logger="dapt.data.langid"):
        result = curate_documents(table(german_corpus), near_dedup=False, exact_dedup=False)
    assert result.stats["blocks"]["language"] == {"seen": 13, "dropped": 12}
    assert result.stats["dropped_by_reason"] == {"language": 12}
    assert "set curate.language.languages" in caplog.text
    german = curate_documents(table(german_corpus), near_dedup=False, exact_dedup=False, language={"languages": ["de"]})
    assert german.stats["blocks"]["language"] == {"seen": 13, "dropped": 1}
