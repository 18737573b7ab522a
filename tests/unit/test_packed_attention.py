"""Document-by-document attention for packed windows: the same logits and gradients as transformers' masked sdpa."""

import torch
from transformers import (
    FalconConfig,
    FalconForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
)

from dapt.data.shards import document_position_ids
from dapt.model.packed_attention import NAME, applies, packed_attention

EOS = 3


def tiny_llama(**options) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=40,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,  # grouped-query attention
        attn_implementation="sdpa",
        **options,
    )
    return LlamaForCausalLM(config)


def packed_rows() -> torch.Tensor:
    torch.manual_seed(1)
    rows = torch.randint(4, 40, (3, 48))
    rows[0, [5, 20, 21, 40]] = EOS  # several documents, one of a single token
    rows[2, 47] = EOS  # a document ends at the window's last token
    return rows  # row 1: one document filling the window


def logits_and_grads(model, rows, packed: bool):
    position_ids = document_position_ids(rows, EOS)
    model.zero_grad()
    if packed:
        with packed_attention(model, rows, position_ids):
            logits = model(input_ids=rows, position_ids=position_ids, use_cache=False).logits
    else:
        logits = model(input_ids=rows, position_ids=position_ids, use_cache=False).logits
    logits.square().mean().backward()
    return logits.detach(), {name: p.grad.clone() for name, p in model.named_parameters()}


def test_same_logits_and_gradients_as_the_block_diagonal_mask():
    model, rows = tiny_llama(), packed_rows()
    masked_logits, masked_grads = logits_and_grads(model, rows, packed=False)
    packed_logits, packed_grads = logits_and_grads(model, rows, packed=True)
    torch.testing.assert_close(packed_logits, masked_logits, rtol=1e-5, atol=1e-5)
    for name, grad in masked_grads.items():
        torch.testing.assert_close(packed_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)
    # each document as if alone (what the mask stands for), and not as one causal sequence
    alone = model(input_ids=rows[:1, 6:21], use_cache=False).logits.detach()
    torch.testing.assert_close(packed_logits[:1, 6:21], alone, rtol=1e-5, atol=1e-5)
    whole = model(input_ids=rows, use_cache=False).logits.detach()
    assert not torch.allclose(whole[0, 6:21], alone[0], atol=1e-3)


def test_the_model_keeps_its_own_attention_setting():
    model, rows = tiny_llama(), packed_rows()
    with packed_attention(model, rows, document_position_ids(rows, EOS)):
        assert model.config._attn_implementation == NAME
    assert model.config._attn_implementation == "sdpa"
    assert NAME not in model.config.to_json_string()


def test_only_where_it_is_exact():
    rows = packed_rows()
    positions = document_position_ids(rows, EOS)
    assert applies(tiny_llama(), rows, positions)
    assert not applies(tiny_llama(), rows, None)  # one causal sequence: plain sdpa
    eager = tiny_llama()
    eager.config._attn_implementation = "eager"
    assert not applies(eager, rows, positions)
    torch.manual_seed(0)
    windowed = MistralForCausalLM(
        MistralConfig(
            vocab_size=40,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=1,
            num_attention_heads=4,
            num_key_value_heads=2,
            sliding_window=16,
            attn_implementation="sdpa",
        )
    )
    assert not applies(windowed, rows, positions)  # a sliding window needs the mask
    checkpointed = tiny_llama()
    checkpointed.activation_checkpointing_enable()
    assert not applies(checkpointed, rows, positions)  # its backward re-runs the forward outside the context
    wrapped = torch.nn.Module()
    wrapped.module = tiny_llama()  # as DDP holds the model
    assert applies(wrapped, rows, positions)
    torch.manual_seed(0)
    falcon = FalconForCausalLM(
        FalconConfig(
            vocab_size=40, hidden_size=64, num_hidden_layers=1, num_attention_heads=4, attn_implementation="sdpa"
        )
    )
    assert not applies(falcon, rows, positions)  # its attention branches on "sdpa" itself, not AttentionInterface
