"""Toxicity: an abusive paragraph drops its document, with the score in the ledger; technical text is kept."""

from __future__ import annotations

import pickle

import pyarrow as pa
import pytest

from dapt.config import ToxicityConfig
from dapt.data.documents import DOCUMENT_SCHEMA
from dapt.data.executor import curate_documents
from dapt.data.toxicity import ToxicityFilter, toxicity_block

pytest.importorskip("profanity_check", reason="alt-profanity-check is the [toxicity] extra (in [dev])")

TECHNICAL = (
    "Kill the child process with SIGKILL when it does not stop within the timeout. The parent then waits "
    "for it, so that no zombie process is left behind, and raises an error naming the command."
)
ABUSE = "You are a stupid idiot and everybody hates you, shut up, you worthless moron."


def test_abusive_paragraph_drops_the_document_with_its_score() -> None:
    block = ToxicityFilter()
    assert block("tech", TECHNICAL) is None  # "kill", "dumb" in technical senses score below 0.95
    rejection = block("abuse", TECHNICAL + "\n\n" + ABUSE)
    assert rejection.reason == "toxic"
    assert rejection.detail.startswith("paragraph 2 of 2 scores ")
    assert "> max_score 0.95 (alt-profanity-check): 'You are a stupid idiot" in rejection.detail
    assert (block.seen, block.dropped) == (2, 1)


def test_threshold_and_edge_cases() -> None:
    assert ToxicityFilter(max_score=1.0)("d", ABUSE) is None  # a score is at most 1
    assert ToxicityFilter(max_score=0.0)("d", TECHNICAL) is not None
    for text in ("", "   \n\n  ", "short"):
        assert ToxicityFilter(max_score=0.99)("d", text) is None
    assert ToxicityFilter()("d", ABUSE[:25]) is not None  # a short text is scored whole


def test_model_loads_lazily_and_is_not_pickled() -> None:
    block = ToxicityFilter()
    assert block._score is None
    block("d", TECHNICAL)
    assert pickle.loads(pickle.dumps(block))._score is None


def test_off_by_default_and_on_from_config() -> None:
    assert toxicity_block(ToxicityConfig().model_dump()) == []
    texts = [TECHNICAL, TECHNICAL.replace("SIGKILL", "SIGTERM") + "\n\n" + ABUSE]
    documents = pa.table(
        {"id": ["a", "b"], "text": texts, "source": ["s"] * 2, "meta": ["{}"] * 2}, schema=DOCUMENT_SCHEMA
    )
    assert curate_documents(documents, near_dedup=False, min_chars=100).ledger.num_rows == 0
    result = curate_documents(documents, near_dedup=False, min_chars=100, toxicity={"enabled": True})
    assert result.ledger.column("reason").to_pylist() == ["toxic"]
    assert result.stats["blocks"]["toxicity"] == {"seen": 2, "dropped": 1}
    with pytest.raises(ValueError):
        ToxicityConfig(max_score=1.5)
