"""Labelled data: docstring labels come from the source tree, leaks are masked, splits are reproducible."""

from __future__ import annotations

import csv
import json
import re
import textwrap
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dapt.data.tasks import docstring_classification_examples, read_labelled_file, split_examples
from dapt.errors import DataError

FILLER = "This sentence pads the docstring so that it passes the minimum length for examples. " * 3


@pytest.fixture
def labelled_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """stats: 3 distinct docstrings + 1 duplicate; optimize: 2, one also found under stats; io: 1."""
    root = tmp_path / "labpkg"

    def module(path: str, docs: list[str]) -> None:
        file = root / path
        file.parent.mkdir(parents=True, exist_ok=True)
        body = "".join(f'def f{i}():\n    """{doc}"""\n\n' for i, doc in enumerate(docs))
        file.write_text(body, encoding="utf-8")

    root.mkdir()
    (root / "__init__.py").write_text("", encoding="utf-8")
    shared = f"Shared text under two labels. {FILLER}"
    module(
        "stats/_a.py",
        [
            f"Mean of labpkg.stats.describe. {FILLER}",
            f"Variance estimator. {FILLER}\n\nExamples\n--------\n>>> from labpkg import stats",
            f"Median estimator. {FILLER}",
            f"Median estimator. {FILLER}",
            shared,
        ],
    )
    module("optimize/_b.py", [f"Minimize, see labpkg.optimize.minimize. {FILLER}", shared])
    module("io/_c.py", [f"Read a file. {FILLER}"])
    monkeypatch.syspath_prepend(str(tmp_path))
    return "labpkg"


def test_labels_come_from_subpackages_with_leaks_masked(labelled_package: str) -> None:
    examples = docstring_classification_examples(
        labelled_package, classes=["stats", "optimize"], max_per_class=100, min_chars=200, seed=0
    )
    assert Counter(example["label"] for example in examples) == {"stats": 3, "optimize": 1}
    texts = " ".join(example["text"] for example in examples)
    assert "labpkg.stats" not in texts and "labpkg.optimize" not in texts
    assert "Mean of labpkg.describe." in texts and "Minimize, see labpkg.minimize." in texts
    assert ">>>" not in texts and "Examples" not in texts
    assert "Shared text under two labels" not in texts  # ambiguous: dropped from both classes
    assert examples == sorted(examples, key=lambda example: (example["label"], example["id"]))


def test_sampling_is_deterministic_per_seed(labelled_package: str) -> None:
    def sample(seed: int) -> list[str]:
        examples = docstring_classification_examples(
            labelled_package, classes=["stats"], max_per_class=2, min_chars=200, seed=seed
        )
        return [example["id"] for example in examples]

    assert len(sample(0)) == 2
    assert sample(0) == sample(0)
    assert len({tuple(sample(seed)) for seed in range(10)}) > 1


def test_class_without_examples_lists_available_subpackages(labelled_package: str) -> None:
    with pytest.raises(DataError) as error:
        docstring_classification_examples(
            labelled_package, classes=["stats", "signal"], max_per_class=10, min_chars=200, seed=0
        )
    message = str(error.value)
    assert "signal" in message and "stats (5)" in message and "optimize (2)" in message and "io (1)" in message


def test_scipy_subpackage_names_are_masked() -> None:
    classes = ["stats", "optimize", "signal", "sparse"]
    examples = docstring_classification_examples("scipy", classes=classes, max_per_class=10**6, min_chars=200, seed=0)
    counts = Counter(example["label"] for example in examples)
    assert set(counts) == set(classes) and min(counts.values()) > 100
    leak = re.compile(r"scipy\.(stats|optimize|signal|sparse)\b")
    assert not any(leak.search(example["text"]) for example in examples)
    assert len({example["text"] for example in examples}) == len(examples)


def test_read_labelled_jsonl_csv_parquet(tmp_path: Path) -> None:
    rows = [{"text": "good film", "label": "pos"}, {"text": "dull plot", "label": "neg"}]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    with (tmp_path / "d.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["text", "label"])
        writer.writeheader()
        writer.writerows(rows)
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet")
    for name in ["d.jsonl", "d.csv", "d.parquet"]:
        examples = read_labelled_file(tmp_path / name)
        assert [(example["text"], example["label"]) for example in examples] == [
            ("good film", "pos"),
            ("dull plot", "neg"),
        ]
        assert len({example["id"] for example in examples}) == 2


def test_integer_labels_become_strings(tmp_path: Path) -> None:
    (tmp_path / "d.jsonl").write_text('{"sentence": "x", "y": 1, "id": "a"}\n', encoding="utf-8")
    examples = read_labelled_file(tmp_path / "d.jsonl", text_field="sentence", label_field="y")
    assert examples == [{"id": "a", "text": "x", "label": "1"}]


def test_missing_label_names_file_line_and_field(tmp_path: Path) -> None:
    (tmp_path / "d.jsonl").write_text('{"text": "a", "label": "x"}\n{"text": "b"}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"d\.jsonl:2: no field 'label'.*set label_field:"):
        read_labelled_file(tmp_path / "d.jsonl")
    (tmp_path / "d.csv").write_text(
        textwrap.dedent(
            """\
            body,label
            "multi
            line",a
            """
        ),
        encoding="utf-8",
    )
    with pytest.raises(DataError, match=r"d\.csv:3: no field 'text'.*set text_field:"):
        read_labelled_file(tmp_path / "d.csv")


def examples_for(counts: dict[str, int]) -> list[dict]:
    return [
        {"id": f"{label}-{i}", "text": f"{label} text {i}", "label": label}
        for label, count in counts.items()
        for i in range(count)
    ]


def test_stratified_split_is_deterministic_and_covers_every_class() -> None:
    examples = examples_for({"a": 50, "b": 10, "c": 2, "d": 1})
    train, test = split_examples(examples, test_fraction=0.2, seed=0)
    test_counts = Counter(example["label"] for example in test)
    assert test_counts == {"a": 10, "b": 2, "c": 1}
    assert "d" in {example["label"] for example in train}
    assert len(train) + len(test) == len(examples)
    assert not {example["id"] for example in train} & {example["id"] for example in test}
    # same split whatever the input order; another seed gives another split
    assert split_examples(list(reversed(examples)), test_fraction=0.2, seed=0) == (train, test)
    assert split_examples(examples, test_fraction=0.2, seed=1)[1] != test
