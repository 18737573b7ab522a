"""Packed documents do not see each other: positions restart and attention is block-diagonal."""

import torch

from dapt.config import BaseConfig, PresetConfig
from dapt.data.shards import document_position_ids
from dapt.model.load import load_original_base
from dapt.train.objectives import lm_batch

EOS = 0


def test_positions_restart_after_each_end_of_text():
    ids = torch.tensor([[5, 6, EOS, 7, 8, 9, EOS, 4]])
    assert document_position_ids(ids, EOS).tolist() == [[0, 1, 2, 0, 1, 2, 3, 0]]


def test_a_packed_document_is_predicted_as_if_it_were_alone():
    torch.manual_seed(0)
    model, tokenizer, _ = load_original_base(BaseConfig(preset=PresetConfig()))
    model.eval()
    eos = tokenizer.eos_token_id
    second = [40, 41, 42, 43, 44, 45]
    packed_a = torch.tensor([[10, 11, 12, eos, *second, 46]])  # (1, seq_len + 1)
    packed_b = torch.tensor([[90, 91, 92, eos, *second, 46]])  # another first document
    alone = torch.tensor([[*second, 46]])
    with torch.no_grad():

        def second_doc_logits(windows):
            batch = lm_batch(windows, eos)
            logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits
            return logits[0, -len(second) :]

        reference = model(input_ids=alone[:, :-1]).logits[0]
        torch.testing.assert_close(second_doc_logits(packed_a), reference, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(second_doc_logits(packed_b), reference, atol=1e-5, rtol=1e-4)
        # without the document mask the first document leaks into the second
        leaky = model(input_ids=packed_a[:, :-1]).logits[0, -len(second) :]
        assert not torch.allclose(leaky, reference, atol=1e-3)
