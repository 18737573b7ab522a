"""Packed token shards: documents stay intact and delimited; windows and mixing are deterministic."""

import json

import numpy as np

from dapt.data.shards import TokenShard, WindowMixer, eval_windows, write_shard


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
