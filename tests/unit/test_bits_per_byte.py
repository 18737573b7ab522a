"""Bits per byte: the held-out measure that compares bases with different tokenizers, checked by hand."""

import math
from types import SimpleNamespace

import pytest
import torch

from dapt.stages.evaluate import first_characters
from dapt.train.objectives import bits_per_byte, text_nats


class TableModel(torch.nn.Module):
    """A 'language model' whose next-token log-probabilities depend only on the current token: row `t` of
    `log_probs` is log p(next | t). Its loss can be written down by hand."""

    def __init__(self, log_probs: torch.Tensor) -> None:
        super().__init__()
        self.log_probs = torch.nn.Parameter(log_probs, requires_grad=False)
        self.seen_position_ids: list[torch.Tensor | None] = []

    def forward(self, input_ids, position_ids=None, use_cache=False):
        self.seen_position_ids.append(position_ids)
        return SimpleNamespace(logits=self.log_probs[input_ids])


EOS = 0
PROBABILITIES = torch.tensor(
    [
        [0.1, 0.2, 0.3, 0.4],  # after end-of-text
        [0.25, 0.25, 0.25, 0.25],  # after token 1
        [0.5, 0.1, 0.1, 0.3],  # after token 2
        [0.7, 0.1, 0.1, 0.1],  # after token 3
    ]
)


def test_bits_per_byte_of_two_documents_by_hand():
    model = TableModel(PROBABILITIES.log())
    # stream: eos 1 2 eos 3 — targets 1 (after eos), 2 (after 1), 3 (after eos); the eos after 2 is no text
    nats, tokens = text_nats(model, [[1, 2], [3]], EOS, seq_len=3)
    expected = -(math.log(0.2) + math.log(0.25) + math.log(0.4))
    assert tokens == 3
    assert nats == pytest.approx(expected, rel=1e-6)
    # the texts were, say, "ab" and "c": 3 bytes
    assert bits_per_byte(nats, 3) == pytest.approx(-(math.log2(0.2) + math.log2(0.25) + math.log2(0.4)) / 3)


def test_every_token_counts_once_across_windows_and_the_padded_last_one():
    model = TableModel(PROBABILITIES.log())
    documents = [[1, 2, 3, 1, 2, 3, 1], [2, 2], [3]]
    expected = 0.0
    for document in documents:
        previous = EOS
        for token in document:
            expected -= math.log(PROBABILITIES[previous, token])
            previous = token
    for seq_len in (1, 2, 4, 5, 64):  # windows cut documents anywhere; a table model needs no context
        nats, tokens = text_nats(model, documents, EOS, seq_len=seq_len, batch_size=2)
        assert tokens == sum(map(len, documents))
        assert nats == pytest.approx(expected, rel=1e-6)


def test_positions_restart_after_end_of_text_only_with_document_masking():
    model = TableModel(PROBABILITIES.log())
    text_nats(model, [[1, 2], [3, 1]], EOS, seq_len=8, document_mask=True)
    (positions,) = model.seen_position_ids
    # inputs eos 1 2 eos 3 + padding (eos): positions restart at the token after each end-of-text, as in training
    assert positions.tolist() == [[0, 0, 1, 2, 0, 1, 0, 0]]
    model.seen_position_ids.clear()
    text_nats(model, [[1, 2], [3, 1]], EOS, seq_len=8, document_mask=False)
    assert model.seen_position_ids == [None]


def test_a_uniform_model_costs_log2_vocab_bits_per_token_whatever_the_cut():
    vocab = 258
    model = TableModel(torch.zeros(vocab, vocab))  # every next token equally likely
    text = "naïve café"  # 10 characters, 12 UTF-8 bytes
    as_bytes = list(text.encode("utf-8"))  # a byte-level tokenizer: one token per byte
    nats, tokens = text_nats(model, [[2 + b for b in as_bytes]], EOS, seq_len=4)
    assert tokens == 12
    assert bits_per_byte(nats, 12) == pytest.approx(math.log2(vocab))
    # a tokenizer with longer tokens: half as many tokens for the same 12 bytes, so half the bits per byte
    nats, tokens = text_nats(model, [[1, 2, 3, 1, 2, 3]], EOS, seq_len=4)
    assert bits_per_byte(nats, 12) == pytest.approx(math.log2(vocab) / 2)


def test_first_characters_keeps_documents_in_order_and_cuts_the_last():
    assert first_characters(["abcd", "efgh", "ij"], 6) == ["abcd", "ef"]
    assert first_characters(["abcd", "efgh"], 8) == ["abcd", "efgh"]
    assert first_characters(["abcd", "efgh"], 100) == ["abcd", "efgh"]
    assert first_characters(["naïve"], 3) == ["naï"]  # characters, never half of one
