"""`dapt evaluate --harness`: lm-evaluation-harness on a tiny from-scratch model, with a local task and data."""

import json

import pytest
import torch

from dapt.artifacts import artifact_id, content_hash, read_artifact, write_manifest
from dapt.cli import main
from dapt.config import BaseConfig, PresetConfig, config_from_dict
from dapt.model.load import load_original_base, save_model_folder
from dapt.pipeline import StageSpec, run_stages

pytest.importorskip("lm_eval")
pytestmark = pytest.mark.integration

CONFIG = config_from_dict(
    {"name": "t", "base": {"preset": {}}, "sources": [{"name": "d", "role": "domain", "kind": "pydoc_topics"}]}
)


@pytest.fixture
def local_task(tmp_path, monkeypatch):
    """A two-choice task of 8 questions, read from a JSONL file the test writes."""
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets-cache"))
    folder = tmp_path / "tasks"
    folder.mkdir()
    pairs = [["red", "blue"], ["cat", "dog"], ["sun", "moon"], ["up", "down"]]
    rows = [
        {"question": f"Pick word {i}:", "choices": pairs[i % 4][:: 1 if i < 4 else -1], "answer": i % 2}
        for i in range(8)
    ]
    (folder / "words.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (folder / "dapt_words.yaml").write_text(
        "task: dapt_words\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {folder / 'words.jsonl'}\n"
        "test_split: test\n"
        "output_type: multiple_choice\n"
        'doc_to_text: "{{question}}"\n'
        'doc_to_choice: "{{choices}}"\n'
        "doc_to_target: answer\n"
        "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n"
    )
    return folder


def tiny_model(folder):
    torch.manual_seed(0)
    model, tokenizer, _ = load_original_base(BaseConfig(preset=PresetConfig()))
    save_model_folder(model, tokenizer, folder)


@torch.no_grad()
def expected_accuracy(folder, task_folder):
    """The task's accuracy worked out here: the choice with the higher log-likelihood after "question " wins."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, tokenizer = AutoModelForCausalLM.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder)
    rows = [json.loads(line) for line in (task_folder / "words.jsonl").read_text().splitlines()]
    correct = 0
    for row in rows:
        context = tokenizer(row["question"], add_special_tokens=False)["input_ids"]
        scores = []
        for choice in row["choices"]:
            continuation = tokenizer(" " + choice, add_special_tokens=False)["input_ids"]
            logits = model(input_ids=torch.tensor([context + continuation])).logits[0]
            logps = torch.log_softmax(logits[len(context) - 1 : -1], dim=-1)
            scores.append(float(logps[torch.arange(len(continuation)), torch.tensor(continuation)].sum()))
        correct += int(max(range(len(scores)), key=scores.__getitem__) == row["answer"])
    return correct / len(rows)


def test_harness_scores_a_model_folder_on_a_local_task(tmp_path, local_task, capsys):
    tiny_model(tmp_path / "plain")
    args = ["evaluate", "--harness", "dapt_words", "--model", str(tmp_path / "plain")]
    assert main([*args, "--include-path", str(local_task), "--batch-size", "4"]) == 0
    results = json.loads((tmp_path / "plain" / "lm_eval_results.json").read_text())
    accuracy = results["results"]["dapt_words"]["acc,none"]
    assert results["tasks"] == ["dapt_words"] and results["n_samples"]["dapt_words"]["effective"] == 8
    assert accuracy == pytest.approx(expected_accuracy(tmp_path / "plain", local_task))
    assert f"dapt_words: acc {accuracy:.4f}" in capsys.readouterr().out


def test_harness_results_of_an_artifact_go_to_their_own_artifact(tmp_path, local_task):
    artifact = tmp_path / "run" / "pretrain"
    tiny_model(artifact / "model")
    write_manifest(artifact, kind="pretrain", name="pretrain", id="p0", config={}, inputs={}, metrics={}, timings={})
    before = content_hash(artifact)
    assert (
        main(["evaluate", "--harness", "dapt_words", "--model", str(artifact), "--include-path", str(local_task)]) == 0
    )
    assert content_hash(artifact) == before and not (artifact / "model" / "lm_eval_results.json").exists()
    harness = read_artifact(tmp_path / "run" / "harness-pretrain")
    assert harness.kind == "harness" and harness.manifest["inputs"]["model"]["id"] == "p0"
    assert "acc,none" in harness.metrics["dapt_words"]
    assert json.loads((harness.path / "results.json").read_text())["results"] == harness.metrics
    # one manifest writer: the fields of a pipeline stage's manifest, the id a stage of this config would have
    stage = run_stages([StageSpec("stage", "stage", lambda context: {}, {})], CONFIG, tmp_path / "other")["stage"]
    assert list(harness.manifest) == list(stage.manifest)
    assert list(harness.manifest["timings"]) == list(stage.manifest["timings"])
    assert harness.manifest["inputs"]["model"] == {
        "name": "pretrain",
        "kind": "pretrain",
        "id": "p0",
        "content_hash": before,
    }
    assert harness.id == artifact_id("harness", harness.manifest["config"], {"model": "p0"})


def test_harness_errors_name_the_task_and_the_model(tmp_path, local_task, capsys):
    tiny_model(tmp_path / "plain")
    args = ["evaluate", "--model", str(tmp_path / "plain"), "--include-path", str(local_task)]
    assert main([*args, "--harness", "dapt_no_such_task_xyz"]) == 2
    assert "unknown lm-eval task(s) dapt_no_such_task_xyz" in capsys.readouterr().err
    assert main(["evaluate", "--harness", "dapt_words", "--model", str(tmp_path / "nowhere")]) == 2
    assert "nowhere" in capsys.readouterr().err
    config = tmp_path / "plain" / "config.json"
    config.write_text(config.read_text().replace("LlamaForCausalLM", "LlamaForSequenceClassification"))
    assert main([*args, "--harness", "dapt_words"]) == 2
    assert "a classifier (LlamaForSequenceClassification)" in capsys.readouterr().err
