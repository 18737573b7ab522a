"""Packed token shards: documents stay intact and delimited; windows and mixing are deterministic."""

import json
from collections import Counter

import numpy as np
import pytest

from dapt.data.shards import IndexPermutation, TokenShard, WindowMixer, eval_windows, write_shard
from dapt.errors import DataError


def test_shard_round_trips_documents_and_boundaries(tmp_path):
    documents = [[5, 6, 7, 0], [8, 0], [9, 10, 11, 12, 0]]
    stats = write_shard(tmp_path / "s", documents, vocab_size=300)
    shard = TokenShard(tmp_path / "s")
    assert stats == {"tokens": 11, "documents": 3}
    assert shard.tokens.dtype == np.uint16
    assert [
        shard.tokens[a:b].tolist() for a, b in zip(shard.doc_offsets[:-1], shard.doc_offsets[1:], strict=True)
    ] == documents


def test_large_vocabularies_use_32_bit_ids(tmp_path):
    write_shard(tmp_path / "s", [[70_000, 1]], vocab_size=100_000)
    assert TokenShard(tmp_path / "s").tokens.tolist() == [70_000, 1]


def test_windows_pack_across_documents_with_one_token_overlap(tmp_path):
    write_shard(tmp_path / "s", [list(range(1, 8)), list(range(8, 12))], vocab_size=300)  # 11 tokens
    shard = TokenShard(tmp_path / "s")
    assert shard.num_windows(4) == 2
    assert shard.window(0, 4).tolist() == [1, 2, 3, 4, 5]
    assert shard.window(1, 4).tolist() == [5, 6, 7, 8, 9]
    assert len(eval_windows(shard, 4)) == 2


def test_mixture_follows_weights_and_is_deterministic(tmp_path):
    write_shard(tmp_path / "a", [[1] * 4001], vocab_size=300)
    write_shard(tmp_path / "b", [[2] * 4001], vocab_size=300)
    shards = {"a": TokenShard(tmp_path / "a"), "b": TokenShard(tmp_path / "b")}

    def draw(seed):
        stream = WindowMixer(shards, {"a": 0.8, "b": 0.2}, 4, seed)
        return [next(stream)[0] for _ in range(2000)]

    first = draw(1)
    assert first == draw(1)
    assert 0.75 < first.count("a") / len(first) < 0.85
    assert first != draw(2)


def test_mixer_resumes_exactly_from_its_state(tmp_path):
    write_shard(tmp_path / "a", [list(range(1, 200))], vocab_size=300)
    write_shard(tmp_path / "b", [list(range(1, 60))], vocab_size=300)
    shards = {"a": TokenShard(tmp_path / "a"), "b": TokenShard(tmp_path / "b")}
    uninterrupted = WindowMixer(shards, {"a": 0.5, "b": 0.5}, 8, seed=3)
    expected = [(name, window.tolist()) for name, window in (next(uninterrupted) for _ in range(100))]
    first = WindowMixer(shards, {"a": 0.5, "b": 0.5}, 8, seed=3)
    got = [(name, window.tolist()) for name, window in (next(first) for _ in range(37))]  # several passes over b
    resumed = WindowMixer(shards, {"a": 0.5, "b": 0.5}, 8, seed=3)
    resumed.load_state_dict(json.loads(json.dumps(first.state_dict())))  # through JSON, as in a checkpoint
    got += [(name, window.tolist()) for name, window in (next(resumed) for _ in range(63))]
    assert got == expected


def test_a_shard_records_its_sources_and_opens_each_alone(tmp_path):
    documents = [[1, 1, 0], [2, 0], [3, 3, 3, 0], [4, 0]]
    stats = write_shard(tmp_path / "s", documents, vocab_size=300, document_sources=["a", "a", "b", "c"])
    assert stats["sources"] == {
        "a": {"documents": 2, "tokens": 5, "first_document": 0},
        "b": {"documents": 1, "tokens": 4, "first_document": 2},
        "c": {"documents": 1, "tokens": 2, "first_document": 3},
    }
    b = TokenShard(tmp_path / "s", source="b")
    assert b.tokens.tolist() == [3, 3, 3, 0] and b.doc_offsets.tolist() == [0, 4]
    assert TokenShard(tmp_path / "s", source="a").window(0, 3).tolist() == [1, 1, 0, 2]  # never into b
    with pytest.raises(DataError, match="not consecutive"):
        write_shard(tmp_path / "t", documents, vocab_size=300, document_sources=["a", "b", "a", "c"])
    with pytest.raises(DataError, match="no documents of source 'z'"):
        TokenShard(tmp_path / "s", source="z")


def test_three_source_mixture_realises_the_weights_in_tokens(tmp_path):
    for name, length in (("a", 9001), ("b", 3001), ("c", 501)):  # sizes unlike the weights
        write_shard(tmp_path / name, [[ord(name)] * length], vocab_size=300)
    shards = {name: TokenShard(tmp_path / name) for name in "abc"}
    weights = {"a": 1.0, "b": 2.0, "c": 5.0}  # relative: 12.5%, 25%, 62.5%
    stream = WindowMixer(shards, weights, 10, seed=0)
    tokens = Counter()
    for _ in range(8000):
        name, window = next(stream)
        tokens[name] += len(window) - 1  # the inputs of the window: the tokens it trains on
    total = sum(tokens.values())
    for name, weight in weights.items():
        assert tokens[name] / total == pytest.approx(weight / 8, abs=0.015), name
    assert stream.drawn == {name: tokens[name] // 10 for name in "abc"}
    again = WindowMixer(shards, weights, 10, seed=0)
    replay = WindowMixer(shards, weights, 10, seed=0)
    assert [next(again)[0] for _ in range(300)] == [next(replay)[0] for _ in range(300)]


@pytest.mark.parametrize("n", [1, 2, 3, 7, 64, 1000, 4099])
def test_the_window_order_is_a_seeded_permutation(n):
    order = [IndexPermutation(n, (0, 1, 2))[i] for i in range(n)]
    assert sorted(order) == list(range(n))  # every window once per pass
    assert order == [IndexPermutation(n, (0, 1, 2))[i] for i in range(n)]  # a function of its key
    if n >= 64:
        assert order != [IndexPermutation(n, (0, 1, 3))[i] for i in range(n)]  # another pass: another order
        assert order != sorted(order)
        # not the identity in disguise: positions move far, on average about a third of the range
        assert sum(abs(a - b) for a, b in enumerate(order)) / n > n / 5
