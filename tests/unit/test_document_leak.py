"""`document_mask` is checked on the model itself: packed documents must not see each other, whatever the base."""

import pytest
import torch
import transformers

from dapt.errors import ConfigError
from dapt.train.objectives import check_documents_kept_apart

SMALL = {"vocab_size": 64, "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4}
KEPT_APART = {
    "llama": (transformers.LlamaConfig, {"intermediate_size": 128, "num_key_value_heads": 2}),
    "qwen2": (transformers.Qwen2Config, {"intermediate_size": 128, "num_key_value_heads": 2}),
    "gemma": (transformers.GemmaConfig, {"intermediate_size": 128, "num_key_value_heads": 2, "head_dim": 16}),
    "gpt2": (transformers.GPT2Config, {"n_embd": 64, "n_layer": 2, "n_head": 4}),
    "gpt_neox": (transformers.GPTNeoXConfig, {"intermediate_size": 128}),
    "falcon": (transformers.FalconConfig, {}),
    "opt": (transformers.OPTConfig, {"ffn_dim": 128, "word_embed_proj_dim": 64}),
}


def model(kind: str, attention: str) -> torch.nn.Module:
    config_class, options = KEPT_APART[kind]
    torch.manual_seed(0)
    config = config_class(**SMALL, **options)
    return transformers.AutoModelForCausalLM.from_config(config, attn_implementation=attention).eval()


@pytest.mark.parametrize("kind", sorted(KEPT_APART))
def test_sdpa_keeps_packed_documents_apart_in_every_family(kind):
    assert check_documents_kept_apart(model(kind, "sdpa"), eos_id=1, vocab_size=64) < 1e-5


def test_an_attention_that_lets_documents_see_each_other_is_a_config_error_naming_the_fix():
    # OPT's eager attention builds no block-diagonal mask from restarted position ids (transformers 5)
    with pytest.raises(ConfigError, match="opt with attention eager") as error:
        check_documents_kept_apart(model("opt", "eager"), eos_id=1, vocab_size=64)
    assert "base.attn_implementation: sdpa" in str(error.value) and "document_mask: false" in str(error.value)
