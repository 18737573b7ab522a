"""Block-sparse sliding-window attention for packed windows: the same logits and gradients as transformers' sdpa
path with its dense sliding-window mask; `pretrain.attention_window` sets the window in the DAPT base or is refused."""

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from pydantic import ValidationError
from transformers import (
    AutoModelForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

import dapt.model.local_attention as local
from dapt.cli import main
from dapt.config import PretrainConfig
from dapt.data.shards import document_position_ids
from dapt.errors import ConfigError
from dapt.model.load import model_config
from dapt.model.local_attention import NAME, applies, local_attention
from dapt.model.packed_attention import packed_attention
from dapt.stages.pretrain import export_dapt_base

EOS = 3
WINDOW = 11
TINY = Path(__file__).resolve().parents[1] / "integration" / "tiny.yaml"
SHAPE = {"vocab_size": 40, "hidden_size": 64, "intermediate_size": 128, "attn_implementation": "sdpa"}


def tiny_mistral(window: int = WINDOW) -> MistralForCausalLM:
    torch.manual_seed(0)  # 4 query heads share 2 key-value heads: grouped-query attention
    config = MistralConfig(**SHAPE, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
    config.sliding_window = window
    return MistralForCausalLM(config)


def packed_rows() -> torch.Tensor:
    """Three rows of 64 tokens: documents shorter than the window, one token long, exactly the window, one past it,
    and several times longer."""
    torch.manual_seed(1)
    rows = torch.randint(4, 40, (3, 64))
    rows[0, [5, 6, 18, 31, 51]] = EOS  # documents of 6, 1, 12 (the window + 1), 13, 20 and 12 tokens
    rows[1, [WINDOW - 1]] = EOS  # the window exactly, then 53 tokens
    return rows  # row 2: one document of 64 tokens


def logits_and_grads(model, rows, local_kernel: bool):
    position_ids = document_position_ids(rows, EOS)
    model.zero_grad()
    if local_kernel:
        with local_attention(model, rows):
            assert model.config._attn_implementation == NAME
            logits = model(input_ids=rows, position_ids=position_ids, use_cache=False).logits
    else:  # transformers' sdpa with its dense (batch, 1, T, T) sliding-window and document mask
        logits = model(input_ids=rows, position_ids=position_ids, use_cache=False).logits
    logits.square().mean().backward()
    return logits.detach(), {name: p.grad.clone() for name, p in model.named_parameters()}


def assert_same(model, rows):
    dense_logits, dense_grads = logits_and_grads(model, rows, local_kernel=False)
    local_logits, local_grads = logits_and_grads(model, rows, local_kernel=True)
    torch.testing.assert_close(local_logits, dense_logits, rtol=1e-5, atol=1e-5)
    for name, grad in dense_grads.items():
        torch.testing.assert_close(local_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)
    return local_logits


@pytest.mark.parametrize("block", [None, 4, 5])  # its own block size (one block a row here); blocks of 4 and 5
def test_same_logits_and_gradients_as_the_dense_sliding_window_mask(monkeypatch, block):
    if block is not None:  # many blocks a document, the window (11) not a multiple of them
        monkeypatch.setattr(local, "block_size", lambda window: block)
    model, rows = tiny_mistral(), packed_rows()
    logits = assert_same(model, rows)
    # the window does bite: a document longer than it scores differently with full attention
    full = tiny_mistral(window=1000)
    full_logits = full(input_ids=rows, position_ids=document_position_ids(rows, EOS), use_cache=False).logits
    assert not torch.allclose(logits[2, WINDOW:], full_logits[2, WINDOW:].detach(), atol=1e-3)
    torch.testing.assert_close(logits[2, :WINDOW], full_logits[2, :WINDOW].detach(), rtol=1e-5, atol=1e-5)


def test_one_sequence_a_row_without_document_positions(monkeypatch):
    monkeypatch.setattr(local, "block_size", lambda window: 4)
    model, rows = tiny_mistral(), packed_rows()
    reference = model(input_ids=rows, use_cache=False).logits.detach()
    with local_attention(model, rows):
        torch.testing.assert_close(model(input_ids=rows, use_cache=False).logits.detach(), reference)


def test_qwen2_full_attention_layers_below_max_window_layers(monkeypatch):
    monkeypatch.setattr(local, "block_size", lambda window: 4)
    torch.manual_seed(0)
    config = Qwen2Config(
        **SHAPE,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        use_sliding_window=True,
        sliding_window=WINDOW,
        max_window_layers=1,  # layer 0 full attention, layer 1 windowed
    )
    assert config.layer_types == ["full_attention", "sliding_attention"]
    assert_same(Qwen2ForCausalLM(config), packed_rows())


def test_only_where_it_is_exact():
    rows = packed_rows()
    assert applies(tiny_mistral(), rows)
    torch.manual_seed(0)
    llama = LlamaForCausalLM(LlamaConfig(**SHAPE, num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2))
    assert not applies(llama, rows)  # no window: packed_attention's document-by-document kernel instead
    with packed_attention(llama, rows, document_position_ids(rows, EOS)), local_attention(llama, rows):
        assert llama.config._attn_implementation != NAME
    checkpointed = tiny_mistral()
    checkpointed.activation_checkpointing_enable()
    assert not applies(checkpointed, rows)  # its backward re-runs the forward outside the context
    eager = tiny_mistral()
    eager.config._attn_implementation = "eager"
    assert not applies(eager, rows)
    model = tiny_mistral()
    with local_attention(model, rows):
        pass
    assert model.config._attn_implementation == "sdpa" and NAME not in model.config.to_json_string()


def saved(model, folder: Path) -> Path:
    model.save_pretrained(folder)
    return folder


def test_the_window_goes_into_the_config_before_the_model_is_built(tmp_path):
    torch.manual_seed(0)
    qwen = Qwen2ForCausalLM(Qwen2Config(**SHAPE, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2))
    folder = saved(qwen, tmp_path / "qwen")
    config = model_config(folder, 7)
    assert config.sliding_window == 7 and config.layer_types == ["sliding_attention"] * 2
    windowed = AutoModelForCausalLM.from_pretrained(folder, config=config)
    assert [layer.self_attn.sliding_window for layer in windowed.model.layers] == [7, 7]


def test_a_base_without_sliding_window_attention_is_refused(tmp_path):
    torch.manual_seed(0)
    llama = LlamaForCausalLM(LlamaConfig(**SHAPE, num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2))
    with pytest.raises(ConfigError, match=r"pretrain.attention_window: this base \(llama\).*Mistral.*Qwen2"):
        model_config(saved(llama, tmp_path / "llama"), 16)


def test_a_llama_preset_is_refused_before_anything_runs(tmp_path, capsys):
    assert main(["pretrain", str(TINY), "--out", str(tmp_path), "--set", "pretrain.attention_window=16"]) == 2
    assert (
        "pretrain.attention_window: a from-scratch preset without base.preset.sliding_window" in capsys.readouterr().err
    )
    assert not (tmp_path / "ingest").exists()


def test_a_window_not_below_the_sequence_or_with_context_parallelism_is_refused():
    with pytest.raises(ValidationError, match=r"attention_window: 256 tokens, not below .*\(seq_len 256\)"):
        PretrainConfig(attention_window=256)
    with pytest.raises(ValidationError, match=r"\(seq_len 512\)"):  # the longest stage's window counts
        PretrainConfig(attention_window=512, stages=[{"steps": 1}, {"steps": 1, "seq_len": 512}])
    PretrainConfig(attention_window=300, stages=[{"steps": 1}, {"steps": 1, "seq_len": 512}])  # below in one stage
    with pytest.raises(ValidationError, match="context_parallel"):
        PretrainConfig(attention_window=64, context_parallel=2)
    assert "attention_window" not in PretrainConfig().cache_key()  # pretrain ids from before the field stay
    assert PretrainConfig(attention_window=64).cache_key()["attention_window"] == 64


def test_a_dapt_base_that_is_the_original_still_carries_the_window(tmp_path):
    base = saved(tiny_mistral(window=1000), tmp_path / "base")
    before = (base / "config.json").read_text()
    context = SimpleNamespace(out=tmp_path / "pretrain", log=lambda message: None)
    config = PretrainConfig(attention_window=16)
    export_dapt_base(context, config, 0, base, None, None, None)  # best step 0: no step improved on the base
    assert AutoModelForCausalLM.from_pretrained(context.out / "model").config.sliding_window == 16
    assert (base / "config.json").read_text() == before, "the base is never modified"


@pytest.mark.integration
def test_pretraining_a_windowed_preset_exports_the_window(tmp_path):
    options = {
        "base.preset.sliding_window": 1024,  # a Mistral whose window covers every sequence: full attention
        "pretrain.attention_window": 16,
        "pretrain.max_steps": 2,
        "pretrain.eval_every": 2,
    }
    overrides = [arg for key, value in options.items() for arg in ("--set", f"{key}={value}")]
    assert main(["pretrain", str(TINY), "--out", str(tmp_path), *overrides]) == 0
    metrics = json.loads((tmp_path / "pretrain" / "manifest.json").read_text())["metrics"]
    assert metrics["attention_window"] == 16
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "pretrain" / "model").config.sliding_window == 16
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "base" / "model").config.sliding_window == 1024
