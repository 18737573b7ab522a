"""The tokenizer tools stream their corpus: the same tokenizer as from a list, a bounded sample, flat memory."""

import hashlib
import json
import random
import tracemalloc
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from transformers import AutoTokenizer

import dapt.tokenizer.train as train_module
from dapt.cli import main
from dapt.config import BaseConfig, PresetConfig
from dapt.data.corpus_texts import SEED, CorpusTexts, SplitTexts, WordSample
from dapt.errors import DataError
from dapt.model.load import load_original_base
from dapt.tokenizer.extend import extend_base
from dapt.tokenizer.train import run_train, train_tokenizer
from helpers.corpora import WORDS, prose

TERMS = ["Chebyshev", "eigenvalue", "Kolmogorov", "quadrature", "spline_basis", "2024", "x_ij"]
# Recorded with the code that read the whole corpus into a list first (tokenizers 0.23.3): a BPE of 400 tokens
# trained on `documents()`, and the tokens the tiny preset gets with add=40, domain_vocab_size=600.
TRAINED_VOCAB_AND_MERGES = "01a11d4754687225204973ea524a62cc725cc48f7b0c375cea19bc383f89af8e"
EXTENSION_TOKENS = "d47592c863f1260b0c8d781b808e4b6e5fe7b12d68478b2cba8e21b682ee6944"


def documents(count: int = 300) -> list[str]:
    rng = random.Random(5)
    return [prose(i, 40) + " " + " ".join(rng.choice(TERMS) for _ in range(6)) for i in range(count)]


def write_jsonl(path, texts: list[str]):
    path.write_text("".join(json.dumps({"text": text}) + "\n" for text in texts))
    return path


def vocab_and_merges(tokenizer) -> str:
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    return hashlib.sha256(json.dumps([spec["model"]["vocab"], spec["model"]["merges"]]).encode()).hexdigest()


def test_training_on_a_streamed_file_gives_the_recorded_tokenizer(tmp_path, capsys):
    corpus = write_jsonl(tmp_path / "domain.jsonl", documents())
    assert main(["tokenizer", "train", str(corpus), "--vocab-size", "400", "--out", str(tmp_path / "tok")]) == 0
    assert vocab_and_merges(AutoTokenizer.from_pretrained(tmp_path / "tok")) == TRAINED_VOCAB_AND_MERGES
    assert vocab_and_merges(train_tokenizer(documents(), 400)) == TRAINED_VOCAB_AND_MERGES  # from a list
    shuffled = documents()
    random.Random(1).shuffle(shuffled)
    assert vocab_and_merges(train_tokenizer(iter(shuffled), 400)) == TRAINED_VOCAB_AND_MERGES  # any order
    captured = capsys.readouterr()
    assert "from 300 documents" in captured.out and "tokens per word on them" in captured.out
    assert "tokenizer train: read and count: 300 documents" in captured.err  # progress, with its rates
    assert "documents/s" in captured.err


def test_extending_from_a_streamed_file_adds_the_recorded_tokens(tmp_path):
    corpus = CorpusTexts([str(write_jsonl(tmp_path / "domain.jsonl", documents()))], side="domain", **_plain(tmp_path))
    model, tokenizer, _ = load_original_base(BaseConfig(preset=PresetConfig()))
    report = extend_base(model, tokenizer, corpus, add=40, domain_vocab_size=600).report
    added = json.dumps([entry["token"] for entry in report["added_tokens"]])
    assert hashlib.sha256(added.encode()).hexdigest() == EXTENSION_TOKENS
    assert (report["domain_documents"], report["domain_tokens_before"], report["domain_tokens_after"]) == (
        300,
        90_828,
        59_326,
    )
    assert report["fertility_sample"]["documents"] == 300  # 13,800 words: all of them are measured
    with pytest.raises(TypeError, match="several times"):
        extend_base(model, tokenizer, iter(documents()), add=40)


def _plain(tmp_path) -> dict:
    return {"text_field": "text", "base_dir": tmp_path}


def test_the_word_sample_is_the_seeded_order_cut_at_the_budget():
    texts = [" ".join(["w"] * random.Random(i).randint(1, 30)) + f" d{i}" for i in range(500)]
    sample = WordSample(max_words=800)
    for text in texts:
        sample.offer(text)
        assert sample.words < 800 + 32  # the budget plus one document at most, at every step
    keys = np.random.default_rng(SEED).random(4096)[: len(texts)]
    expected, words = [], 0
    for index in np.argsort(keys, kind="stable"):  # the documents in key order until 800 words
        expected.append(texts[index])
        words += len(texts[index].split())
        if words >= 800:
            break
    assert sample.texts() == expected and not sample.covers_corpus and sample.offered == 500
    whole = WordSample(max_words=10**9)
    for text in texts:
        whole.offer(text)
    assert whole.covers_corpus and sorted(whole.texts()) == sorted(texts)


def test_a_split_is_streamed_in_corpus_order_across_unaligned_batches(tmp_path, monkeypatch):
    count = 50
    splits = [("domain_train", "domain_val", None)[i % 3] for i in range(count)]
    ids = [f"doc{i}" for i in range(count)]
    pq.write_table(
        pa.table({"id": ids, "text": [f"text {i}" for i in range(count)]}),
        tmp_path / "documents.parquet",
        row_group_size=7,
    )
    listed = pa.table({"id": ids, "split": pa.array(splits, pa.string())})
    pq.write_table(listed, tmp_path / "splits.parquet", row_group_size=11)
    monkeypatch.setattr(SplitTexts, "BATCH", 4)
    train = SplitTexts(tmp_path / "splits.parquet", tmp_path / "documents.parquet", "domain_train")
    expected = [f"text {i}" for i in range(count) if splits[i] == "domain_train"]
    assert train.documents == len(expected) and list(train) == expected and list(train) == expected  # re-readable
    pq.write_table(listed.set_column(0, "id", pa.array(ids[::-1])), tmp_path / "splits.parquet")
    with pytest.raises(DataError, match="does not list the documents"):
        list(SplitTexts(tmp_path / "splits.parquet", tmp_path / "documents.parquet", "domain_train"))


def peak_python_memory(function) -> int:
    tracemalloc.start()
    try:
        function()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_training_memory_does_not_grow_with_the_corpus(tmp_path, monkeypatch, capsys):
    # 30k and 180k words (0.2 and 1.3 MB of JSONL), both beyond a fertility sample cut to 5k words. Holding the
    # corpus (as the tool did) peaked at 0.5 and 1.6 MB of Python memory here; streaming holds the sample and
    # one batch: 0.35 MB on both.
    monkeypatch.setattr(train_module, "FERTILITY_SAMPLE_WORDS", 5_000)

    def corpus(count: int) -> Path:
        rng = random.Random(count)
        lines = (" ".join(rng.choice(WORDS) + rng.choice(["", "s", "ed"]) for _ in range(300)) for _ in range(count))
        path = tmp_path / f"corpus{count}.jsonl"
        path.write_text("".join(json.dumps({"text": line}) + "\n" for line in lines))
        return path

    small, large = corpus(100), corpus(600)
    peaks = [
        peak_python_memory(lambda path=path: run_train([str(path)], vocab_size=300, out=tmp_path / "tok"))
        for path in (small, small, large)  # the first run also loads what the tool imports lazily
    ]
    assert peaks[2] < peaks[1] + 200_000, peaks
    assert peaks[2] < 0.5 * large.stat().st_size, peaks
    assert "on a seeded random sample of" in capsys.readouterr().out
