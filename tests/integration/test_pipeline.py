"""The whole pretrain-then-adapt pipeline, end to end, on a tiny from-scratch model and real stdlib text."""

import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from dapt.artifacts import read_artifact
from dapt.cli import main

pytestmark = pytest.mark.integration
TINY = Path(__file__).parent / "tiny.yaml"
STAGES = [
    "ingest",
    "base",
    "task-xml-subpackage",
    "curate",
    "tokenize",
    "pretrain",
    "evaluate-lm",
    "adapt-xml-subpackage-control",
    "evaluate-xml-subpackage-control",
    "adapt-xml-subpackage-dapt",
    "evaluate-xml-subpackage-dapt",
    "cost-bases",
    "gates",
]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """The tiny pipeline, run once for the module: tests only read it (a test that runs anything uses `own_run`)."""
    out = tmp_path_factory.mktemp("tiny") / "run"
    assert main(["run", str(TINY), "--out", str(out)]) == 0
    return out


@pytest.fixture
def own_run(run_dir, tmp_path):
    """A copy of the finished run for one test to run stages in, so no test sees another's changes."""
    run = tmp_path / "run"
    shutil.copytree(run_dir, run, symlinks=True)  # the stages' names stay links into the copy's .artifacts/
    return run


def test_every_stage_is_a_finished_artifact(run_dir):
    for stage in STAGES:
        assert read_artifact(run_dir / stage) is not None, f"{stage} has no manifest"


def test_report_holds_the_headline_numbers(run_dir, capsys):
    report = json.loads((run_dir / "report.json").read_text())
    for key in ("domain_ppl_before", "domain_ppl_after", "general_ppl_before", "general_ppl_after"):
        assert report["base"][key] > 1.0
    # a from-scratch model learns the domain fast: continued pretraining must lower domain perplexity
    assert report["base"]["domain_ppl_after"] < report["base"]["domain_ppl_before"]
    (task,) = report["tasks"]
    assert task["name"] == "xml-subpackage"
    for variant in ("control", "dapt"):
        assert 0.0 <= task[variant]["accuracy"] <= 1.0 and 0.0 <= task[variant]["macro_f1"] <= 1.0
        # per class and the confusion matrix, as the evaluation artifact holds them
        evaluation = read_artifact(run_dir / f"evaluate-xml-subpackage-{variant}").metrics
        assert task["per_class"][variant] == evaluation["per_class"] and set(evaluation["per_class"]) == set(
            task["labels"]
        )
        matrix = task["confusion_matrix"][variant]
        assert sum(map(sum, matrix)) == task["test_examples"]
        assert sum(matrix[i][i] for i in range(len(matrix))) / task["test_examples"] == pytest.approx(
            task[variant]["accuracy"]
        )
    assert "Confusion matrix, dapt" in (run_dir / "report.md").read_text()
    funnel = report["data"]["funnel"]
    assert funnel["documents_in"] == funnel["kept"] + sum(funnel["dropped_by_reason"].values())
    assert "## Did domain-adaptive pretraining pay off?" in (run_dir / "report.md").read_text()


def test_no_task_test_text_reaches_pretraining(run_dir):
    kept = " ".join(pq.read_table(run_dir / "curate" / "documents.parquet").column("text").to_pylist())
    test_texts = pq.read_table(run_dir / "task-xml-subpackage" / "test.parquet").column("text").to_pylist()
    assert not [t for t in test_texts if t[:200] in kept]
    curate = read_artifact(run_dir / "curate").metrics
    assert curate["decontaminated_by_task"]["xml-subpackage"] > 0  # the docstrings overlap: some were removed
    # the curation blocks of the config ran (toxicity is off by default)
    assert {"language", "gopher_quality", "gopher_repetition", "c4"} <= curate["blocks"].keys()
    assert "toxicity" not in curate["blocks"]
    ledger = pq.read_table(run_dir / "curate" / "rejection_ledger.parquet")
    ingest = read_artifact(run_dir / "ingest").metrics
    assert ledger.num_rows + curate["docs_kept"] == curate["records_read"] == ingest["documents"] + ingest["rejected"]


def test_pretraining_measured_before_and_during_and_saved_checkpoints(run_dir):
    records = [json.loads(line) for line in (run_dir / "pretrain" / "metrics.jsonl").read_text().splitlines()]
    evaluations = [r for r in records if "eval" in r]
    assert evaluations[0]["step"] == 0 and {"domain_val_loss", "general_val_loss"} <= set(evaluations[0]["eval"])
    assert len(evaluations) >= 2
    assert list((run_dir / "pretrain" / "checkpoints").glob("step-*/model.safetensors"))
    pretrain = read_artifact(run_dir / "pretrain")
    assert pretrain.manifest["inputs"]["base"]["id"] == read_artifact(run_dir / "base").id  # lineage


def test_variants_and_bases_load_as_plain_hugging_face_folders(run_dir):
    base = AutoModelForCausalLM.from_pretrained(run_dir / "pretrain" / "model")
    assert base.config.model_type == "llama"
    classifier = AutoModelForSequenceClassification.from_pretrained(run_dir / "adapt-xml-subpackage-dapt" / "model")
    assert sorted(classifier.config.id2label.values()) == ["dom", "etree", "sax"]
    logits = classifier(input_ids=torch.tensor([[10, 20, 30]])).logits
    assert logits.shape == (1, 3)


def test_rerun_skips_every_stage_and_a_deleted_artifact_is_rebuilt_alone(own_run, capsys):
    capsys.readouterr()
    assert main(["run", str(TINY), "--out", str(own_run)]) == 0
    assert capsys.readouterr().err.count("cached, skipped") == len(STAGES)

    (own_run / "curate").unlink()  # the stage's name (`rm -r runs/tiny/curate`): built again; the earlier is kept
    assert main(["run", str(TINY), "--out", str(own_run)]) == 0
    err = capsys.readouterr().err
    assert "curate: running" in err
    # curate is deterministic: rebuilt with the same content, so nothing downstream needs to run again
    assert err.count("cached, skipped") == len(STAGES) - 1


def test_how_pretraining_runs_is_not_part_of_its_cache_key(own_run, capsys):
    capsys.readouterr()
    how = ["--set", "pretrain.sharding=fsdp", "--set", "pretrain.compile=true"]
    assert main(["run", str(TINY), "--out", str(own_run), *how]) == 0
    assert capsys.readouterr().err.count("cached, skipped") == len(STAGES)


def test_one_stage_runs_alone_with_its_inputs_from_cache(own_run, capsys):
    capsys.readouterr()
    assert main(["tokenize", str(TINY), "--out", str(own_run)]) == 0
    err = capsys.readouterr().err
    assert "5 stages" in err and err.count("cached, skipped") == 5  # ingest, base, task, curate, tokenize


def test_changed_setting_reruns_that_stage_and_downstream_only(own_run, capsys):
    capsys.readouterr()
    assert main(["run", str(TINY), "--out", str(own_run), "--set", "tasks.0.epochs=1"]) == 0
    err = capsys.readouterr().err
    ran = {line.split("]")[1].split(":")[0].strip() for line in err.splitlines() if ": running" in line}
    assert ran == {
        "adapt-xml-subpackage-control",
        "evaluate-xml-subpackage-control",
        "adapt-xml-subpackage-dapt",
        "evaluate-xml-subpackage-dapt",
    }


def test_lineage_tree_from_the_manifests(run_dir, capsys):
    capsys.readouterr()
    assert main(["lineage", str(run_dir), "--json"]) == 0
    (root,) = json.loads(capsys.readouterr().out)
    assert root["name"] == "base" and root["kind"] == "base"
    children = {child["name"]: child for child in root["children"]}
    assert set(children) == {"pretrain", "adapt-xml-subpackage-control"}
    assert [v["name"] for v in children["pretrain"]["children"]] == ["adapt-xml-subpackage-dapt"]
    assert "accuracy" in children["adapt-xml-subpackage-control"]["description"]
    assert main(["lineage", str(run_dir)]) == 0
    tree = capsys.readouterr().out
    assert "└── adapt-xml-subpackage-dapt" in tree and "DAPT base" in tree and "tokens" in tree


def test_a_changed_config_keeps_the_earlier_base_and_its_variants_loadable_until_gc(own_run, capsys):
    earlier = {name: read_artifact(own_run / name) for name in ("pretrain", "adapt-xml-subpackage-dapt")}
    changed = ["--set", "pretrain.lr=2.0e-3"]
    assert main(["pretrain", str(TINY), "--out", str(own_run), *changed]) == 0
    assert read_artifact(own_run / "pretrain").id != earlier["pretrain"].id
    earlier_base = own_run / ".artifacts" / f"pretrain-{earlier['pretrain'].id}"
    assert AutoModelForCausalLM.from_pretrained(earlier_base / "model").config.model_type == "llama"
    # `dapt pretrain` stops there: the current variant is still the one built on the earlier base
    variant = own_run / "adapt-xml-subpackage-dapt"
    assert read_artifact(variant).manifest["inputs"]["base"]["id"] == earlier["pretrain"].id
    AutoModelForSequenceClassification.from_pretrained(variant / "model")
    capsys.readouterr()
    assert main(["lineage", str(own_run), "--json"]) == 0
    (root,) = json.loads(capsys.readouterr().out)
    bases = {child["id"]: child for child in root["children"] if child["name"] == "pretrain"}
    assert len(bases) == 2 and not bases[earlier["pretrain"].id]["current"]
    assert [v["name"] for v in bases[earlier["pretrain"].id]["children"]] == ["adapt-xml-subpackage-dapt"]
    assert main(["gc", str(own_run), "--dry-run"]) == 0
    assert "0 artifact(s)" in capsys.readouterr().out, "the earlier base is the input of a current variant"

    # the whole pipeline builds the variant on the new base; the earlier one stays loadable, until gc
    assert main(["run", str(TINY), "--out", str(own_run), *changed]) == 0
    earlier_variant = own_run / ".artifacts" / f"adapt-xml-subpackage-dapt-{earlier['adapt-xml-subpackage-dapt'].id}"
    assert read_artifact(variant).id != earlier["adapt-xml-subpackage-dapt"].id
    AutoModelForSequenceClassification.from_pretrained(earlier_variant / "model")
    capsys.readouterr()
    assert main(["gc", str(own_run)]) == 0
    freed = capsys.readouterr().out
    assert str(earlier_base) in freed and str(earlier_variant) in freed
    assert not earlier_base.exists() and not earlier_variant.exists()
    assert all(read_artifact(own_run / stage) is not None for stage in STAGES)


def test_lineage_of_a_missing_folder_is_a_clear_error(tmp_path, capsys):
    assert main(["lineage", str(tmp_path / "nope")]) == 2
    assert "nope" in capsys.readouterr().err


def test_seeds_and_data_fractions_give_means_and_a_data_efficiency_curve(own_run, capsys):
    capsys.readouterr()
    overrides = ["--set", "tasks.0.seeds=[0, 1]", "--set", "tasks.0.data_fractions=[0.5, 1.0]"]
    assert main(["run", str(TINY), "--out", str(own_run), *overrides]) == 0
    err = capsys.readouterr().err
    assert "adapt-xml-subpackage-dapt-s1-f0.5: running" in err
    assert "adapt-xml-subpackage-dapt:" in err and "cached" in err  # the main run is reused as it is
    (task,) = json.loads((own_run / "report.json").read_text())["tasks"]
    assert task["seeds"] == [0, 1] and task["control"]["runs"] == task["dapt"]["runs"] == 2
    seed_accuracies = [
        read_artifact(own_run / f"evaluate-xml-subpackage-dapt{suffix}").metrics["accuracy"] for suffix in ("", "-s1")
    ]
    assert task["dapt"]["accuracy"] == pytest.approx(sum(seed_accuracies) / 2)
    assert [point["fraction"] for point in task["data_efficiency"]] == [0.5, 1.0]
    half = read_artifact(own_run / "adapt-xml-subpackage-control-f0.5").metrics
    assert half["data_fraction"] == 0.5 and half["train_examples"] < task["train_examples"]
    assert "Data efficiency" in (own_run / "report.md").read_text()


def test_task_adaptive_pretraining_runs_before_both_variants(tmp_path, capsys):
    tapt_settings = ["--set", "tasks.0.tapt_steps=3", "--set", "tasks.0.tapt_micro_batch_size=2"]
    assert main(["run", str(TINY), "--out", str(tmp_path), *tapt_settings]) == 0
    for variant, parent in (("control", "base"), ("dapt", "pretrain")):
        tapt = read_artifact(tmp_path / f"tapt-xml-subpackage-{variant}")
        assert tapt.manifest["inputs"]["base"]["name"] == parent and tapt.metrics["steps"] == 3
        assert tapt.metrics["tokens_trained"] == 3 * 2 * 128  # steps × tapt_micro_batch_size × tapt_seq_len
        adapted = read_artifact(tmp_path / f"adapt-xml-subpackage-{variant}")
        assert adapted.manifest["inputs"]["base"]["name"] == f"tapt-xml-subpackage-{variant}"
    capsys.readouterr()
    assert main(["lineage", str(tmp_path)]) == 0
    assert "task-adaptive pretraining" in capsys.readouterr().out


def test_records_skipped_at_ingest_are_counted_in_the_report(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    lines = [
        json.dumps({"text": f"Document number {i} " + "with enough words to pass the filters " * 8}) for i in range(3)
    ]
    (data / "extra.jsonl").write_text("\n".join([lines[0], "{not json", lines[1], lines[2]]) + "\n")
    source = f"sources.3={{name: extra, role: domain, kind: files, paths: ['{data / 'extra.jsonl'}']}}"
    assert main(["run", str(TINY), "--out", str(tmp_path / "run"), "--set", source]) == 0
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["data"]["funnel"]["ingest_rejected_by_reason"] == {"malformed_json": 1}
    assert "ingest skipped 1 (malformed_json)" in (tmp_path / "run" / "report.md").read_text()
    # the curate stage's ledger accounts for that record too, as `dapt curate`'s does
    ledger = pq.read_table(tmp_path / "run" / "curate" / "rejection_ledger.parquet").to_pylist()
    assert [(row["source"], row["reason"], row["line"]) for row in ledger if row["block"] == "ingest"] == [
        ("extra", "malformed_json", 2)
    ]


def test_a_from_scratch_base_can_train_its_tokenizer_on_the_curated_corpus(run_dir, tmp_path):
    assert main(["run", str(TINY), "--out", str(tmp_path), "--set", "base.preset.tokenizer_vocab_size=400"]) == 0
    base = read_artifact(tmp_path / "base")
    assert base.manifest["inputs"]["corpus"]["name"] == "curate"
    assert 258 < base.metrics["vocab_size"] <= 400 and "trained on the corpus" in base.metrics["origin"]
    byte_tokens = read_artifact(run_dir / "tokenize").metrics["total_tokens"]  # same corpus, byte-level tokenizer
    assert read_artifact(tmp_path / "tokenize").metrics["total_tokens"] < 0.8 * byte_tokens
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["base"]["domain_ppl_after"] < report["base"]["domain_ppl_before"]


def test_resuming_from_a_damaged_checkpoint_is_a_user_error_naming_the_file(own_run, capsys):
    (own_run / "pretrain" / "manifest.json").unlink()  # as if killed before the end
    newest = max((own_run / "pretrain" / "checkpoints").glob("step-*/training_state.pt")).parent
    weights = newest / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1000])  # a copy cut short
    capsys.readouterr()
    assert main(["pretrain", str(TINY), "--out", str(own_run)]) == 2
    err = capsys.readouterr().err
    assert f"{weights}: cannot load this checkpoint file" in err and "Traceback" not in err
    assert f"Delete {own_run / 'pretrain' / 'checkpoints'} to start this stage over" in err


def test_a_finished_base_that_was_modified_is_refused_on_reuse(tmp_path, capsys):
    assert main(["run", str(TINY), "--out", str(tmp_path)]) == 0
    config = tmp_path / "base" / "model" / "config.json"
    config.write_text(config.read_text().replace('"hidden_act"', '"hidden_act" ', 1))  # one byte more
    capsys.readouterr()
    assert main(["run", str(TINY), "--out", str(tmp_path), "--set", "tasks.0.epochs=1"]) == 2
    err = capsys.readouterr().err
    assert "finished artifact 'base' changed" in err and "Traceback" not in err


def test_adapt_branches_a_finished_base_into_a_new_task_without_touching_it(own_run, tmp_path, capsys):
    source = own_run
    before = {name: read_artifact(source / name).content_hash for name in ("base", "pretrain")}
    files_before = sorted(p.name for p in (source / "pretrain").rglob("*"))
    examples = [
        {"text": f"{kind} number {i} of the {kind} family", "label": kind} for i in range(20) for kind in ("ab", "cd")
    ]
    (tmp_path / "new.jsonl").write_text("\n".join(json.dumps(e) for e in examples) + "\n")
    task_file = tmp_path / "task.yaml"
    task_file.write_text(
        "name: families\nrecipe: lora\nlora: {r: 4, alpha: 8}\nepochs: 1\nbatch_size: 8\nlr: 1.0e-3\n"
        "max_length: 16\ndata: {kind: files, train: new.jsonl}\n"
    )
    capsys.readouterr()
    assert main(["adapt", "--base", str(source / "pretrain"), "--task", str(task_file)]) == 0
    err = capsys.readouterr().err
    assert "adapt-families-dapt: running" in err and "pretrain: running" not in err
    # the base is only read: same files, same hash
    assert sorted(p.name for p in (source / "pretrain").rglob("*")) == files_before
    assert {name: read_artifact(source / name).content_hash for name in ("base", "pretrain")} == before
    for variant, parent in (("control", "base"), ("dapt", "pretrain")):
        adapted = read_artifact(source / f"adapt-families-{variant}")
        assert adapted.manifest["inputs"]["base"]["id"] == read_artifact(source / parent).id
        assert adapted.metrics["recipe"] == "lora" and (source / f"adapt-families-{variant}" / "adapter").is_dir()
        assert read_artifact(source / f"evaluate-families-{variant}").metrics["examples"] > 0
    # the lineage and the report of the run folder show the new task next to the pipeline's own
    assert main(["lineage", str(source), "--json"]) == 0
    (root,) = json.loads(capsys.readouterr().out)
    children = {child["name"]: child for child in root["children"]}
    assert "adapt-families-control" in children
    assert {"adapt-xml-subpackage-dapt", "adapt-families-dapt"} <= {v["name"] for v in children["pretrain"]["children"]}
    assert main(["report", str(source)]) == 0
    tasks = {t["name"]: t for t in json.loads((source / "report.json").read_text())["tasks"]}
    assert set(tasks) == {"xml-subpackage", "families"} and tasks["families"]["adapted_from"].endswith("pretrain")
    assert "branched later with `dapt adapt`" in (source / "report.md").read_text()
    assert "families" in (source / "report.html").read_text()

    # into a new folder: the bases stay where they are; lineage and report of that folder reach them
    other = tmp_path / "other"
    assert main(["adapt", "--base", str(source), "--task", str(task_file), "--out", str(other)]) == 0
    assert not (other / "pretrain").exists() and read_artifact(other / "adapt-families-dapt") is not None
    capsys.readouterr()
    assert main(["lineage", str(other), "--json"]) == 0
    (root,) = json.loads(capsys.readouterr().out)
    assert root["name"] == "base" and [c["name"] for c in root["children"]] == ["pretrain", "adapt-families-control"]
    assert [c["name"] for c in root["children"][0]["children"]] == ["adapt-families-dapt"]
    assert main(["report", str(other)]) == 0
    assert [t["name"] for t in json.loads((other / "report.json").read_text())["tasks"]] == [
        "xml-subpackage",
        "families",
    ]

    # a base rebuilt since the branch (here: its recorded id no longer matches): the task is left out, and said so
    record = json.loads((source / "adapted.json").read_text())
    record["adapted"][0]["dapt_base"]["id"] = "0" * 16
    (source / "adapted.json").write_text(json.dumps(record))
    assert main(["report", str(source)]) == 0
    report = json.loads((source / "report.json").read_text())
    assert [t["name"] for t in report["tasks"]] == ["xml-subpackage"] and report["stale_adapted_tasks"] == ["families"]
    assert "Left out: families" in (source / "report.md").read_text()

    # a modified base is refused before anything is built on it
    config = source / "pretrain" / "model" / "config.json"
    config.write_text(config.read_text().replace('"hidden_act"', '"hidden_act" ', 1))
    task_file.write_text(task_file.read_text().replace("epochs: 1", "epochs: 2"))
    capsys.readouterr()
    assert main(["adapt", "--base", str(source / "pretrain"), "--task", str(task_file)]) == 2
    assert "finished artifact 'pretrain' changed" in capsys.readouterr().err
    # an original base is not an adapted base
    assert main(["adapt", "--base", str(source / "base"), "--task", str(task_file)]) == 2
    assert "give an adapted base" in capsys.readouterr().err
