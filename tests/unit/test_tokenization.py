"""Streaming tokenisation (dapt.data.tokenization): held-out choice, shards of bounded size, identical output for
1 and N workers, and a SIGKILLed run that resumes from its finished parts to the same shards."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from dapt.data.documents import write_documents
from dapt.data.shards import eval_windows, open_split
from dapt.data.tokenization import (
    SPLIT_CODE,
    HeldOutSize,
    PartSettings,
    assemble_shards,
    choose_splits,
    read_index,
    tokenize_parts,
)
from dapt.model.byte_level import byte_level_tokenizer
from dapt.stages.tokenize import split_texts

SOURCES = ["dom", "rep", "gen"]


def test_held_out_documents_are_taken_in_key_order_until_the_budget():
    keys = np.array([5, 1, 9, 3, 7, 2, 8], dtype=np.uint64)
    lengths = np.array([10, 10, 10, 10, 10, 10, 10], dtype=np.int64)
    roles = np.zeros(7, dtype=np.int8)  # all domain
    splits, general_from = choose_splits(keys, lengths, roles, eval_tokens=15, max_train_tokens=None)
    # key order: 1 (doc 1), 2 (doc 5), 3 (doc 3), 5 (doc 0), ...; 15 tokens take two 10-token documents
    assert np.flatnonzero(splits == SPLIT_CODE["domain_test"]).tolist() == [1, 5]
    assert np.flatnonzero(splits == SPLIT_CODE["domain_val"]).tolist() == [0, 3]
    assert np.flatnonzero(splits == SPLIT_CODE["domain_train"]).tolist() == [2, 4, 6]
    assert general_from == "replay"


def test_held_out_splits_take_a_floor_of_documents_capped_by_share_and_tokens():
    # 1000 domain documents of 10 tokens and 20 general_eval ones of 100, keys in document order
    lengths = np.array([10] * 1000 + [100] * 20, dtype=np.int64)
    keys = np.arange(1020, dtype=np.uint64)
    roles = np.array([0] * 1000 + [2] * 20, dtype=np.int8)

    def counts(size):
        splits, _ = choose_splits(keys, lengths, roles, size, max_train_tokens=None)
        return {name: int((splits == SPLIT_CODE[name]).sum()) for name in ("domain_test", "domain_val", "general_val")}

    # by tokens alone: 40 tokens are 4 short documents, or one long one
    assert counts(HeldOutSize(40)) == {"domain_test": 4, "domain_val": 4, "general_val": 1}
    # at least 50 documents: the domain has 1000 (a tenth is 100), the general source 20 (half is 10)
    assert counts(HeldOutSize(40, 50)) == {"domain_test": 50, "domain_val": 50, "general_val": 10}
    # the token cap wins over the floor: 300 tokens are 30 short documents, 3 long ones
    assert counts(HeldOutSize(40, 50, 300)) == {"domain_test": 30, "domain_val": 30, "general_val": 3}
    # and the same documents, in key order, whatever the floor: the first 4 of the 50
    small, _ = choose_splits(keys, lengths, roles, HeldOutSize(40), None)
    large, _ = choose_splits(keys, lengths, roles, HeldOutSize(40, 50), None)
    assert np.flatnonzero(small == SPLIT_CODE["domain_test"]).tolist() == [0, 1, 2, 3]
    assert np.flatnonzero(large == SPLIT_CODE["domain_test"]).tolist() == list(range(50))


def test_general_held_out_comes_from_replay_without_a_general_source_and_max_train_tokens_caps():
    keys = np.arange(10, dtype=np.uint64)[::-1].copy()  # the last document first
    lengths = np.full(10, 4, dtype=np.int64)
    roles = np.array([0, 0, 0, 0, 0, 1, 1, 1, 1, 1], dtype=np.int8)
    splits, general_from = choose_splits(keys, lengths, roles, eval_tokens=4, max_train_tokens=8)
    assert general_from == "replay"
    assert np.flatnonzero(splits == SPLIT_CODE["general_test"]).tolist() == [9]
    assert np.flatnonzero(splits == SPLIT_CODE["general_val"]).tolist() == [8]
    assert np.flatnonzero(splits == SPLIT_CODE["replay_train"]).tolist() == [6, 7]  # 8 tokens, in key order
    assert np.flatnonzero(splits == SPLIT_CODE["domain_train"]).tolist() == [1, 2]
    assert (splits[[0, 5]] == -1).all()  # beyond max_train_tokens: in no split


def corpus(path: Path, documents: int = 240) -> Path:
    rng = np.random.default_rng(0)
    words = "the of and stress strain tensor beam load shear moment elastic modulus yield plastic".split()
    write_documents(
        (
            {
                "id": f"doc-{i:05d}",
                "text": " ".join(rng.choice(words, size=int(rng.integers(5, 60)))),
                "source": SOURCES[i % 3],
                "meta": {},
            }
            for i in range(documents)
        ),
        path,
    )
    return path


@pytest.fixture(scope="module")
def tokenizer_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tokenizer")
    byte_level_tokenizer().save_pretrained(folder)
    return folder


def tokenize(
    documents: Path, out: Path, tokenizer_folder: Path, *, workers: int, shard_tokens: int = 2000, backend="local"
) -> dict:
    tokenizer = byte_level_tokenizer()
    settings = PartSettings(str(tokenizer_folder), tokenizer.eos_token_id, len(tokenizer), seed=0)
    work = tokenize_parts(
        documents, out / "parts", settings, batch_size=20, workers=workers, backend=backend, log=lambda _: None
    )
    index = read_index(out / "parts", work["parts"])
    roles = np.array([0, 1, 2], dtype=np.int8)[index.sources]  # dom, rep, gen: first seen in that order
    splits, _ = choose_splits(index.keys, index.lengths, roles, eval_tokens=300, max_train_tokens=None)
    stats = assemble_shards(
        out / "parts", index, splits, out, source_order=SOURCES, shard_tokens=shard_tokens, vocab_size=len(tokenizer)
    )
    return {"work": work, "stats": stats}


def files_of(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_shards_hold_every_document_once_bounded_in_size_and_readable(tmp_path, tokenizer_folder):
    documents = corpus(tmp_path / "documents.parquet")
    result = tokenize(documents, tmp_path / "one", tokenizer_folder, workers=1)
    stats = result["stats"]
    listed = pq.read_table(tmp_path / "one" / "splits.parquet").to_pydict()
    assert len(listed["id"]) == 240  # one row per curated document, in corpus order
    in_a_split = sum(split is not None for split in listed["split"])
    unused = [s for s, split in zip(listed["source"], listed["split"], strict=True) if split is None]
    assert set(unused) == {"gen"}  # general_eval text beyond the two held-out splits is not trained on
    assert sum(s["documents"] for s in stats.values()) == in_a_split
    assert stats["domain_train"]["shards"] > 1  # ~5k training tokens in shards of ~2000
    train = open_split(tmp_path / "one" / "shards" / "domain_train")
    for shard in train.shards:
        assert shard.num_tokens < 2000 + 400  # a shard runs over by part of one document at most
    assert train.num_tokens == stats["domain_train"]["tokens"]
    # every training window is readable, across shard ends, and none crosses one
    assert sum(s.num_windows(16) for s in train.shards) == train.num_windows(16)
    assert train.window(train.num_windows(16) - 1, 16).shape == (17,)
    # held-out text: the splits' texts from the curated corpus, in shard order (what evaluate-lm measures)
    texts = split_texts(tmp_path / "one" / "splits.parquet", documents, wanted=("domain_test",))
    shard = open_split(tmp_path / "one" / "shards" / "domain_test")
    eos = byte_level_tokenizer().eos_token_id
    ids = np.asarray(shard.shards[0].tokens)
    first = ids[: int(np.argmax(ids == eos))]
    assert byte_level_tokenizer().decode(first.tolist()) == texts["domain_test"][0]
    assert list(texts) == ["domain_test"]
    assert len(eval_windows(shard, 16, max_tokens=64)) == 4


def test_one_and_two_workers_write_the_same_bytes(tmp_path, tokenizer_folder):
    documents = corpus(tmp_path / "documents.parquet")
    tokenize(documents, tmp_path / "one", tokenizer_folder, workers=1)
    two = tokenize(documents, tmp_path / "two", tokenizer_folder, workers=2)
    assert two["work"]["parts"] == 12
    one_files = files_of(tmp_path / "one")
    assert one_files and one_files == files_of(tmp_path / "two")


def test_ray_tasks_write_the_same_bytes_as_one_process(local_ray, tmp_path, tokenizer_folder):
    documents = corpus(tmp_path / "documents.parquet", documents=120)
    tokenize(documents, tmp_path / "one", tokenizer_folder, workers=1)
    on_ray = tokenize(documents, tmp_path / "ray", tokenizer_folder, workers=2, backend="ray")
    assert on_ray["work"]["parts"] == 6
    one_files = files_of(tmp_path / "one")
    assert one_files and one_files == files_of(tmp_path / "ray")


KILLED_RUN = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    import dapt.data.tokenization as tokenization

    real = tokenization.BatchTokenizer.__call__

    def slow(self, batch, part):  # slow enough to be killed midway
        time.sleep(0.3)
        return real(self, batch, part)

    tokenization.BatchTokenizer.__call__ = slow
    from dapt.model.byte_level import byte_level_tokenizer
    tokenizer = byte_level_tokenizer()
    settings = tokenization.PartSettings(sys.argv[3], tokenizer.eos_token_id, len(tokenizer), seed=0)
    tokenization.tokenize_parts(Path(sys.argv[1]), Path(sys.argv[2]), settings, batch_size=20, workers=1)
    """
)


def test_a_killed_run_resumes_from_its_finished_parts_to_the_same_shards(tmp_path, tokenizer_folder):
    documents = corpus(tmp_path / "documents.parquet")
    tokenize(documents, tmp_path / "whole", tokenizer_folder, workers=1)
    killed = tmp_path / "killed"
    script = tmp_path / "killed_run.py"
    script.write_text(KILLED_RUN)
    process = subprocess.Popen(
        [sys.executable, str(script), str(documents), str(killed / "parts"), str(tokenizer_folder)],
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while len(list((killed / "parts").glob("part-???????"))) < 4:
        assert process.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    finished = {p.name: p.stat().st_mtime_ns for p in (killed / "parts").glob("part-???????")}
    assert 4 <= len(finished) < 12

    result = tokenize(documents, killed, tokenizer_folder, workers=1)
    assert result["work"]["parts_resumed"] == len(finished)
    after = {p.name: p.stat().st_mtime_ns for p in (killed / "parts").glob("part-???????")}
    assert all(after[name] == mtime for name, mtime in finished.items())  # finished parts were not redone
    for name in ("shards", "splits.parquet"):
        whole, resumed = tmp_path / "whole" / name, killed / name
        assert files_of(whole) == files_of(resumed) if whole.is_dir() else whole.read_bytes() == resumed.read_bytes()
    assert pq.read_table(killed / "splits.parquet").num_rows == 240
