"""Continued pretraining with LoRA (+ trained embeddings), WSD schedule and gradient checkpointing."""

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from dapt.cli import main

pytestmark = pytest.mark.integration
TINY = Path(__file__).parent / "tiny.yaml"


def test_lora_pretraining_exports_a_merged_model_and_the_adapters(tmp_path):
    options = {
        "pretrain.method": "lora",
        "pretrain.lora.r": 8,
        "pretrain.lora.train_embeddings": "true",
        "pretrain.embedding_lr_ratio": 0.2,
        "pretrain.schedule": "wsd",
        "pretrain.gradient_checkpointing": "true",
        "pretrain.lr": 1.0e-2,
    }
    overrides = [arg for key, value in options.items() for arg in ("--set", f"{key}={value}")]
    assert main(["pretrain", str(TINY), "--out", str(tmp_path), *overrides]) == 0
    manifest = json.loads((tmp_path / "pretrain" / "manifest.json").read_text())
    metrics = manifest["metrics"]
    assert metrics["method"] == "lora"
    assert 0 < metrics["trainable_parameters"] < metrics["parameters"]
    assert metrics["flops_per_token"] > 6 * 0.9 * metrics["parameters"]
    assert metrics["peak_memory"]["bytes"] > 0
    assert metrics["best_step"] > 0, "a from-scratch model learns the domain within a few steps"
    assert (tmp_path / "pretrain" / "adapter" / "adapter_model.safetensors").is_file()
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "pretrain" / "model")
    original = AutoModelForCausalLM.from_pretrained(tmp_path / "base" / "model")
    tokens = torch.tensor([[60, 61, 62, 63]])
    with torch.no_grad():
        assert not torch.allclose(merged(input_ids=tokens).logits, original(input_ids=tokens).logits)
    lrs = [
        json.loads(line)["lr"]
        for line in (tmp_path / "pretrain" / "metrics.jsonl").read_text().splitlines()
        if "lr" in json.loads(line)
    ]
    assert lrs[2] == lrs[4] == pytest.approx(1.0e-2), "WSD holds the peak lr in its stable phase"
    assert lrs[-1] < lrs[4]
