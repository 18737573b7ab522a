"""`dapt curate PATH... --out DIR`: ingest and curate without a pipeline, accounting for every record read."""

from __future__ import annotations

import io
import json
import random
import tempfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dapt.artifacts import content_hash, read_artifact
from dapt.cli import main
from dapt.config import CurateConfig, config_from_dict
from dapt.curate_command import SOURCE_NAME, curate_files
from dapt.pipeline import run_pipeline

WORDS = "contract clause party lease tenant court ruling damages notice breach remedy term".split()


def prose(seed: int, n_words: int = 60) -> str:
    rng = random.Random(seed)
    # "The" first: English has stop words, which the Gopher quality rule looks for.
    return "The " + " ".join(rng.choice(WORDS) for _ in range(n_words)) + "."


@pytest.fixture
def corpus(tmp_path: Path, monkeypatch) -> Path:
    """A folder of the user's files, good and bad, and the working folder set to it."""
    monkeypatch.chdir(tmp_path)
    lines = [json.dumps({"text": prose(seed)}) for seed in range(6)]
    lines += [json.dumps({"text": prose(0)}), json.dumps({"text": "too short"}), '{"text": "broken', '{"body": 1}']
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "docs.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (tmp_path / "data" / "page.html").write_text(
        f"<html><body><nav><a href='/'>Home</a></nav><article><p>{prose(10)}</p></article>"
        "<footer>Copyright notice</footer></body></html>",
        encoding="utf-8",
    )
    (tmp_path / "data" / "rows.csv").write_text(f"id,text\n1,{prose(11)}\n2,{prose(12)}\n", encoding="utf-8")
    return tmp_path


def test_end_to_end_writes_kept_documents_one_ledger_and_the_manifest_last(corpus: Path, capsys) -> None:
    assert main(["curate", "data", "--out", "out"]) == 0
    out = corpus / "out"
    assert sorted(p.name for p in out.iterdir()) == ["documents.parquet", "manifest.json", "rejection_ledger.parquet"]
    artifact = read_artifact(out)
    assert artifact is not None and artifact.content_hash == content_hash(out)  # hashed after every file was written
    manifest_written = (out / "manifest.json").stat().st_mtime_ns
    assert all(p.stat().st_mtime_ns <= manifest_written for p in out.iterdir())

    kept = pq.read_table(out / "documents.parquet")
    assert kept.num_rows == 9 and prose(10) in kept.column("text").to_pylist()  # the article, not the page's chrome
    ledger = pq.read_table(out / "rejection_ledger.parquet").to_pylist()
    located = {(row["block"], row["reason"], row["path"], row["line"]) for row in ledger}
    assert located == {
        ("ingest", "malformed_json", "data/docs.jsonl", 9),
        ("ingest", "missing_field", "data/docs.jsonl", 10),
        ("exact_dedup", "exact_duplicate", "data/docs.jsonl", 7),
        ("length", "too_short", "data/docs.jsonl", 8),
    }
    metrics = artifact.metrics
    assert metrics["records_read"] == 13 == metrics["docs_kept"] + len(ledger)
    assert metrics["blocks"]["ingest"] == {"seen": 13, "dropped": 2}
    assert metrics["blocks"]["length"] == {"seen": 11, "dropped": 1}
    assert metrics["dropped_by_reason"] == {
        "exact_duplicate": 1,
        "malformed_json": 1,
        "missing_field": 1,
        "too_short": 1,
    }
    assert "13 records read, 9 kept, 4 dropped" in capsys.readouterr().err


def test_sample_prints_dropped_documents_per_reason(corpus: Path, capsys) -> None:
    (corpus / "curate.yaml").write_text("min_chars: 50\nmin_words: 5\n", encoding="utf-8")
    assert main(["curate", "data/docs.jsonl", "--out", "out", "--config", "curate.yaml", "--sample", "1"]) == 0
    printed = capsys.readouterr().out
    assert "Dropped documents, up to 1 per reason" in printed
    assert "malformed_json (1 dropped by ingest)" in printed and "too_short (1 dropped by length)" in printed
    assert "data/docs.jsonl:9" in printed and "(not read)" in printed and "not valid JSON" in printed
    assert "data/docs.jsonl:8" in printed and "'too short'" in printed and "9 chars < min_chars 50" in printed
    assert "missing_field" in printed and "exact_duplicate" in printed


def test_unknown_config_key_is_an_error_and_nothing_is_marked_finished(corpus: Path, capsys) -> None:
    (corpus / "curate.yaml").write_text("min_chars: 50\nmax_charz: 10\n", encoding="utf-8")
    assert main(["curate", "data", "--out", "out", "--config", "curate.yaml"]) == 2
    error = capsys.readouterr().err
    assert "curate.yaml" in error and "max_charz: unknown key" in error and "Traceback" not in error
    assert not (corpus / "out" / "manifest.json").exists()


def test_a_pipeline_curate_section_works_as_the_config(corpus: Path) -> None:
    (corpus / "curate.yaml").write_text("curate:\n  min_chars: 5\n  min_words: 1\n", encoding="utf-8")
    assert main(["curate", "data", "--out", "out", "--config", "curate.yaml"]) == 0
    assert read_artifact(corpus / "out").metrics["dropped_by_reason"].get("too_short") is None


def test_the_config_sets_the_language_and_gopher_blocks(corpus: Path, capsys) -> None:
    (corpus / "curate.yaml").write_text(
        "language: {languages: [de]}\ngopher_repetition: {enabled: false}\n", encoding="utf-8"
    )
    assert main(["curate", "data", "--out", "out", "--config", "curate.yaml"]) == 0
    metrics = read_artifact(corpus / "out").metrics
    assert metrics["dropped_by_reason"]["language"] == 10  # every English document (the duplicate too)
    assert metrics["blocks"]["language"] == {"seen": 10, "dropped": 10}
    assert "gopher_repetition" not in metrics["blocks"]
    (corpus / "curate.yaml").write_text("gopher_quality: {min_words: 80, max_words: 50}\n", encoding="utf-8")
    assert main(["curate", "data", "--out", "out2", "--config", "curate.yaml"]) == 2
    assert "min_words 80 is above max_words 50" in capsys.readouterr().err


def test_strict_stops_at_the_first_bad_record_naming_file_and_line(corpus: Path, capsys) -> None:
    assert main(["curate", "data", "--out", "out"]) == 0
    assert main(["curate", "data", "--out", "out", "--strict"]) == 2
    assert "data/docs.jsonl:9: not valid JSON" in capsys.readouterr().err
    assert read_artifact(corpus / "out") is None  # the earlier run's manifest is gone: the folder is unfinished


def test_usage_mistakes_are_clear_errors(corpus: Path, capsys) -> None:
    assert main(["curate", "data"]) == 2
    assert "give --out DIR" in capsys.readouterr().err
    (corpus / "elsewhere").mkdir()
    (corpus / "elsewhere" / "thesis.tex").write_text("mine")
    assert main(["curate", "data", "--out", "elsewhere"]) == 2
    assert "holds other files (thesis.tex)" in capsys.readouterr().err
    assert main(["curate", "pipeline.yaml", "--sample", "3"]) == 2
    assert "--sample: only for `dapt curate PATH... --out DIR`" in capsys.readouterr().err
    assert main(["curate", "pipeline.yaml"]) == 2  # one .yaml argument is a pipeline, run as before
    assert "pipeline file 'pipeline.yaml' not found" in capsys.readouterr().err


def test_the_pipeline_curate_stage_accounts_for_ingest_rejections_as_dapt_curate_does(corpus: Path) -> None:
    assert main(["curate", "data", "--out", "out"]) == 0
    config = config_from_dict(
        {
            "name": "t",
            "base": {"preset": {}},
            "sources": [{"name": SOURCE_NAME, "role": "domain", "kind": "files", "paths": ["data"]}],
        }
    )
    stage = run_pipeline(config, corpus / "run", until="curate")["curate"]
    ledger = pq.read_table(stage.path / "rejection_ledger.parquet").to_pylist()
    assert ledger == pq.read_table(corpus / "out" / "rejection_ledger.parquet").to_pylist()
    assert [row["block"] for row in ledger][:2] == ["ingest", "ingest"]  # ingest's rejections first, as in its own
    assert ledger[:2] == pq.read_table(corpus / "run" / "ingest" / "rejection_ledger.parquet").to_pylist()
    kept = pq.read_table(stage.path / "documents.parquet").column("id").to_pylist()
    assert kept == pq.read_table(corpus / "out" / "documents.parquet").column("id").to_pylist()
    assert stage.metrics["records_read"] == 13 == len(kept) + len(ledger) and stage.metrics["dropped"] == len(ledger)
    assert stage.metrics["docs_in"] == 11 and stage.metrics["dropped_by_reason"] == {  # curation's own counts
        "exact_duplicate": 1,
        "too_short": 1,
    }
    # one manifest writer: `dapt curate`'s manifest has exactly the fields of a pipeline stage's
    command = read_artifact(corpus / "out").manifest
    assert list(command) == list(stage.manifest) and list(command["timings"]) == list(stage.manifest["timings"])
    assert command["kind"] == stage.kind == "curate" and command["versions"] == stage.manifest["versions"]


LINE_KINDS = st.sampled_from(
    [
        "good",
        "good",
        "duplicate",
        "short",
        "malformed",
        "missing_field",
        "not_text",
        "blank",
        "undecodable",
        "long",
    ]
)


def jsonl_line(kind: str, seed: int) -> bytes:
    return {
        "good": json.dumps({"text": prose(seed)}).encode(),
        "duplicate": json.dumps({"text": prose(0)}).encode(),
        "short": json.dumps({"text": f"only {seed} words here"}).encode(),
        "malformed": b'{"text": "unterminated',
        "missing_field": json.dumps({"body": prose(seed)}).encode(),
        "not_text": json.dumps({"text": seed}).encode(),
        "blank": b"   ",
        "undecodable": b'{"text": "caf\xe9"}',
        "long": json.dumps({"text": "x" * 20_001}).encode(),
    }[kind]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(LINE_KINDS, st.integers(0, 8)), max_size=30))
def test_every_record_read_is_kept_or_in_the_ledger(lines: list[tuple[str, int]]) -> None:
    lines = [("good", 0), *lines]  # a source none of whose records can be read is an error, tested above
    with tempfile.TemporaryDirectory() as folder:
        data = Path(folder) / "d.jsonl"
        data.write_bytes(b"\n".join(jsonl_line(kind, seed) for kind, seed in lines) + b"\n")
        out = Path(folder) / "out"
        metrics = curate_files(
            [str(data)], out=out, config=CurateConfig(near_dedup=False), sample=2, sample_to=io.StringIO()
        )
        read = sum(kind != "blank" for kind, _ in lines)
        kept = pq.read_table(out / "documents.parquet").num_rows
        ledger = pq.read_table(out / "rejection_ledger.parquet")
        ingest_rows = ledger.column("block").to_pylist().count("ingest")
        assert metrics["records_read"] == read == ingest_rows + (ledger.num_rows - ingest_rows) + kept
        assert sum(metrics["dropped_by_reason"].values()) == ledger.num_rows
        assert set(ledger.column("line").to_pylist()) <= set(range(1, len(lines) + 1))
