"""Labelled classification data: examples are dicts `{id, text, label}`.

Two sources: the user's own labelled file (`read_labelled_file`), and for the offline demo a task built
from a package's docstrings, labelled by the subpackage they come from (`docstring_classification_examples`):
"is this text about statistics, optimization or signal processing?" is a real domain task whose labels
come from the source tree, not from anyone's judgement.
"""

from __future__ import annotations

import csv
import random
import re
from collections import Counter, defaultdict
from pathlib import Path

import pyarrow.parquet as pq

from dapt.data.curate import normalize_text
from dapt.data.documents import make_doc_id
from dapt.data.ingest import iter_jsonl_records, lookup_field, text_of
from dapt.data.pydocs import iter_docstrings, strip_numpydoc_sections
from dapt.errors import ConfigError, DataError

LABELLED_SUFFIXES = (".jsonl", ".csv", ".parquet")


def _leak_pattern(package: str, classes: list[str]) -> re.Pattern[str]:
    """Matches `package.<class>` chains such as `scipy.stats` or `scipy.sparse.linalg.spsolve`'s prefix.

    The whole chain of class names is matched at once: masking `scipy.sparse` alone in
    `scipy.sparse.linalg` would leave `scipy.linalg`, naming a different class.
    """
    names = "|".join(re.escape(name) for name in sorted(classes, key=len, reverse=True))
    return re.compile(rf"\b{re.escape(package)}(?:\.(?:{names})\b)+")


def docstring_classification_examples(
    package: str, *, classes: list[str], max_per_class: int, min_chars: int, seed: int
) -> list[dict]:
    """Docstrings of `package` labelled with their subpackage, for a text classification task.

    The text is what a model must classify without being told the answer: Examples, See Also and
    References sections are removed (they import and cross-reference the module by name), then every
    `<package>.<class>` mention is replaced by `<package>`. Identical texts are kept once; a text found
    under two labels is dropped, since no model can get it right. Texts shorter than `min_chars` after
    this are dropped. Each class keeps at most `max_per_class` examples, sampled deterministically for
    `seed`; a class with fewer keeps all of them. Returned sorted by (label, id).
    """
    leak = _leak_pattern(package, classes)
    available: Counter[str] = Counter()
    labels_of_text: dict[str, set[str]] = defaultdict(set)
    first_id: dict[tuple[str, str], str] = {}
    source = f"{package}-docstrings"
    for doc in iter_docstrings(package, min_chars=min_chars):
        available[doc.subpackage] += 1
        if doc.subpackage not in classes:
            continue
        text = normalize_text(leak.sub(package, strip_numpydoc_sections(doc.text)))
        if len(text) < min_chars:
            continue
        labels_of_text[text].add(doc.subpackage)
        first_id.setdefault((text, doc.subpackage), make_doc_id(source, f"{doc.path}:{doc.line}"))

    by_label: dict[str, list[dict]] = defaultdict(list)
    for text, labels in labels_of_text.items():
        if len(labels) == 1:
            (label,) = labels
            by_label[label].append({"id": first_id[text, label], "text": text, "label": label})

    empty = [name for name in classes if not by_label[name]]
    if empty:
        listing = ", ".join(f"{name} ({count})" for name, count in available.most_common() if name)
        raise DataError(
            f"{package}: no docstring of at least {min_chars} chars for class(es) {', '.join(empty)}; "
            f"choose classes among the subpackages (docstring counts): {listing}"
        )

    examples: list[dict] = []
    for label in sorted(set(classes)):
        candidates = sorted(by_label[label], key=lambda example: example["id"])
        # One generator per label, seeded by (seed, label): adding a class does not reshuffle the others.
        rng = random.Random(f"{seed}:{label}")
        examples += rng.sample(candidates, min(max_per_class, len(candidates)))
    return sorted(examples, key=lambda example: (example["label"], example["id"]))


def _label_of(record: dict, label_field: str, where: str) -> str:
    try:
        label = lookup_field(record, label_field)
    except KeyError:
        keys = ", ".join(sorted(record)) or "none"
        raise DataError(
            f"{where}: no field '{label_field}' (keys in this record: {keys}); "
            "set label_field: to the key holding the label"
        ) from None
    if isinstance(label, bool) or not isinstance(label, (str, int)) or label == "":
        raise DataError(f"{where}: label '{label_field}' is {label!r}; labels must be non-empty strings or integers")
    return str(label)


def _record_id(record: dict, path: Path, where: str) -> str:
    """The record's own `id` when it has one, else one derived from file name and position (stable across runs)."""
    record_id = record.get("id")
    return str(record_id) if record_id not in (None, "") else make_doc_id(path.name, where)


def _labelled_records(path: Path) -> list[tuple[str, dict]]:
    """(where, record) for every record of a labelled file; `where` is `file:line` or `file row N`."""
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return [(where, record) for where, _, record in iter_jsonl_records(path, str(path))]
    if suffix == ".csv":
        with path.open(encoding="utf-8-sig", newline="") as handle:
            reader = csv.DictReader(handle)
            # line_num is the physical line where the record ended: right even for quoted multi-line texts.
            return [(f"{path}:{reader.line_num}", row) for row in reader]
    if suffix == ".parquet":
        rows = pq.read_table(path).to_pylist()
        return [(f"{path} row {index}", row) for index, row in enumerate(rows)]
    raise DataError(
        f"{path}: unsupported labelled-data file type '{suffix or '(none)'}'; use one of {', '.join(LABELLED_SUFFIXES)}"
    )


def read_labelled_file(path: Path, *, text_field: str = "text", label_field: str = "label") -> list[dict]:
    """Examples `{id, text, label}` from a `.jsonl`, `.csv` or `.parquet` file, in file order.

    Labels are read as strings (an integer label 1 becomes "1"). The id is the record's `id` field when
    it has one, otherwise derived from the file name and position, so it is stable across runs.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"labelled file '{path}' not found (looked in {path.resolve().parent})")
    try:
        records = _labelled_records(path)
    except UnicodeDecodeError as error:
        raise DataError(f"{path}: not valid UTF-8 ({error.reason}); re-save it as UTF-8") from None
    examples = []
    for where, record in records:
        text = text_of(record, text_field, where)
        label = _label_of(record, label_field, where)
        examples.append({"id": _record_id(record, path, where), "text": text, "label": label})
    if not examples:
        raise DataError(f"{path}: no examples in the file; it needs one record per labelled text")
    return examples


def _summary_line(text: str) -> str:
    """The first paragraph of a docstring, on one line: what a reader asks 'what does it do?' for."""
    return " ".join(text.strip().split("\n\n", 1)[0].split())


def docstring_instruction_examples(package: str, *, max_examples: int, min_chars: int, seed: int) -> list[dict]:
    """Instruction pairs from a package's docstrings: "What does `name` do?" → the docstring's summary.

    The answers are the package authors' own words; the question names the function or class by its
    dotted name (private modules elided, e.g. `scipy.stats._continuous_distns.norm_gen` → `scipy.stats.norm_gen`).
    Summaries of 20-300 characters are kept (shorter ones say nothing, longer ones are not summaries);
    duplicate questions are kept once. At most `max_examples`, sampled deterministically for `seed`.
    """
    by_prompt: dict[str, dict] = {}
    source = f"{package}-docstrings"
    for doc in iter_docstrings(package, min_chars=min_chars):
        response = _summary_line(doc.text)
        if not 20 <= len(response) <= 300:
            continue
        public = ".".join(part for part in doc.qualname.split(".") if not part.startswith("_"))
        if public.count(".") < 1:
            continue
        prompt = f"In Python, what does `{public}` do?"
        by_prompt.setdefault(
            prompt, {"id": make_doc_id(source, f"{doc.path}:{doc.line}"), "prompt": prompt, "response": response}
        )
    examples = sorted(by_prompt.values(), key=lambda example: example["id"])
    if not examples:
        raise DataError(f"{package}: no docstring yields a question and a 20-300 character summary")
    examples = random.Random(seed).sample(examples, min(max_examples, len(examples)))
    return sorted(examples, key=lambda example: example["id"])


def docstring_preference_examples(package: str, *, max_examples: int, min_chars: int, seed: int) -> list[dict]:
    """Preference pairs from a package's docstrings: the question of `docstring_instruction_examples`, the
    right summary as `chosen`, and the summary of another, randomly drawn function as `rejected` (a fluent
    answer about the wrong thing: what a model that does not know the package would say)."""
    pairs = docstring_instruction_examples(package, max_examples=max_examples, min_chars=min_chars, seed=seed)
    if len(pairs) < 2:
        raise DataError(f"{package}: preference pairs need at least two documented functions, found {len(pairs)}")
    rng = random.Random(f"{seed}:rejected")
    examples = []
    for index, pair in enumerate(pairs):
        other = rng.randrange(len(pairs) - 1)
        other += other >= index  # any pair but this one
        rejected = pairs[other]["response"]
        if rejected != pair["response"]:
            examples.append(
                {"id": pair["id"], "prompt": pair["prompt"], "chosen": pair["response"], "rejected": rejected}
            )
    return examples


def read_preference_file(
    path: Path, *, prompt_field: str = "prompt", chosen_field: str = "chosen", rejected_field: str = "rejected"
) -> list[dict]:
    """Examples `{id, prompt, chosen, rejected}` from a `.jsonl`, `.csv` or `.parquet` file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"preference file '{path}' not found (looked in {path.resolve().parent})")
    examples = []
    for where, record in _labelled_records(path):
        example = {
            "prompt": text_of(record, prompt_field, where, setting="prompt_field"),
            "chosen": text_of(record, chosen_field, where, setting="chosen_field"),
            "rejected": text_of(record, rejected_field, where, setting="rejected_field"),
        }
        example["id"] = _record_id(record, path, where)
        examples.append(example)
    if not examples:
        raise DataError(f"{path}: no examples in the file")
    return examples


def read_instruction_file(
    path: Path, *, prompt_field: str = "prompt", response_field: str = "response", messages_field: str = "messages"
) -> list[dict]:
    """Examples `{id, prompt, response}` from a `.jsonl`, `.csv` or `.parquet` file.

    A record has a prompt and a response field, or a chat (`messages_field`: [{role, content}, ...]); then
    the last assistant message is the response and the messages before it, as `role: content` lines, the
    prompt (a single user message is used as it is).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"instruction file '{path}' not found (looked in {path.resolve().parent})")
    examples = []
    for where, record in _labelled_records(path):
        if prompt_field in record:
            prompt = text_of(record, prompt_field, where, setting="prompt_field")
            response = text_of(record, response_field, where, setting="response_field")
        elif messages_field in record:
            prompt, response = _chat_pair(record[messages_field], where)
        else:
            keys = ", ".join(sorted(record)) or "none"
            raise DataError(
                f"{where}: neither '{prompt_field}' nor '{messages_field}' (keys: {keys}); set prompt_field: "
                "and response_field:, or messages_field:, to the keys holding the instruction data"
            )
        examples.append({"id": _record_id(record, path, where), "prompt": prompt, "response": response})
    if not examples:
        raise DataError(f"{path}: no examples in the file")
    return examples


def _chat_pair(messages: object, where: str) -> tuple[str, str]:
    if not isinstance(messages, list) or not all(isinstance(m, dict) and "content" in m for m in messages):
        raise DataError(f"{where}: messages must be a list of {{role, content}} objects")
    last_assistant = max((i for i, m in enumerate(messages) if m.get("role") == "assistant"), default=None)
    if last_assistant is None or last_assistant == 0:
        raise DataError(f"{where}: a chat needs a user message followed by an assistant message (the response)")
    before = messages[:last_assistant]
    if len(before) == 1:
        prompt = str(before[0]["content"])
    else:
        prompt = "\n".join(f"{m.get('role', 'user')}: {m['content']}" for m in before)
    return prompt, str(messages[last_assistant]["content"])


def split_examples(examples: list[dict], *, test_fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """(train, test), stratified by label: each label's examples are split in the same proportion.

    Every label with at least 2 examples gets at least 1 test and 1 train example, so per-class metrics
    exist for every class; a label with a single example goes to train. Deterministic for `seed` whatever
    the input order (examples are ordered by id before shuffling). Both lists are sorted by (label, id).
    """
    if not 0 < test_fraction < 1:
        raise ConfigError(f"test_fraction is {test_fraction}; it must be between 0 and 1 (e.g. 0.2)")
    by_label: dict[str, list[dict]] = defaultdict(list)
    for example in examples:
        by_label[example.get("label", "")].append(example)  # instruction examples have no label: one group
    train: list[dict] = []
    test: list[dict] = []
    for label in sorted(by_label):
        group = sorted(by_label[label], key=lambda example: (str(example.get("id", "")), str(example)))
        random.Random(f"{seed}:{label}").shuffle(group)
        n_test = min(max(round(len(group) * test_fraction), 1), len(group) - 1)
        test += group[:n_test]
        train += group[n_test:]

    def order(example: dict) -> tuple[str, str]:
        return example.get("label", ""), str(example.get("id", ""))

    return sorted(train, key=order), sorted(test, key=order)
