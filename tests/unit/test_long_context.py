"""Context extension: RoPE scaling written into a model config, and the pieces of its evaluation."""

import numpy as np
import pytest
from transformers import GPT2Config, LlamaConfig

from dapt.config import ContextConfig
from dapt.errors import ConfigError
from dapt.eval.long_context import (
    loss_by_position,
    passkey_lengths,
    passkey_prompt,
    position_edges,
    short_context_recovered,
)
from dapt.model.byte_level import byte_level_tokenizer
from dapt.model.context import extend_context, rope_settings


@pytest.mark.parametrize("kind", ["yarn", "linear", "dynamic", "llama3"])
def test_rope_scaling_is_written_with_the_old_window(kind):
    config = LlamaConfig(max_position_embeddings=2048)
    changed = extend_context(config, ContextConfig(length=8192, rope_scaling=kind))
    assert config.max_position_embeddings == 8192
    rope = rope_settings(config)
    assert rope["rope_type"] == kind and rope["factor"] == 4.0 and rope["original_max_position_embeddings"] == 2048
    assert (changed["old_window"], changed["new_window"]) == (2048, 8192)
    if kind == "llama3":
        assert rope["low_freq_factor"] == 1.0 and rope["high_freq_factor"] == 4.0


def test_a_new_rope_theta_alone_and_an_extension_of_an_extended_base():
    config = LlamaConfig(max_position_embeddings=1024)
    extend_context(config, ContextConfig(length=4096, rope_scaling=None, rope_theta=500000))
    assert rope_settings(config)["rope_theta"] == 500000 and rope_settings(config)["rope_type"] == "default"
    again = LlamaConfig(max_position_embeddings=1024)
    extend_context(again, ContextConfig(length=4096))
    extend_context(again, ContextConfig(length=16384))  # the second stage scales from the original window
    assert rope_settings(again)["factor"] == 16.0 and rope_settings(again)["original_max_position_embeddings"] == 1024


def test_what_cannot_be_extended_is_refused_with_the_reason():
    with pytest.raises(ConfigError, match="no rotary position embedding"):
        extend_context(GPT2Config(), ContextConfig(length=4096))
    with pytest.raises(ConfigError, match="not longer than the base's window"):
        extend_context(LlamaConfig(max_position_embeddings=4096), ContextConfig(length=4096))
    with pytest.raises(ValueError, match="set rope_scaling"):
        ContextConfig(length=4096, rope_scaling=None)


def test_the_passkey_is_stated_once_at_its_depth_and_asked_for_last():
    tokenizer = byte_level_tokenizer()
    for depth in (0.1, 0.9):
        text = tokenizer.decode(passkey_prompt(tokenizer, 1000, depth, 31415))
        assert text.count("The pass key is 31415") == 1 and text.endswith("What is the pass key? The pass key is")
        assert abs(text.index("31415") / len(text) - depth) < 0.1
        assert 990 <= len(passkey_prompt(tokenizer, 1000, depth, 31415)) <= 1000
    assert passkey_lengths(2048, 8192) == [1024, 2048, 4096, 8192]


def test_loss_by_position_and_the_recovery_verdict():
    losses = np.array([3.0, 2.0, 1.0, 1.0])
    positions = np.array([0, 1, 300, 600])
    buckets = loss_by_position(losses, positions, position_edges(256, 1024))["buckets"]
    assert [(b["from"], b["to"]) for b in buckets] == [(0, 64), (64, 128), (128, 256), (256, 512), (512, 1024)]
    assert [b["loss"] for b in buckets] == [2.5, None, None, 1.0, 1.0]
    verdict = short_context_recovered(
        {"domain_loss_at_old_window": 2.0, "general_loss_at_old_window": 3.0},
        {"domain_loss_at_old_window": 2.01, "general_loss_at_old_window": 3.2},
    )
    assert verdict["domain"]["recovered"] and not verdict["general"]["recovered"]
