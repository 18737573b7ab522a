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


def test_lora_classifier_exports_a_plain_folder_that_predicts_what_the_adapters_do(tmp_path):
    """recipe lora for classification: adapters on the decoder, the head in full, merged on export."""
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from dapt.artifacts import Artifact
    from dapt.config import TaskConfig
    from dapt.pipeline import StageContext
    from dapt.stages import adapt

    torch.manual_seed(0)
    model, tokenizer, _ = load_original_base(BaseConfig(preset=PresetConfig()))
    save_model_folder(model, tokenizer, tmp_path / "base" / "model")
    task_folder = tmp_path / "task"
    task_folder.mkdir()
    texts = [f"{word} number {i}" for i in range(12) for word in ("alpha", "beta")]
    labels = [word for _ in range(12) for word in ("a", "b")]
    table = {"id": [str(i) for i in range(len(texts))], "text": texts, "label": labels}
    pq.write_table(pa.table(table), task_folder / "train.parquet")
    (task_folder / "labels.json").write_text(json.dumps(["a", "b"]))
    task = TaskConfig.model_validate(
        {
            "name": "t",
            "recipe": "lora",
            "lora": {"r": 4, "alpha": 8},
            "epochs": 3,
            "batch_size": 8,
            "lr": 1e-2,
            "max_length": 16,
            "data": {"kind": "files", "train": "unused.jsonl"},
        }
    )
    out = tmp_path / "adapt"
    out.mkdir()
    inputs = {
        "base": Artifact(tmp_path / "base", {"name": "base", "id": "b0", "kind": "base"}),
        "task": Artifact(task_folder, {"name": "task-t", "id": "t0", "kind": "task"}),
    }
    key = {"task": task.variant_key(), "variant": "dapt", "seed": 0}
    context = StageContext("adapt-t-dapt", out, key, inputs, None, task)
    metrics = adapt.run(context)
    assert metrics["recipe"] == "lora" and 0 < metrics["trainable_parameters"] < metrics["parameters"]
    assert (out / "adapter" / "adapter_model.safetensors").is_file()

    tokenizer = AutoTokenizer.from_pretrained(out / "model")
    input_ids, attention_mask = encode_right_padded(tokenizer, texts[:6], 16, tokenizer.pad_token_id)
    with torch.no_grad():
        exported = AutoModelForSequenceClassification.from_pretrained(out / "model").eval()
        assert type(exported).__name__ == "LlamaForSequenceClassification"
        got = exported(input_ids=input_ids, attention_mask=attention_mask).logits
        # the same base + head initialisation (seed 0) with the saved adapters and trained head: the in-process model
        torch.manual_seed(0)
        fresh = build_classifier(tmp_path / "base" / "model", ["a", "b"], tokenizer.pad_token_id)
        untrained = fresh(input_ids=input_ids, attention_mask=attention_mask).logits
        adapted = PeftModel.from_pretrained(fresh, out / "adapter").eval()
        expected = adapted(input_ids=input_ids, attention_mask=attention_mask).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(got, untrained, atol=1e-3)  # training changed what it predicts
    assert exported.config.id2label == {0: "a", 1: "b"}
