"""Continued pretraining with LoRA (+ trained embeddings), WSD schedule and gradient checkpointing."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
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


def test_the_guard_checks_every_evaluation_and_the_averaged_checkpoints_are_evaluated(tmp_path):
    options = {
        "pretrain.forgetting_budget": 0.02,
        "pretrain.on_forgetting": "remix",
        "pretrain.average_last": 2,
        "pretrain.early_stopping.patience": 10,
    }
    overrides = [arg for key, value in options.items() for arg in ("--set", f"{key}={value}")]
    assert main(["pretrain", str(TINY), "--out", str(tmp_path), *overrides]) == 0
    metrics = json.loads((tmp_path / "pretrain" / "manifest.json").read_text())["metrics"]
    evaluations = metrics["evaluations"]
    for evaluation in evaluations:  # every loss with its documents and its standard error over them
        assert evaluation["domain_val_documents"] >= 2 and evaluation["domain_val_loss_se"] > 0
    guard = metrics["forgetting"]
    assert guard["budget"] == 0.02 and [c["step"] for c in guard["checks"]] == [e["step"] for e in evaluations]
    assert all(c["base_general_val_loss"] == evaluations[0]["general_val_loss"] for c in guard["checks"])
    assert guard["actions"] == [], "a from-scratch model learns general text too: no forgetting"
    average = metrics["average"]
    assert average["steps"] == [4, 8] and average["forgetting"]["over_budget"] is False
    exported = load_file(tmp_path / "pretrain" / "model" / "model.safetensors")
    chosen = "checkpoints/average" if average["exported"] else f"checkpoints/step-{metrics['best_step']:06d}"
    expected = load_file(tmp_path / "pretrain" / chosen / "model.safetensors")
    assert all(torch.equal(exported[name], expected[name]) for name in expected)
    steps = [load_file(tmp_path / "pretrain" / f"checkpoints/step-{s:06d}" / "model.safetensors") for s in (4, 8)]
    averaged = load_file(tmp_path / "pretrain" / "checkpoints" / "average" / "model.safetensors")
    name = next(iter(averaged))
    assert torch.allclose(averaged[name], (steps[0][name] + steps[1][name]) / 2, atol=1e-6)


def test_remix_without_replay_text_is_a_config_error(tmp_path, capsys):
    overrides = ["--set", "pretrain.forgetting_budget=0.02", "--set", "pretrain.on_forgetting=remix"]
    overrides += ["--set", "pretrain.replay_fraction=0"]
    assert main(["pretrain", str(TINY), "--out", str(tmp_path), *overrides]) == 2
    assert "pretrain.on_forgetting: remix raises the replay share" in capsys.readouterr().err
