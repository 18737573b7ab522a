"""The general-knowledge cloze check: batched log-likelihoods equal one-at-a-time ones, and a model that knows the
answers scores them."""

import pytest
import torch

from dapt.config import BaseConfig, PresetConfig
from dapt.eval.retention import cloze_items, continuation_logprobs, score_cloze
from dapt.model.load import load_original_base


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model, tokenizer, _ = load_original_base(BaseConfig(preset=PresetConfig()))
    return model.eval(), tokenizer


def _one_at_a_time(model, tokenizer, context, continuation):
    context_ids = tokenizer(context, add_special_tokens=False)["input_ids"]
    ids = tokenizer(f"{context} {continuation}", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logprobs = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].float(), dim=-1)
    return sum(float(logprobs[t - 1, ids[t]]) for t in range(len(context_ids), len(ids)))


def test_batched_padded_scores_equal_one_at_a_time_scores(tiny):
    model, tokenizer = tiny
    pairs = [("The capital of France is", "Paris"), ("Two plus two equals", "four and not five"), ("A", "b")]
    batched = continuation_logprobs(model, tokenizer, pairs)
    assert batched == pytest.approx([_one_at_a_time(model, tokenizer, *pair) for pair in pairs], abs=1e-4)


def test_the_right_option_scores_when_the_model_prefers_it(tiny, monkeypatch):
    model, tokenizer = tiny
    items = cloze_items()
    assert len(items) == 40 and all(len(item["options"]) == 4 for item in items)
    right = {(item["context"], item["options"][item["answer"]]) for item in items}

    def knows(model, tokenizer, pairs):  # a model that gives the right option the higher likelihood
        return [0.0 if pair in right else -50.0 for pair in pairs]

    monkeypatch.setattr("dapt.eval.retention.continuation_logprobs", knows)
    metrics, rows = score_cloze(model, tokenizer, items)
    assert metrics["accuracy"] == 1.0 and metrics["items"] == 40 and all(r["correct"] == 1.0 for r in rows)
    monkeypatch.undo()
    metrics, rows = score_cloze(model, tokenizer, items[:8])  # an untrained model: some score, below all
    assert 0.0 <= metrics["accuracy"] < 1.0 and metrics["answer_logprob"] < 0
