"""Vocabulary extension inside the pipeline, end to end on the tiny from-scratch model (tiny.yaml, vocab.add)."""

import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from dapt.artifacts import read_artifact
from dapt.cli import main

pytestmark = pytest.mark.integration
TINY = Path(__file__).parent / "tiny.yaml"
ADDED = 64
EXTEND = ["--set", f"vocab.add={ADDED}"]
ORIGINAL_VOCAB = 258  # the preset's byte-level tokenizer
STAGES = [
    "ingest",
    "task-xml-subpackage",
    "curate",
    "base",
    "tokenize",
    "extend-vocab",
    "tokenize-extended",
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
    out = tmp_path_factory.mktemp("tiny-extended") / "run"
    assert main(["run", str(TINY), "--out", str(out), *EXTEND]) == 0
    return out


def test_the_dapt_base_has_the_larger_vocabulary_and_loads_as_a_plain_hf_folder(run_dir):
    extension = read_artifact(run_dir / "extend-vocab")
    assert extension.metrics["added"] == ADDED and extension.metrics["new_vocab_size"] == ORIGINAL_VOCAB + ADDED
    folder = run_dir / "pretrain" / "model"
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    assert len(tokenizer) == ORIGINAL_VOCAB + ADDED
    assert model.get_input_embeddings().weight.shape[0] == 384  # 322 rounded up to a multiple of 64
    text = pq.read_table(run_dir / "curate" / "documents.parquet").column("text")[0].as_py()
    ids = tokenizer(text[:300])["input_ids"]
    assert max(ids) >= ORIGINAL_VOCAB  # the domain text uses the new tokens
    assert tokenizer.decode(ids) == text[:300]
    assert torch.isfinite(model(input_ids=torch.tensor([ids])).logits).all()
    assert read_artifact(run_dir / "pretrain").manifest["inputs"]["base"]["name"] == "extend-vocab"


def test_the_control_variant_keeps_the_original_base_and_vocabulary(run_dir):
    control = read_artifact(run_dir / "adapt-xml-subpackage-control")
    assert control.manifest["inputs"]["base"]["name"] == "base"
    for variant, size in (("control", ORIGINAL_VOCAB), ("dapt", ORIGINAL_VOCAB + ADDED)):
        folder = run_dir / f"adapt-xml-subpackage-{variant}" / "model"
        assert len(AutoTokenizer.from_pretrained(folder)) == size
    classifier = AutoModelForSequenceClassification.from_pretrained(run_dir / "adapt-xml-subpackage-control" / "model")
    assert classifier.get_input_embeddings().weight.shape[0] == ORIGINAL_VOCAB


def test_both_tokenizations_hold_the_same_documents_and_the_extension_saw_only_training_ones(run_dir):
    original = pq.read_table(run_dir / "tokenize" / "splits.parquet").to_pylist()
    extended = pq.read_table(run_dir / "tokenize-extended" / "splits.parquet").to_pylist()
    assert [(r["id"], r["split"]) for r in original] == [(r["id"], r["split"]) for r in extended]
    # the same documents, fewer tokens
    assert sum(r["tokens"] for r in extended) < 0.9 * sum(r["tokens"] for r in original)
    extension = read_artifact(run_dir / "extend-vocab").metrics
    assert extension["domain_documents"] == sum(r["split"] == "domain_train" for r in original)
    held_out = extension["fertility"]["domain_val"]
    assert held_out["after"]["tokens_per_word"] < held_out["before"]["tokens_per_word"]


def test_evaluate_lm_reports_bits_per_byte_of_both_bases_on_the_same_text(run_dir):
    lm = read_artifact(run_dir / "evaluate-lm").metrics
    assert lm["same_tokenizer"] is False
    assert lm["original"]["vocab_size"] == ORIGINAL_VOCAB and lm["dapt"]["vocab_size"] == ORIGINAL_VOCAB + ADDED
    for side in ("domain", "general"):
        assert lm["test_bytes"][side] > 0
        assert 0 < lm["dapt"][f"{side}_bits_per_byte"] < lm["original"][f"{side}_bits_per_byte"]
        # the same bytes, fewer tokens for the extended tokenizer
        assert lm["dapt"][f"{side}_bpb_tokens"] < lm["original"][f"{side}_bpb_tokens"]
    report = json.loads((run_dir / "report.json").read_text())
    assert report["base"]["domain_bpb_after"] == lm["dapt"]["domain_bits_per_byte"]
    markdown = (run_dir / "report.md").read_text()
    assert "per-token perplexity does not compare" in markdown and "domain bits per byte" in markdown
    assert "Vocabulary extension (`vocab:`): 64 domain tokens added" in markdown


def test_lineage_goes_original_then_extended_then_dapt_base_then_variants(run_dir, capsys):
    capsys.readouterr()
    assert main(["lineage", str(run_dir), "--json"]) == 0
    (root,) = json.loads(capsys.readouterr().out)
    assert root["name"] == "base"
    assert [child["name"] for child in root["children"]] == ["extend-vocab", "adapt-xml-subpackage-control"]
    (extended,) = [child for child in root["children"] if child["name"] == "extend-vocab"]
    assert "64 domain tokens added" in extended["description"]
    (dapt_base,) = extended["children"]
    assert dapt_base["name"] == "pretrain"
    assert [v["name"] for v in dapt_base["children"]] == ["adapt-xml-subpackage-dapt"]


def test_dapt_adapt_on_an_extended_dapt_base_takes_the_control_from_the_original_base(run_dir, tmp_path, capsys):
    source = tmp_path / "run"
    shutil.copytree(run_dir, source)
    examples = [{"text": f"{kind} number {i} of the {kind} family", "label": kind} for i in range(20) for kind in "xy"]
    (tmp_path / "new.jsonl").write_text("\n".join(json.dumps(e) for e in examples) + "\n")
    task_file = tmp_path / "task.yaml"
    task_file.write_text(
        "name: families\ntop_blocks: 1\nepochs: 1\nbatch_size: 8\nmax_length: 16\n"
        "data: {kind: files, train: new.jsonl}\n"
    )
    assert main(["adapt", "--base", str(source / "pretrain"), "--task", str(task_file)]) == 0
    for variant, parent, size in (("control", "base", ORIGINAL_VOCAB), ("dapt", "pretrain", ORIGINAL_VOCAB + ADDED)):
        adapted = read_artifact(source / f"adapt-families-{variant}")
        assert adapted.manifest["inputs"]["base"]["id"] == read_artifact(source / parent).id
        assert len(AutoTokenizer.from_pretrained(source / f"adapt-families-{variant}" / "model")) == size


def test_a_rerun_is_all_cache_hits(run_dir, capsys):
    capsys.readouterr()
    assert main(["run", str(TINY), "--out", str(run_dir), *EXTEND]) == 0
    assert capsys.readouterr().err.count("cached, skipped") == len(STAGES)


def test_another_extension_size_reruns_the_extension_and_what_grows_from_it_only(run_dir, capsys):
    capsys.readouterr()
    assert main(["run", str(TINY), "--out", str(run_dir), "--set", "vocab.add=32"]) == 0
    err = capsys.readouterr().err
    ran = {line.split("]")[1].split(":")[0].strip() for line in err.splitlines() if ": running" in line}
    assert ran == {
        "extend-vocab",
        "tokenize-extended",
        "pretrain",
        "evaluate-lm",
        "adapt-xml-subpackage-dapt",
        "evaluate-xml-subpackage-dapt",
        "cost-bases",
        "gates",
    }
    assert read_artifact(run_dir / "extend-vocab").metrics["new_vocab_size"] == ORIGINAL_VOCAB + 32


def test_a_base_whose_tokenizer_cannot_be_extended_stops_with_the_key_named(tmp_path, capsys):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from dapt.config import BaseConfig, PresetConfig
    from dapt.model.load import load_original_base, save_model_folder

    words = {"<eos>": 0, "<unk>": 1, **{chr(c): 2 + i for i, c in enumerate(range(ord("a"), ord("z") + 1))}}
    core = Tokenizer(models.WordLevel(words, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    word_level = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<eos>", unk_token="<unk>")
    model, _, _ = load_original_base(BaseConfig(preset=PresetConfig()))
    save_model_folder(model, word_level, tmp_path / "word-level")
    overrides = ["--set", "base.preset=null", "--set", f"base.model={tmp_path / 'word-level'}", *EXTEND]
    capsys.readouterr()
    assert main(["extend-vocab", str(TINY), "--out", str(tmp_path / "run"), *overrides]) == 2
    err = capsys.readouterr().err
    assert "vocab (vocabulary extension): the base: its tokenizer is a WordLevel model" in err
    assert "Traceback" not in err
    assert read_artifact(tmp_path / "run" / "extend-vocab") is None  # nothing marked finished
