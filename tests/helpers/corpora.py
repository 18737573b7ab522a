"""Generated corpora for the curation tests."""

from __future__ import annotations

import json
import random

import pyarrow as pa

from dapt.data.documents import DOCUMENT_SCHEMA

WORDS = "the model and data of signal to filter with matrix sparse kernel estimate sample integral spline basis".split()


def prose(seed: int, n_words: int = 80) -> str:
    rng = random.Random(seed)
    return " ".join(" ".join(rng.choice(WORDS) for _ in range(8)).capitalize() + "." for _ in range(n_words // 8))


def mixed_corpus(n: int = 120) -> tuple[pa.Table, dict[str, list[str]]]:
    """Documents that every block drops some of, with duplicates spread over the batches."""
    test_text = prose(10_000, n_words=40)
    boilerplate = prose(20_000, n_words=40)  # in many documents and in the test text: ignored, not a leak
    texts = []
    for i in range(n):
        kind = i % 10
        if kind == 0:
            texts.append("too short")
        elif kind == 1:
            texts.append("0 1 2 3 4 5 6 7 8 9 " * 30)  # a table of numbers
        elif kind == 2:
            texts.append(prose(i // 20))  # exact copies of earlier documents of this kind
        elif kind == 3:
            words = prose(1000 + i // 20, 160).split()
            words[40] = f"changed{i}"
            texts.append(" ".join(words))  # near-copies of one another
        elif kind == 4 and i % 20 == 4:
            texts.append(prose(i) + " " + test_text)  # a leak
        elif kind == 5:
            texts.append(prose(i) + " " + boilerplate + f" Contact ann{i}@uni.org or call +1 415 555 0{i:03d}.")
        else:
            texts.append(prose(i) + "\r\n\r\n\r\n\r\n\r\n" + prose(i + 5000))
    table = pa.table(
        {
            "id": [f"doc{i}" for i in range(n)],
            "text": texts,
            "source": ["corpus"] * n,
            "meta": [json.dumps({"path": "docs.jsonl", "line": i + 1}) for i in range(n)],
        },
        schema=DOCUMENT_SCHEMA,
    )
    return table, {"qa": [test_text + " " + boilerplate], "cls": ["words not in the corpus"]}
