"""The top-blocks recipe must compute exactly what the exported HF classifier computes."""

import torch

from dapt.config import BaseConfig, PresetConfig
from dapt.model.classifier import TopBlocks, build_classifier, encode_right_padded, frozen_features
from dapt.model.load import load_original_base, save_model_folder


def test_top_blocks_on_cached_features_match_the_exported_classifier(tmp_path):
    torch.manual_seed(0)
    model, tokenizer, _ = load_original_base(BaseConfig(preset=PresetConfig(num_layers=3)))
    save_model_folder(model, tokenizer, tmp_path)
    classifier = build_classifier(tmp_path, ["a", "b", "c"], tokenizer.pad_token_id).eval()
    texts = ["a short one", "a rather longer text that needs more tokens than the first", "mid length text"]
    input_ids, attention_mask = encode_right_padded(tokenizer, texts, 64, tokenizer.pad_token_id)

    expected = classifier(input_ids=input_ids, attention_mask=attention_mask).logits
    for top_blocks in (1, 2, 3):
        features = frozen_features(classifier, input_ids, attention_mask, top_blocks)
        last_index = attention_mask.sum(dim=1) - 1
        with torch.no_grad():
            got = TopBlocks(classifier, top_blocks)(features, last_index)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
