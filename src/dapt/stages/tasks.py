"""task: a task's labelled examples, split into train and test, as Parquet (id, text, label)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from dapt.config import TaskConfig
from dapt.data.tasks import (
    docstring_classification_examples,
    docstring_instruction_examples,
    docstring_preference_examples,
    read_instruction_file,
    read_labelled_file,
    read_preference_file,
    split_examples,
)
from dapt.errors import DataError
from dapt.stages.context import StageContext


def write_examples(examples: list[dict[str, Any]], path: Path) -> None:
    """Classification examples are (id, text, label); instruction examples (id, prompt, response)."""
    if examples and "chosen" in examples[0]:
        keys: tuple[str, ...] = ("id", "prompt", "chosen", "rejected")
    elif examples and "prompt" in examples[0]:
        keys = ("id", "prompt", "response")
    else:
        keys = ("id", "text", "label")
    pq.write_table(pa.table({key: [str(e[key]) for e in examples] for key in keys}), path)


def example_text(example: dict[str, str]) -> str:
    """The whole text of an example, as it could leak into pretraining (for decontamination)."""
    if "text" in example:
        return example["text"]
    answers = [example[k] for k in ("response", "chosen", "rejected") if k in example]
    return "\n".join([example["prompt"], *answers])


def read_examples(path: Path) -> list[dict[str, str]]:
    return pq.read_table(path).to_pylist()


def run(context: StageContext) -> dict[str, Any]:
    """The task's examples (its `TaskConfig` is the stage's section; of it, this stage reads `examples_fields`)."""
    task = context.section_of(TaskConfig)
    if task.type in ("instruction", "preference"):
        return run_instruction(context, task)
    data, seed = task.data, context.config["seed"]
    if data.kind == "python_docstrings":
        assert data.package is not None
        examples = docstring_classification_examples(
            data.package,
            classes=data.classes,
            max_per_class=data.max_per_class,
            min_chars=data.min_chars,
            seed=seed,
        )
        train, test = split_examples(examples, test_fraction=task.test_fraction, seed=seed)
    else:
        assert data.train is not None
        train = read_labelled_file(Path(data.train), text_field=data.text_field, label_field=data.label_field)
        if data.test:
            test = read_labelled_file(Path(data.test), text_field=data.text_field, label_field=data.label_field)
        else:
            train, test = split_examples(train, test_fraction=task.test_fraction, seed=seed)
    labels = sorted({e["label"] for e in train})
    unknown = sorted({e["label"] for e in test} - set(labels))
    if unknown:
        raise DataError(
            f"tasks.{task.name}: test labels {unknown} never occur in the training data (labels: {labels}); "
            "a classifier cannot learn them — add training examples or fix the labels"
        )
    if len(labels) < 2:
        raise DataError(f"tasks.{task.name}: the training data has {len(labels)} label(s); classification needs 2+")
    write_examples(train, context.out / "train.parquet")
    write_examples(test, context.out / "test.parquet")
    (context.out / "labels.json").write_text(json.dumps(labels) + "\n")
    train_counts, test_counts = Counter(e["label"] for e in train), Counter(e["label"] for e in test)
    context.log(f"{task.name}: {len(train)} train / {len(test)} test examples, {len(labels)} classes")
    return {
        "train_examples": len(train),
        "test_examples": len(test),
        "labels": labels,
        "per_class": {label: {"train": train_counts[label], "test": test_counts[label]} for label in labels},
    }


def run_instruction(context: StageContext, task: TaskConfig) -> dict[str, Any]:
    data, seed = task.data, context.config["seed"]
    preference = task.type == "preference"
    if data.kind == "python_docstrings":
        assert data.package is not None
        make = docstring_preference_examples if preference else docstring_instruction_examples
        examples = make(data.package, max_examples=data.max_examples, min_chars=data.min_chars, seed=seed)
        train, test = split_examples(examples, test_fraction=task.test_fraction, seed=seed)
    else:
        assert data.train is not None
        if preference:
            fields = {
                "prompt_field": data.prompt_field,
                "chosen_field": data.chosen_field,
                "rejected_field": data.rejected_field,
            }
            read = read_preference_file
        else:
            fields = {
                "prompt_field": data.prompt_field,
                "response_field": data.response_field,
                "messages_field": data.messages_field,
            }
            read = read_instruction_file
        train = read(Path(data.train), **fields)
        if data.test:
            test = read(Path(data.test), **fields)
        else:
            train, test = split_examples(train, test_fraction=task.test_fraction, seed=seed)
    if not train or not test:
        raise DataError(f"tasks.{task.name}: {len(train)} train and {len(test)} test examples; both must be non-empty")
    write_examples(train, context.out / "train.parquet")
    write_examples(test, context.out / "test.parquet")
    kind = "preference pairs" if preference else "prompt-response pairs"
    context.log(f"{task.name}: {len(train)} train / {len(test)} test {kind}")
    return {"train_examples": len(train), "test_examples": len(test)}
