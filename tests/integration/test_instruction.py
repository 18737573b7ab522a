"""An instruction (SFT) task end to end: LoRA on the tiny model, response-only loss, generated answers scored."""

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from transformers import AutoModelForCausalLM

from dapt.cli import main

pytestmark = pytest.mark.integration
TINY = Path(__file__).parent / "tiny.yaml"
SFT_TASK = (
    "tasks.0={name: xml-qa, type: instruction, recipe: lora, lora: {r: 4, alpha: 8}, max_length: 96, "
    "max_new_tokens: 12, epochs: 1, batch_size: 8, lr: 3.0e-3, test_fraction: 0.2, "
    "data: {kind: python_docstrings, package: xml, min_chars: 100, max_examples: 60}}"
)


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("sft")
    assert main(["run", str(TINY), "--out", str(out), "--set", SFT_TASK]) == 0
    return out


def test_instruction_task_trains_on_responses_and_reports_text_metrics(sft_run):
    tmp_path = sft_run
    (task,) = json.loads((tmp_path / "report.json").read_text())["tasks"]
    assert task["type"] == "instruction" and task["primary"] == "rouge_l" and task["secondary"] == "token_f1"
    for variant in ("control", "dapt"):
        assert 0.0 <= task[variant]["rouge_l"] <= 1.0
    predictions = pq.read_table(tmp_path / "evaluate-xml-qa-dapt" / "predictions.parquet").to_pylist()
    columns = {"prompt", "reference", "generated", "rouge_l", "token_f1", "exact_match"}
    assert predictions and columns <= set(predictions[0])
    adapted = json.loads((tmp_path / "adapt-xml-qa-dapt" / "manifest.json").read_text())["metrics"]
    assert adapted["template"] == "built-in" and adapted["recipe"] == "lora"
    assert (tmp_path / "adapt-xml-qa-dapt" / "adapter" / "adapter_model.safetensors").is_file()
    AutoModelForCausalLM.from_pretrained(tmp_path / "adapt-xml-qa-dapt" / "model")  # a plain HF folder
    assert "ROUGE-L" in (tmp_path / "report.md").read_text()
    # the test pairs were kept out of pretraining
    assert json.loads((tmp_path / "curate" / "manifest.json").read_text())["metrics"]["decontaminated_by_task"]


def test_without_a_judge_the_report_says_so_and_with_one_each_answer_is_rated(sft_run, capsys):
    from conftest import FakeJudge, overlap_rating  # tests/conftest.py

    (task,) = json.loads((sft_run / "report.json").read_text())["tasks"]
    assert task["judge"] is None and "No LLM judge was used" in (sft_run / "report.md").read_text()
    with FakeJudge(overlap_rating) as server:
        judge = f"tasks.0.judge={{url: '{server.url}', model: tiny-judge}}"
        capsys.readouterr()
        assert main(["run", str(TINY), "--out", str(sft_run), "--set", SFT_TASK, "--set", judge]) == 0
    err = capsys.readouterr().err
    assert "adapt-xml-qa-dapt: cached" in err and "evaluate-xml-qa-dapt: running" in err  # only evaluation re-runs
    predictions = pq.read_table(sft_run / "evaluate-xml-qa-dapt" / "predictions.parquet").to_pylist()
    assert len(server.requests) == 2 * len(predictions)  # every answer of both variants, once
    expected = [5 if p["generated"] == p["reference"] else 2 for p in predictions]
    assert [p["judge_rating"] for p in predictions] == expected
    (task,) = json.loads((sft_run / "report.json").read_text())["tasks"]
    assert task["judge"]["model"] == "tiny-judge"
    assert task["judge"]["dapt"] == pytest.approx(sum((r - 1) / 4 for r in expected) / len(expected))
    assert "LLM judge `tiny-judge`" in (sft_run / "report.md").read_text()


def test_generate_answers_from_a_variant_and_names_a_missing_model(sft_run, tmp_path, capsys):
    capsys.readouterr()
    variant = sft_run / "adapt-xml-qa-dapt"
    assert main(["generate", "--model", str(variant), "What does xml do?", "--max-new-tokens", "5"]) == 0
    answer = capsys.readouterr().out
    assert answer.endswith("\n") and len(answer.strip()) <= 5 * 16  # at most 5 tokens of at most a few bytes
    assert main(["generate", "--model", str(tmp_path / "nowhere"), "hi"]) == 2
    assert "nowhere" in capsys.readouterr().err


def test_dpo_after_sft_starts_from_the_sft_variant_and_reports_preference_metrics(tmp_path):
    dpo_task = (
        "tasks.1={name: xml-prefs, type: preference, start_from: xml-qa, recipe: lora, lora: {r: 4, alpha: 8}, "
        "beta: 0.1, max_length: 96, epochs: 1, batch_size: 8, lr: 3.0e-3, test_fraction: 0.2, "
        "data: {kind: python_docstrings, package: xml, min_chars: 100, max_examples: 60}}"
    )
    overrides = ["--set", "tasks=[{}, {}]", "--set", SFT_TASK, "--set", dpo_task]
    assert main(["run", str(TINY), "--out", str(tmp_path), *overrides]) == 0
    manifest = json.loads((tmp_path / "adapt-xml-prefs-dapt" / "manifest.json").read_text())
    assert manifest["inputs"]["base"]["name"] == "adapt-xml-qa-dapt"  # DPO started from the SFT variant
    tasks = {t["name"]: t for t in json.loads((tmp_path / "report.json").read_text())["tasks"]}
    prefs = tasks["xml-prefs"]
    assert prefs["primary"] == "preference_accuracy"
    for variant in ("control", "dapt"):
        assert 0.0 <= prefs[variant]["preference_accuracy"] <= 1.0
    assert "mean reward margin" in (tmp_path / "report.md").read_text()
