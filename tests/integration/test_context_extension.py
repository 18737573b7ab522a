"""Context extension end to end on CPU: a from-scratch preset with a 128-token window, extended to 512 with YaRN,
pretrained a few steps at 512 tokens; the report shows passkey retrieval, loss by position and short-context
retention, and the exported DAPT base loads in transformers with the new window."""

import json
from pathlib import Path

import pytest
import yaml
from transformers import AutoModelForCausalLM

from dapt.cli import main

pytestmark = pytest.mark.integration

TINY = Path(__file__).parent / "tiny.yaml"


def test_a_base_extended_from_128_to_512_tokens_with_yarn(tmp_path, capsys):
    config = yaml.safe_load(TINY.read_text())
    config.pop("tasks")
    config["base"]["preset"]["max_position_embeddings"] = 128
    config["pretrain"] |= {"seq_len": 512, "micro_batch_size": 2, "max_steps": 2, "eval_every": 2}
    config["pretrain"]["context"] = {"length": 512, "rope_scaling": "yarn"}
    pipeline = tmp_path / "long.yaml"
    pipeline.write_text(yaml.safe_dump(config))
    run = tmp_path / "run"
    assert main(["run", str(pipeline), "--out", str(run)]) == 0
    assert "context window 128 → 512 tokens (rope yarn, factor 4.0" in capsys.readouterr().err

    exported = json.loads((run / "pretrain" / "model" / "config.json").read_text())
    assert exported["max_position_embeddings"] == 512
    model = AutoModelForCausalLM.from_pretrained(run / "pretrain" / "model")
    assert model.model.rotary_emb.rope_type == "yarn" and model.config.max_position_embeddings == 512
    # the original base keeps its window; the control variants start from it
    assert json.loads((run / "base" / "model" / "config.json").read_text())["max_position_embeddings"] == 128

    window = json.loads((run / "evaluate-lm" / "manifest.json").read_text())["metrics"]["long_context"]
    assert (window["old_window"], window["new_window"]) == (128, 512)
    for base in ("original", "dapt"):
        passkey = window[base]["passkey"]
        assert passkey["lengths"][-1] == 512 and len(passkey["accuracy"]) == len(passkey["lengths"])
        buckets = window[base]["domain_loss_by_position"]["buckets"]
        assert buckets[-1]["to"] == 512 and any(b["tokens"] for b in buckets if b["from"] >= 128)
    assert set(window["short_context_recovered"]) >= {"tolerance", "domain", "general"}
    report = (run / "report.md").read_text()
    assert "### Long context: 128 → 512 tokens" in report and "Short-context retention" in report
    assert "Long context: 128 → 512 tokens" in (run / "report.html").read_text()
