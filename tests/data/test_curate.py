"""Curation keeps an account: every input document is either kept or in the ledger with a reason."""

from __future__ import annotations

import base64
import random

import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from dapt.config import CurateConfig
from dapt.data.curate import normalize_text
from dapt.data.documents import DOCUMENT_SCHEMA
from dapt.data.executor import curate_documents

WORDS = "model data signal filter matrix sparse kernel estimate sample integral spline vector".split()


def prose(seed: int, n_words: int = 60) -> str:
    rng = random.Random(seed)
    sentences = []
    while sum(len(s.split()) for s in sentences) < n_words:
        # "The" opens each sentence: English has stop words, which the Gopher quality rule looks for.
        sentences.append("The " + " ".join(rng.choice(WORDS) for _ in range(8)) + ".")
    return " ".join(sentences)


def table(texts: list[str], ids: list[str] | None = None) -> pa.Table:
    ids = ids or [f"doc{i}" for i in range(len(texts))]
    return pa.table(
        {"id": ids, "text": texts, "source": ["test"] * len(texts), "meta": ["{}"] * len(texts)},
        schema=DOCUMENT_SCHEMA,
    )


def ledger_rows(result) -> dict[str, dict]:
    return {row["id"]: row for row in result.ledger.to_pylist()}


def near_copy(seed: int, n_words: int = 150) -> str:
    """prose(seed, n_words) with 2 words changed: a near-duplicate of it (Jaccard of 5-word shingles 0.87)."""
    words = prose(seed, n_words).split()
    words[n_words // 4], words[n_words * 3 // 4] = "alpha", "beta"
    return " ".join(words)


def test_normalize_text() -> None:
    assert normalize_text("  cafe\u0301  \r\nline two   \r\n\r\n\r\n\r\n\r\nend  ") == "café\nline two\n\n\nend"
    assert normalize_text("a\n\n\nb") == "a\n\n\nb"  # two blank lines are kept


def test_duplicate_is_dropped_and_names_the_kept_document() -> None:
    text = prose(1)
    result = curate_documents(table([text, prose(2), text + "  \n"], ids=["first", "other", "copy"]))
    assert result.kept.column("id").to_pylist() == ["first", "other"]
    (row,) = result.ledger.to_pylist()
    assert row["id"] == "copy" and row["reason"] == "exact_duplicate" and "first" in row["detail"]
    assert result.stats["dropped_by_reason"] == {"exact_duplicate": 1}
    assert result.stats["blocks"]["exact_dedup"] == {"seen": 3, "dropped": 1}


def test_kept_text_is_normalized() -> None:
    result = curate_documents(table([prose(3).replace(". ", ".   \r\n")]))
    assert "\r" not in result.kept.column("text")[0].as_py()


def test_length_filter_reasons() -> None:
    result = curate_documents(table(["", "short text", prose(4, n_words=400), "x" * 300]), max_chars=1000, min_words=20)
    reasons = {row["id"]: row["reason"] for row in result.ledger.to_pylist()}
    assert reasons == {"doc0": "too_short", "doc1": "too_short", "doc2": "too_long", "doc3": "too_few_words"}


def test_quality_filter_keeps_code_examples_and_drops_blobs_and_tables() -> None:
    numpydoc = (
        "Compute the arithmetic mean along the specified axis.\n\n"
        "Parameters\n----------\na : array_like\n    Array containing numbers whose mean is desired.\n"
        "axis : None or int or tuple of ints, optional\n"
        "    Axis or axes along which the means are computed.\n\n"
        "Examples\n--------\n>>> a = np.array([[1, 2], [3, 4]])\n>>> np.mean(a)\n2.5\n"
        ">>> np.mean(a, axis=0)\narray([2., 3.])\n>>> np.mean(a, axis=1)\narray([1.5, 3.5])\n"
    )
    blob = "Attached file:\n" + base64.encodebytes(random.Random(0).randbytes(3000)).decode()
    numbers = "x y z\n" + "\n".join(f"{i} {i * 0.5:.2f} {i**2}" for i in range(60))
    symbols = "Diagram of the pipeline layout follows:\n" + "+--+--+ |==|==| <~~> {**} [##]\n" * 20
    result = curate_documents(table([numpydoc, blob, numbers, symbols], ids=["numpydoc", "blob", "numbers", "symbols"]))
    assert result.kept.column("id").to_pylist() == ["numpydoc"]
    reasons = {row["id"]: row["reason"] for row in result.ledger.to_pylist()}
    assert reasons == {"blob": "long_words", "numbers": "low_alpha_words", "symbols": "symbol_ratio"}
    assert "max_symbol_ratio" in ledger_rows(result)["symbols"]["detail"]


def test_shared_13_gram_with_a_task_test_text_is_removed_and_counted() -> None:
    eval_words = [f"w{i}" for i in range(40)]
    eval_text = " ".join(eval_words)
    thirteen = " ".join(eval_words[10:23])
    twelve = " ".join(eval_words[10:22])
    docs = table(
        [
            prose(5) + " " + thirteen.upper() + ", " + prose(6),
            prose(7) + " " + twelve + " " + prose(8),
            prose(9),
        ]
    )
    result = curate_documents(docs, contamination={"qa": [eval_text], "cls": ["unrelated words only here"]})
    assert result.kept.column("id").to_pylist() == ["doc1", "doc2"]  # the 12-gram does not match
    row = ledger_rows(result)["doc0"]
    assert row["reason"] == "contaminated" and row["block"] == "decontaminate" and "qa" in row["detail"]
    assert result.stats["decontaminated_by_task"] == {"cls": 0, "qa": 1}


def test_decontamination_runs_before_dedup() -> None:
    eval_text = " ".join(f"e{i}" for i in range(13))
    leaked = prose(10) + " " + eval_text
    result = curate_documents(table([leaked, leaked]), contamination={"qa": [eval_text]})
    assert [row["reason"] for row in result.ledger.to_pylist()] == ["contaminated", "contaminated"]
    assert result.stats["decontaminated_by_task"] == {"qa": 2}


@settings(max_examples=25, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.sampled_from(["", "   ", prose(11), prose(12), "tiny", prose(11) + "\n\n\n\n\n"]),
            st.sampled_from([prose(13) + " Mail jane@mail.com", prose(13) + " Mail bob@mail.com"]),
            st.text(max_size=400),
            st.integers(0, 50).map(lambda seed: prose(seed, n_words=seed * 3)),
            st.integers(0, 5).map(lambda seed: prose(seed, n_words=150)),
            st.integers(0, 5).map(near_copy),
            # what the Gopher / C4 blocks drop: repetition, no stop words, placeholder text
            st.integers(0, 5).map(lambda seed: "buy now " * 40 + prose(seed)),
            st.integers(0, 5).map(lambda seed: (prose(seed, 30) + "\n") * 4),
            st.just("Sparse kernel spline vector matrix estimate. " * 3 + "Integral sample filter signal."),
            st.integers(0, 3).map(lambda seed: prose(seed) + " Lorem ipsum dolor sit amet."),
            st.just(  # another language: language ID
                "Die Gemeinde liegt am Ufer eines kleinen Sees und ist von Wäldern umgeben. Im Sommer kommen viele "
                "Wanderer, die auf den alten Wegen zu den Hütten in den Bergen steigen und dort übernachten. Die "
                "Schule des Ortes wurde im neunzehnten Jahrhundert gebaut."
            ),
            st.just("The cafÃ© of the kernel and the sample with the spline. " + prose(7)),  # mojibake
        ),
        max_size=40,
    )
)
def test_every_input_document_is_kept_or_in_the_ledger(texts: list[str]) -> None:
    result = curate_documents(table(texts), contamination={"qa": [prose(12)]})
    kept_ids = result.kept.column("id").to_pylist()
    ledger_ids = result.ledger.column("id").to_pylist()
    assert result.stats["docs_in"] == len(texts) == len(kept_ids) + len(ledger_ids)
    assert sorted(kept_ids + ledger_ids) == sorted(f"doc{i}" for i in range(len(texts)))
    assert sum(result.stats["dropped_by_reason"].values()) == len(ledger_ids)
    kept_texts = result.kept.column("text").to_pylist()
    assert len(set(kept_texts)) == len(kept_texts)  # no duplicate survives
    assert result.stats["chars_kept"] == sum(map(len, kept_texts))
    assert not [text for text in kept_texts if "@mail.com" in text]  # scrubbed, and then exact duplicates
    assert not [text for text in kept_texts if "buy now buy now" in text or "Lorem ipsum" in text]
    assert not [text for text in kept_texts if "Gemeinde" in text or "Ã©" in text]
    for seed in range(6):  # a planted near-duplicate never survives next to its original
        assert not {prose(seed, n_words=150), near_copy(seed)} <= set(kept_texts)


def test_ten_thousand_documents_with_eight_thousand_copies() -> None:
    texts = [prose(seed, n_words=150) for seed in range(2000)] * 5  # ~10k docs, 8k exact copies
    result = curate_documents(table(texts), contamination={"qa": [prose(99999, n_words=200)]})
    # Every first copy kept, every later one named as an exact duplicate; none reaches the near-dup pass (whose
    # candidate pairs would otherwise grow with the square of a cluster's size).
    assert result.stats["docs_kept"] == 2000
    assert result.stats["dropped_by_reason"] == {"exact_duplicate": 8000}
    assert result.stats["near_dedup"]["candidate_pairs"] == 0


def test_boilerplate_shared_by_many_documents_is_not_a_leak() -> None:
    boilerplate = "if seed is None the numpy random state singleton is used and a new generator is made"
    test_text = "a unique test sentence about the kernel density of a sample, " + boilerplate
    source_of_test = prose(1) + " " + test_text  # the test example's own document: a real leak
    templated = [boilerplate + ". " + prose(10 + i) for i in range(12)]  # 12 documents share the template
    docs = table([source_of_test, *templated])
    result = curate_documents(docs, contamination={"task": [test_text]}, decontaminate_max_doc_frequency=10)
    assert ledger_rows(result).keys() == {"doc0"}
    assert result.stats["decontaminated_by_task"] == {"task": 1}
    assert result.stats["decontamination_ignored_common_ngrams"] > 0
    strict = curate_documents(docs, contamination={"task": [test_text]}, decontaminate_max_doc_frequency=0)
    assert strict.stats["decontaminated_by_task"] == {"task": 13}


def test_pii_is_replaced_before_the_other_blocks_and_counted() -> None:
    first = prose(20) + " Contact jane.doe@acme-corp.co.uk or +44 20 7946 0958."
    second = prose(20) + " Contact bob@mail.com or +1 415 555 2671."  # the same document for another person
    result = curate_documents(table([first, second, prose(21)]))
    kept = result.kept.column("text").to_pylist()
    assert kept[0] == prose(20) + " Contact <EMAIL> or <PHONE>." and kept[1] == prose(21)
    # Exact dedup saw the scrubbed text, so the second copy is a duplicate of the first.
    assert ledger_rows(result)["doc1"]["reason"] == "exact_duplicate"
    assert result.stats["pii_replaced"] == {"secret": 0, "email": 2, "iban": 0, "card": 0, "ip": 0, "phone": 2}
    assert result.stats["pii_documents_changed"] == 2
    assert result.stats["blocks"]["pii_scrub"] == {"seen": 3, "dropped": 0}

    only_phones = curate_documents(table([first]), pii_kinds=["phone"])
    assert only_phones.kept.column("text")[0].as_py().endswith("jane.doe@acme-corp.co.uk or <PHONE>.")
    untouched = curate_documents(table([first]), pii_scrub=False)
    assert untouched.kept.column("text")[0].as_py() == first and untouched.stats["pii_replaced"] == {}


def test_near_duplicate_is_dropped_and_names_the_kept_document() -> None:
    original, copy = prose(30, n_words=150), near_copy(30)
    docs = table([original, prose(31, n_words=150), original, copy], ids=["first", "other", "exact", "near"])
    result = curate_documents(docs)
    assert result.kept.column("id").to_pylist() == ["first", "other"]
    rows = ledger_rows(result)
    assert rows["exact"]["reason"] == "exact_duplicate"  # exact dedup runs first
    assert rows["near"]["reason"] == "near_duplicate" and rows["near"]["block"] == "near_dedup"
    assert rows["near"]["detail"].startswith("near-duplicate of first: estimated Jaccard 0.")
    assert result.stats["blocks"]["near_dedup"] == {"seen": 3, "dropped": 1}
    assert result.stats["near_dedup"]["verified_pairs"] == 1
    assert curate_documents(docs, near_dedup=False).kept.column("id").to_pylist() == ["first", "other", "near"]
    strict = curate_documents(docs, near_dedup_threshold=0.99, near_dedup_num_perm=64, near_dedup_bands=8)
    assert "near" in strict.kept.column("id").to_pylist()


def test_the_config_section_is_what_curate_documents_takes() -> None:
    result = curate_documents(table([prose(40, n_words=150), near_copy(40)]), **CurateConfig().model_dump())
    assert result.stats["docs_kept"] == 1
