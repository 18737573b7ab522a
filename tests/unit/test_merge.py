"""Parameter arithmetic (`dapt.model.merge`, the `restore:` section): the merge and the chat vector on known weights,
written in shards or one file, the extended vocabulary's rows, and the errors for models that do not fit."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from dapt.config import BaseConfig, PresetConfig, RestoreConfig
from dapt.errors import ConfigError
from dapt.model.load import load_original_base, save_model_folder
from dapt.model.merge import chat_vector, merge
from dapt.stages.restore import check_same_ids


def tiny_folder(folder, value=None, **preset):
    """A from-scratch tiny model saved in `folder`; every parameter set to `value` when given."""
    torch.manual_seed(0)
    model, tokenizer, _ = load_original_base(BaseConfig(preset=PresetConfig(**preset)))
    if value is not None:
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.fill_(value)
    save_model_folder(model, tokenizer, folder)
    return model, tokenizer


def weights(folder):
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    return dict(model.named_parameters())


def written(folder):
    """The restored folder loads as the model it should be: the tiny model's config beside its weights."""
    (folder / "config.json").write_text((folder.parent / "dapt" / "config.json").read_text())
    return weights(folder)


def test_a_merge_of_known_weights_is_exact_and_its_ends_are_the_two_models(tmp_path):
    tiny_folder(tmp_path / "dapt", 2.0)
    tiny_folder(tmp_path / "original", 6.0)
    counts = merge(tmp_path / "dapt", tmp_path / "original", 0.25, tmp_path / "merged")
    merged = written(tmp_path / "merged")
    assert all(torch.equal(p, torch.full_like(p, 3.0)) for p in merged.values())  # 0.75 * 2 + 0.25 * 6
    assert counts["tensors"] == len(merged) and counts["added_rows_kept"] == 0 and counts["copied"] == 0

    tiny_folder(tmp_path / "dapt", None)  # random weights: weight 1 gives the original back, bit for bit
    torch.manual_seed(1)
    model, tokenizer, _ = load_original_base(BaseConfig(preset=PresetConfig()))
    save_model_folder(model, tokenizer, tmp_path / "original")
    merge(tmp_path / "dapt", tmp_path / "original", 1.0, tmp_path / "merged")
    original = weights(tmp_path / "original")
    assert all(torch.equal(p, original[name]) for name, p in written(tmp_path / "merged").items())


def test_the_chat_vector_adds_the_instruction_delta_and_shards_load_as_one_file(tmp_path):
    tiny_folder(tmp_path / "dapt", 1.0)
    tiny_folder(tmp_path / "instruct", 5.0)
    tiny_folder(tmp_path / "pretrained", 3.0)
    folders = (tmp_path / "dapt", tmp_path / "instruct", tmp_path / "pretrained")
    chat_vector(*folders, 0.5, tmp_path / "restored")
    restored = written(tmp_path / "restored")
    assert all(torch.equal(p, torch.full_like(p, 2.0)) for p in restored.values())  # 1 + 0.5 * (5 - 3)

    chat_vector(*folders, 0.5, tmp_path / "sharded", shard_bytes=20_000)  # a few tensors a shard
    index = json.loads((tmp_path / "sharded" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 2 and not (tmp_path / "sharded" / "model.safetensors").exists()
    sharded = written(tmp_path / "sharded")
    assert all(torch.equal(p, restored[name]) for name, p in sharded.items())


def test_an_extended_vocabulary_keeps_its_added_rows_and_combines_the_others(tmp_path):
    model, tokenizer = tiny_folder(tmp_path / "original", 4.0)
    rows = model.get_input_embeddings().weight.shape[0]
    model.resize_token_embeddings(rows + 6)  # as vocabulary extension does: 6 tokens appended
    with torch.no_grad():
        model.get_input_embeddings().weight[rows:] = 7.0
        for name, parameter in model.named_parameters():
            if "embed_tokens" not in name:
                parameter.fill_(2.0)
        model.get_input_embeddings().weight[:rows] = 2.0
    save_model_folder(model, tokenizer, tmp_path / "dapt")
    counts = merge(tmp_path / "dapt", tmp_path / "original", 0.5, tmp_path / "merged")
    embeddings = written(tmp_path / "merged")["model.embed_tokens.weight"]
    assert embeddings.shape[0] == rows + 6 and counts["added_rows_kept"] == 6
    assert torch.equal(embeddings[:rows], torch.full_like(embeddings[:rows], 3.0))
    assert torch.equal(embeddings[rows:], torch.full_like(embeddings[rows:], 7.0))  # the DAPT base's own rows


def test_models_of_another_shape_or_with_other_tensors_are_refused_by_name(tmp_path):
    tiny_folder(tmp_path / "dapt", 1.0)
    tiny_folder(tmp_path / "wider", 1.0, intermediate_size=192)
    with pytest.raises(
        ConfigError,
        match=r"mlp\.down_proj\.weight: shape \[64, 192\] in the original base .* "
        r"but \[64, 176\] in the DAPT base; parameter arithmetic needs the same architecture",
    ):
        merge(tmp_path / "dapt", tmp_path / "wider", 0.5, tmp_path / "out")
    tiny_folder(tmp_path / "deeper", 1.0, num_layers=3)
    with pytest.raises(
        ConfigError,
        match=r"restore\.instruct .* does not have the DAPT base's tensors "
        r"\(not in the DAPT base: model\.layers\.2\.",
    ):
        chat_vector(tmp_path / "dapt", tmp_path / "deeper", tmp_path / "dapt", 1.0, tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no model.safetensors or model.safetensors.index.json"):
        merge(tmp_path / "dapt", tmp_path / "empty", 0.5, tmp_path / "out")


def test_tokenizers_must_give_every_shared_token_the_same_id():
    from dapt.model.byte_level import byte_level_tokenizer

    tokenizer = byte_level_tokenizer()
    extended = byte_level_tokenizer()
    extended.add_tokens(["scipy", "ndarray"])
    check_same_ids(extended, tokenizer, "the original base")  # tokens appended: the same ids below them
    with pytest.raises(ConfigError, match=r"2 tokens of restore\.instruct .* another id \(or none\) in the DAPT"):
        check_same_ids(tokenizer, extended, "restore.instruct (x)")


def test_the_restore_section_defaults_and_refusals():
    assert RestoreConfig(method="merge").weight == 0.5
    assert RestoreConfig(method="chat_vector", instruct="org/instruct").weight == 1.0
    with pytest.raises(ValueError, match="method chat_vector needs `instruct:`"):
        RestoreConfig(method="chat_vector")
    with pytest.raises(ValueError, match="instruct: only for method chat_vector"):
        RestoreConfig(method="merge", instruct="org/instruct")
    with pytest.raises(ValueError, match=r"weight 1\.5: a merge's weight .* is in \(0, 1\]"):
        RestoreConfig(method="merge", weight=1.5)
