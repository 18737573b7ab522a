"""pretrain.mix opens each named source inside its role's training shard, or says why it cannot."""

import pytest

from dapt.config import config_from_dict
from dapt.data.shards import write_shard
from dapt.errors import DataError
from dapt.pipeline import StageContext
from dapt.stages.pretrain import source_shards

PIPELINE = {
    "name": "t",
    "base": {"preset": {}},
    "sources": [
        {"name": "d", "role": "domain", "kind": "pydoc_topics"},
        {"name": "r1", "role": "replay", "kind": "pydoc_topics"},
        {"name": "r2", "role": "replay", "kind": "pydoc_topics"},
    ],
    "pretrain": {"mix": {"d": 2, "r1": 1, "r2": 1}},
}


def context(tmp_path):
    config = config_from_dict(PIPELINE)
    return StageContext("pretrain", tmp_path / "pretrain", {}, {}, config)


def test_each_source_is_opened_alone(tmp_path):
    shards = tmp_path / "tokens" / "shards"
    write_shard(shards / "domain_train", [[1] * 50], vocab_size=300, document_sources=["d"])
    write_shard(shards / "replay_train", [[2] * 30, [3] * 40], vocab_size=300, document_sources=["r1", "r2"])
    opened = source_shards(shards, context(tmp_path), {"d": 2, "r1": 1, "r2": 1}, seq_len=8)
    assert {name: shard.window(0, 8)[0].item() for name, shard in opened.items()} == {"d": 1, "r1": 2, "r2": 3}
    assert opened["r2"].num_tokens == 40


def test_a_source_left_without_training_text_is_named(tmp_path):
    shards = tmp_path / "tokens" / "shards"
    write_shard(shards / "domain_train", [[1] * 500], vocab_size=300, document_sources=["d"])
    write_shard(shards / "replay_train", [[2] * 30], vocab_size=300, document_sources=["r1"])
    with pytest.raises(DataError, match="source 'r2' has no training documents"):
        source_shards(shards, context(tmp_path), {"d": 2, "r1": 1, "r2": 1}, seq_len=8)
    with pytest.raises(DataError, match="source 'r1' has 30 training tokens, less than one sequence"):
        source_shards(shards, context(tmp_path), {"d": 2, "r1": 1}, seq_len=64)


def test_shards_without_recorded_sources_ask_for_a_new_tokenize(tmp_path):
    shards = tmp_path / "tokens" / "shards"
    write_shard(shards / "domain_train", [[1] * 50], vocab_size=300)
    with pytest.raises(DataError, match="does not record its sources"):
        source_shards(shards, context(tmp_path), {"d": 1}, seq_len=8)
