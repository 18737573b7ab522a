"""The loss a chunk of positions at a time: the same loss and gradients, without a window's full logits."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import Gemma2Config, Gemma2ForCausalLM, LlamaConfig, LlamaForCausalLM

from dapt.errors import ConfigError
from dapt.train.objectives import causal_lm_loss, lm_batch, mean_lm_loss

VOCAB = 512


def tiny_llama(tied: bool = True) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=tied,
        attn_implementation="sdpa",
    )
    return LlamaForCausalLM(config)


class LargestTensor(TorchDispatchMode):
    """Records the largest tensor any operation produced while active (forward and backward)."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in out if isinstance(out, tuple | list) else (out,):
            if isinstance(tensor, torch.Tensor):
                self.largest = max(self.largest, tensor.numel())
        return out


def windows(rows: int = 2, length: int = 65) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    tokens = torch.randint(1, VOCAB, (rows, length), generator=generator)
    tokens[:, 20] = 0  # an end-of-text inside each window: two documents kept apart
    return tokens


def loss_and_grads(model: torch.nn.Module, batch: dict, max_logits_bytes: int):
    model.zero_grad()
    loss, count = causal_lm_loss(model, batch, max_logits_bytes=max_logits_bytes)
    loss.backward()
    return loss.detach(), count, {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("tied", [True, False])
def test_chunked_loss_and_gradients_equal_the_whole_windows(tied: bool) -> None:
    model = tiny_llama(tied)
    batch = lm_batch(windows(), eos_id=0)
    whole_loss, whole_count, whole_grads = loss_and_grads(model, batch, max_logits_bytes=0)
    # 24 positions' logits per chunk: 128 positions in 6 chunks, the last one shorter
    chunked_loss, chunked_count, chunked_grads = loss_and_grads(model, batch, max_logits_bytes=24 * VOCAB * 4)
    assert chunked_count == whole_count == 128
    torch.testing.assert_close(chunked_loss, whole_loss, rtol=1e-6, atol=1e-6)
    for name, grad in whole_grads.items():
        torch.testing.assert_close(chunked_grads[name], grad, rtol=1e-5, atol=1e-6, msg=name)


def test_the_full_logits_are_never_materialised() -> None:
    model = tiny_llama()
    batch = lm_batch(windows(rows=1, length=257), eos_id=0)  # 256 positions × 512 = 131,072 logits
    whole = LargestTensor()
    with whole:
        causal_lm_loss(model, batch, max_logits_bytes=0)[0].backward()
    chunked = LargestTensor()
    with chunked:
        causal_lm_loss(model, batch, max_logits_bytes=32 * VOCAB * 4)[0].backward()
    assert whole.largest >= 256 * VOCAB
    assert chunked.largest <= 32 * VOCAB  # one chunk's logits at most, forward and backward
    model.zero_grad()


def test_evaluation_loss_is_the_same_chunked() -> None:
    model = tiny_llama()
    held_out = list(windows(rows=3))
    whole = mean_lm_loss(model, held_out, batch_size=2, eos_id=0)
    # mean_lm_loss chunks on its own above the module's budget; force it by a tiny one through the training loss
    with torch.no_grad():
        chunked, count = causal_lm_loss(model, lm_batch(torch.stack(held_out), 0), max_logits_bytes=10 * VOCAB * 4)
    assert count == 3 * 64
    assert abs(float(chunked) - whole) < 1e-5


def test_a_model_that_soft_caps_its_logits_is_refused_with_the_setting_named() -> None:
    config = Gemma2Config(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        final_logit_softcapping=30.0,
    )
    model = Gemma2ForCausalLM(config)
    with pytest.raises(ConfigError, match=r"pretrain.max_logits_mb.*final_logit_softcapping"):
        causal_lm_loss(model, lm_batch(windows(rows=1), eos_id=None), max_logits_bytes=8 * VOCAB * 4)
    # whole logits: still trains
    loss, _ = causal_lm_loss(model, lm_batch(windows(rows=1), eos_id=None), max_logits_bytes=0)
    assert torch.isfinite(loss)
    # evaluation (no backward) falls back to the whole logits instead of refusing
    with torch.no_grad():
        held_out, _ = causal_lm_loss(model, lm_batch(windows(rows=1), eos_id=None), max_logits_bytes=8 * VOCAB * 4)
    assert abs(float(held_out) - float(loss.detach())) < 1e-5
