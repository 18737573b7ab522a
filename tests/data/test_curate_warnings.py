"""A rule that drops much of one source is reported with the setting to change."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dapt.config import CurateConfig
from dapt.data.curate import REASON_SETTINGS
from dapt.data.documents import DOCUMENT_SCHEMA
from dapt.data.executor import curate_documents
from dapt.stages.curate import curate_corpus
from helpers.corpora import prose

# Entries of a glossary of numerical analysis: short, and exactly what continued pretraining should teach.
GLOSSARY = [
    "Hessian: the matrix of second partial derivatives.",
    "Jacobian: the matrix of first partial derivatives of a vector function.",
    "Eigenvalue: a scalar that scales an eigenvector of a matrix.",
    "Condition number: how much the output of a function can change for a small change in the input.",
    "Spline: a piecewise polynomial with smooth joins between its pieces.",
    "Quadrature: the numerical computation of an integral from values of the integrand.",
]


def documents(texts_by_source: dict[str, list[str]]) -> pa.Table:
    rows = [(source, text) for source, texts in texts_by_source.items() for text in texts]
    return pa.table(
        {
            "id": [f"{source}:{i}" for i, (source, _) in enumerate(rows)],
            "text": [text for _, text in rows],
            "source": [source for source, _ in rows],
            "meta": [json.dumps({"path": f"{source}.jsonl", "line": i + 1}) for i, (source, _) in enumerate(rows)],
        },
        schema=DOCUMENT_SCHEMA,
    )


def test_every_named_setting_is_a_curate_setting() -> None:
    for reason, setting in REASON_SETTINGS.items():
        section: type = CurateConfig
        *path, name = setting.split(".")
        for part in path:
            section = section.model_fields[part].annotation
        assert name in section.model_fields, f"{reason}: curate.{setting} is not a setting"


def test_a_rule_that_drops_much_of_one_source_is_named_with_its_setting(tmp_path) -> None:
    corpus = documents({"glossary": GLOSSARY, "manual": [prose(seed) for seed in range(20)]})
    # the default floor keeps a glossary's entries
    default = curate_documents(corpus)
    assert default.stats["heavy_drops"] == [] and "glossary" not in default.ledger.column("source").to_pylist()

    result = curate_documents(corpus, min_chars=70)  # drops 3 of the 6 entries, none of the manual's pages
    [drop] = result.stats["heavy_drops"]
    assert (drop["source"], drop["reason"], drop["setting"], drop["dropped"], drop["documents"]) == (
        "glossary",
        "too_short",
        "curate.min_chars",
        3,
        6,
    )
    assert "dropped 50% of source 'glossary'" in drop["message"] and "change curate.min_chars" in drop["message"]
    assert curate_documents(corpus, min_chars=70, max_rule_drop_share=0.5).stats["heavy_drops"] == []

    pq.write_table(corpus, tmp_path / "documents.parquet")
    out = tmp_path / "curate"
    out.mkdir()
    said: list[str] = []
    stats = curate_corpus(
        tmp_path / "documents.parquet", out, options={"min_chars": 70, "workers": 1}, contamination={}, log=said.append
    )
    assert f"warning: {drop['message']}" in said
    assert stats["heavy_drops"] == [drop]


@pytest.mark.parametrize("share", [-0.1, 1.5])
def test_the_share_is_a_fraction(share) -> None:
    with pytest.raises(ValueError, match="max_rule_drop_share"):
        CurateConfig(max_rule_drop_share=share)
