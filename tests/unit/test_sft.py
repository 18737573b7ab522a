"""Instruction tuning: only response tokens carry loss; text metrics match hand-computed values."""

import pytest
import torch

from dapt.config import BaseConfig, PresetConfig
from dapt.eval.text_metrics import exact_match, rouge_l, token_f1
from dapt.model.chat import BUILTIN_TEMPLATE, IGNORE, encode_pair, pad_pairs
from dapt.model.load import load_original_base
from dapt.train.objectives import response_only_loss


def test_prompt_tokens_get_no_gradient():
    torch.manual_seed(0)
    model, tokenizer, _ = load_original_base(BaseConfig(preset=PresetConfig()))
    ids, labels = encode_pair(tokenizer, "What is 2+2?", "Four.", max_length=64)
    prompt_length = len(tokenizer(BUILTIN_TEMPLATE.format(prompt="What is 2+2?"))["input_ids"])
    assert labels[:prompt_length] == [IGNORE] * prompt_length and labels[prompt_length:] == ids[prompt_length:]
    batch = pad_pairs([(ids, labels)], tokenizer.pad_token_id)
    embeddings = model.get_input_embeddings()
    inputs = embeddings(batch["input_ids"]).detach().requires_grad_(True)

    def loss_with(embedded):
        logits = model(inputs_embeds=embedded, attention_mask=batch["attention_mask"]).logits
        targets = batch["labels"][:, 1:]
        return torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), targets.flatten(), ignore_index=IGNORE)

    loss_with(inputs).backward()
    # changing a prompt token's *target* cannot matter: perturbing prompt labels leaves the loss unchanged
    loss, units = response_only_loss(model, batch)
    altered = dict(batch, labels=batch["labels"].clone())
    assert units == len(ids) - prompt_length - 1 + 1  # response tokens that are predicted (incl. eos)
    altered["labels"][0, :prompt_length] = IGNORE
    assert response_only_loss(model, altered)[0].item() == pytest.approx(loss.item())
    altered["labels"][0, prompt_length + 1] = IGNORE  # drop one response target: the loss changes
    assert response_only_loss(model, altered)[0].item() != pytest.approx(loss.item())


def test_long_prompts_are_cut_from_the_left_and_the_response_kept():
    _, tokenizer, _ = load_original_base(BaseConfig(preset=PresetConfig()))
    ids, labels = encode_pair(tokenizer, "x" * 500, "the answer", max_length=40)
    assert len(ids) == 40
    kept = [t for t in labels if t != IGNORE]
    assert tokenizer.decode(kept[:-1]) == "the answer"


def test_text_metrics_by_hand():
    assert exact_match("The Answer.", "answer") == 1.0
    assert token_f1("a quick brown fox", "the quick red fox") == pytest.approx(2 * (2 / 3) * (2 / 3) / (4 / 3))
    # LCS of "quick brown fox jumps" vs "quick fox jumps high" is 3 tokens (quick fox jumps)
    assert rouge_l("quick brown fox jumps", "quick fox jumps high") == pytest.approx(0.75)
    assert rouge_l("", "") == 1.0 and rouge_l("x", "") == 0.0


def test_dpo_loss_against_a_hand_computed_value():
    import math

    from dapt.train.objectives import dpo_loss

    policy_chosen, policy_rejected = torch.tensor([-10.0, -4.0]), torch.tensor([-12.0, -3.0])
    reference_chosen, reference_rejected = torch.tensor([-11.0, -4.0]), torch.tensor([-11.0, -4.0])
    loss, chosen, rejected = dpo_loss(policy_chosen, policy_rejected, reference_chosen, reference_rejected, beta=0.5)
    # pair 1: rewards 0.5 and -0.5, margin 1; pair 2: rewards 0 and 0.5, margin -0.5
    expected = (-math.log(1 / (1 + math.exp(-1.0))) - math.log(1 / (1 + math.exp(0.5)))) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert chosen.tolist() == pytest.approx([0.5, 0.0]) and rejected.tolist() == pytest.approx([-0.5, 0.5])


def test_sequence_log_probability_counts_response_tokens_only():
    from dapt.train.objectives import sequence_logps

    torch.manual_seed(0)
    model, tokenizer, _ = load_original_base(BaseConfig(preset=PresetConfig()))
    pair = encode_pair(tokenizer, "question", "answer", max_length=64)
    batch = pad_pairs([pair], tokenizer.pad_token_id)
    with torch.no_grad():
        logps = torch.log_softmax(model(input_ids=batch["input_ids"]).logits[0, :-1], dim=-1)
        ids, labels = pair
        expected = sum(logps[t - 1, labels[t]].item() for t in range(1, len(ids)) if labels[t] != IGNORE)
        assert sequence_logps(model, batch).item() == pytest.approx(expected, rel=1e-5)
