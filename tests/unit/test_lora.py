"""LoRA for continued pretraining: only adapters (and embeddings, on request) train; the merged export
computes what the adapted model computed."""

import pytest
import torch

from dapt.config import BaseConfig, LoraConfig, PresetConfig
from dapt.model.load import load_original_base
from dapt.model.lora import add_lora, merged_model


@pytest.mark.parametrize("train_embeddings", [False, True])
def test_merged_export_matches_the_adapted_model(train_embeddings):
    torch.manual_seed(0)
    model, _, _ = load_original_base(BaseConfig(preset=PresetConfig()))
    peft_model = add_lora(model, LoraConfig(r=4, alpha=8, train_embeddings=train_embeddings))
    trainable = {n for n, p in peft_model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or "modules_to_save" in n for n in trainable)
    assert any("embed_tokens" in n for n in trainable) == train_embeddings

    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-2)
    tokens = torch.randint(0, 256, (2, 16))
    for _ in range(3):
        loss = torch.nn.functional.cross_entropy(
            peft_model(input_ids=tokens).logits[:, :-1].flatten(0, 1), tokens[:, 1:].flatten()
        )
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    with torch.no_grad():
        adapted = peft_model(input_ids=tokens).logits
        merged = merged_model(peft_model)
        assert type(merged).__name__ == "LlamaForCausalLM"
        torch.testing.assert_close(merged(input_ids=tokens).logits, adapted, atol=1e-4, rtol=1e-4)
        if train_embeddings:
            assert merged.lm_head.weight.data_ptr() == merged.model.embed_tokens.weight.data_ptr()
