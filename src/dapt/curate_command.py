"""`dapt curate PATH... --out DIR`: ingest your files and curate them in one go, without a pipeline.

Made for checking curation on your own data before a run. DIR receives the kept documents
(`documents.parquet`), one rejection ledger for both steps (`rejection_ledger.parquet`: the records ingestion
skipped, with block `ingest`, then every document a curation block dropped, each with its file and line),
and `manifest.json` with the counts per block, written last and atomically: a DIR without it is unfinished.
`--sample N` prints N dropped documents per reason, to check the filters against.

The work is the pipeline's own: the ingest stage's `ingest_sources` and the curate stage's `curate_corpus`.
`dapt curate PIPELINE.yaml` still runs a pipeline's curate stage; `pipeline_path` tells the two apart.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import IO, Any

from dapt.data.documents import stream_parquet
from dapt.errors import ConfigError

SOURCE_NAME = "input"  # the `source` of every document read by this command
PIPELINE_SUFFIXES = (".yaml", ".yml")
SNIPPET_CHARS = 160


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `dapt curate` arguments besides --out and --set (the stage commands' run options)."""
    parser.description = (
        "Two uses. `dapt curate PIPELINE.yaml`: run the pipeline's curate stage (and the stages it needs). "
        "`dapt curate PATH... --out DIR`: ingest data files, globs or folders and curate them without a pipeline; "
        "DIR gets documents.parquet (kept), rejection_ledger.parquet (every dropped record and why) and "
        "manifest.json (counts per block), written last."
    )
    parser.add_argument(
        "inputs", nargs="+", metavar="PATH", help="a pipeline YAML, or data files, globs or folders to curate"
    )
    parser.add_argument(
        "--config",
        type=Path,
        help="with data paths: a YAML of curate settings, e.g. `min_chars: 100` (`dapt config --explain` lists them)",
    )
    parser.add_argument(
        "--text-field", help="with data paths: the JSONL key or CSV/Parquet column holding the text (default: text)"
    )
    parser.add_argument(
        "--strict", action="store_true", help="with data paths: stop at the first unreadable record (exit 2)"
    )
    parser.add_argument(
        "--sample", type=int, default=0, metavar="N", help="with data paths: print N dropped documents per reason"
    )


def pipeline_path(args: argparse.Namespace) -> Path | None:
    """The pipeline YAML when `dapt curate` was given one (run its curate stage), else None (data paths)."""
    if len(args.inputs) != 1 or not args.inputs[0].lower().endswith(PIPELINE_SUFFIXES):
        return None
    given = [
        flag
        for flag, value in (
            ("--config", args.config),
            ("--text-field", args.text_field),
            ("--strict", args.strict),
            ("--sample", args.sample),
        )
        if value
    ]
    if given:
        raise ConfigError(
            f"{', '.join(given)}: only for `dapt curate PATH... --out DIR` on data files; for the pipeline "
            f"{args.inputs[0]}, set curate: and sources: in it, or override with --set curate.KEY=VALUE"
        )
    return Path(args.inputs[0])


def run_from_args(args: argparse.Namespace) -> int:
    """`dapt curate PATH... --out DIR ...`, after `pipeline_path` said these are data paths."""
    if args.out is None:
        raise ConfigError(
            "dapt curate PATH...: give --out DIR, the folder for documents.parquet, rejection_ledger.parquet "
            "and manifest.json"
        )
    if args.overrides:
        raise ConfigError("--set is for a pipeline YAML; with data paths, put curate settings in --config FILE")
    if args.sample < 0:
        raise ConfigError(f"--sample {args.sample}: give a number of documents per reason, 0 or more")
    config = load_curate_config(args.config) if args.config is not None else None
    curate_files(
        args.inputs,
        out=args.out,
        config=config,
        text_field=args.text_field or "text",
        strict=args.strict,
        sample=args.sample,
    )
    return 0


def load_curate_config(path: Path) -> Any:
    """A CurateConfig from a YAML of its fields; a pipeline's `curate:` section pasted whole works too."""
    from pydantic import ValidationError

    from dapt.config import CurateConfig, _explain, read_yaml_mapping

    path = Path(path)
    raw = read_yaml_mapping(
        path, what="--config: file", expected="curate settings (e.g. min_chars: 100)", empty_ok=True
    )
    if list(raw) == ["curate"] and isinstance(raw["curate"], dict):
        raw = raw["curate"]
    try:
        return CurateConfig.model_validate(raw)
    except ValidationError as error:
        raise _explain(error, f"{path}") from None


def _check_out(out: Path) -> None:
    """`out` must be new, empty, or a folder this command wrote: its manifest hashes every file in it."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: a file, not a folder")
    ours = {"documents.parquet", "rejection_ledger.parquet", "manifest.json"}
    others = (
        sorted(p.name for p in out.iterdir() if p.name not in ours and not p.name.startswith("."))
        if out.exists()
        else []
    )
    if others:
        listing = ", ".join(others[:5]) + (", ..." if len(others) > 5 else "")
        raise ConfigError(
            f"--out {out}: the folder holds other files ({listing}); give a new or empty folder, as its "
            "manifest.json accounts for every file in it"
        )


def curate_files(
    paths: list[str],
    *,
    out: Path,
    config: Any = None,
    text_field: str = "text",
    strict: bool = False,
    sample: int = 0,
    sample_to: IO[str] | None = None,
) -> dict[str, Any]:
    """Ingest `paths` (relative to the working folder) and curate them into `out`; return the manifest metrics.

    `config` is a CurateConfig (default: its defaults). Dropped samples are printed to `sample_to` (stdout).
    A full disk is said as such.
    """
    from dapt.errors import disk_full_reported
    from dapt.run_folder import writable_folder

    out = Path(out)
    _check_out(out)
    writable_folder(out, "--out")
    with disk_full_reported(out, "curate again (it starts over)"):
        return _curate_files(paths, out, config, text_field, strict, sample, sample_to)


def _curate_files(
    paths: list[str],
    out: Path,
    config: Any,
    text_field: str,
    strict: bool,
    sample: int,
    sample_to: IO[str] | None,
) -> dict[str, Any]:
    """`curate_files` once `out` is checked: one stage, `curate`, built into `out` by the pipeline's runner's
    `build_artifact` (which writes the manifest, as for any stage)."""
    from dapt.artifacts import MANIFEST_NAME
    from dapt.config import CurateConfig, SourceConfig
    from dapt.pipeline import StageSpec, build_artifact, say
    from dapt.stages.ingest import DOCUMENTS_NAME, LEDGER_NAME

    config = config if config is not None else CurateConfig()
    source = SourceConfig(
        name=SOURCE_NAME, role="domain", kind="files", paths=list(paths), text_field=text_field, strict=strict
    )

    def ingest_and_curate(context: Any) -> dict[str, Any]:
        return _ingest_and_curate(source, config, context.out, sample, sample_to)

    spec = StageSpec(
        "curate",
        "curate",
        ingest_and_curate,
        {"source": source.model_dump(mode="json"), "curate": config.model_dump(mode="json")},
        summary="ingest and curate files",
    )
    artifact = build_artifact(spec, out, {})
    assert artifact is not None
    metrics = artifact.metrics
    reasons = ", ".join(f"{reason} {n}" for reason, n in Counter(metrics["dropped_by_reason"]).most_common()) or "none"
    say(
        f"dapt curate: {metrics['records_read']} records read, {metrics['docs_kept']} kept, {metrics['dropped']} "
        f"dropped ({reasons}) in {artifact.manifest['timings']['seconds']:.1f}s; {out / DOCUMENTS_NAME}, "
        f"{out / LEDGER_NAME}, {out / MANIFEST_NAME}"
    )
    return metrics


def _ingest_and_curate(source: Any, config: Any, out: Path, sample: int, sample_to: IO[str] | None) -> dict[str, Any]:
    """The stage `dapt curate` runs: ingest into a work folder inside `out`, curate into `out` (ingest's rejections
    first in the ledger), print the samples; return the metrics, counted from the records read."""
    from dapt.pipeline import say
    from dapt.run_folder import inside
    from dapt.stages.curate import curate_corpus, from_records_read
    from dapt.stages.ingest import DOCUMENTS_NAME, LEDGER_NAME, ingest_sources

    for leftover in out.glob(".ingest-*"):  # an interrupted run's work folder (mkdtemp's, below)
        shutil.rmtree(inside(out, leftover), ignore_errors=True)

    def log(message: str) -> None:
        say(f"  {message}")

    work = Path(tempfile.mkdtemp(prefix=".ingest-", dir=out))  # ingested documents, before curation
    try:
        say(f"dapt curate: ingest {', '.join(source.paths)}")
        ingest = ingest_sources([source], work, log)
        say(f"dapt curate: curate into {out}")
        curated = curate_corpus(
            work / DOCUMENTS_NAME,
            out,
            options=config.model_dump(),
            contamination={},
            log=log,
            earlier_rejections=work / LEDGER_NAME,
        )
        if sample:
            print_dropped_samples(out / LEDGER_NAME, work / DOCUMENTS_NAME, sample, sample_to or sys.stdout)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {**from_records_read(ingest, curated), "ingest": ingest, "curate": curated}


def _snippet(text: str) -> str:
    text = " ".join(text.split())
    return repr(text if len(text) <= SNIPPET_CHARS else text[:SNIPPET_CHARS] + "…")


def print_dropped_samples(ledger_path: Path, documents_path: Path, per_reason: int, stream: IO[str]) -> None:
    """Print up to `per_reason` dropped documents for each reason: id, source, file:line, text, detail."""
    import pyarrow.parquet as pq

    from dapt.data.ingest import location

    ledger = stream_parquet(ledger_path)
    counts: Counter[str] = Counter()
    samples: dict[str, list[dict]] = {}  # by reason, in ledger order: ingest's reasons first
    for batch in ledger.iter_batches():
        for row in batch.to_pylist():
            counts[row["reason"]] += 1
            if counts[row["reason"]] <= per_reason:
                samples.setdefault(row["reason"], []).append(row)
    if not samples:
        print("No document was dropped.", file=stream)
        return
    wanted = [row["id"] for rows in samples.values() for row in rows]
    found = pq.read_table(documents_path, columns=["id", "text"], filters=[("id", "in", wanted)])
    texts = dict(zip(found.column("id").to_pylist(), found.column("text").to_pylist(), strict=True))
    print(f"Dropped documents, up to {per_reason} per reason:", file=stream)
    for reason, rows in samples.items():
        blocks = sorted({row["block"] for row in rows})
        print(f"\n{reason} ({counts[reason]} dropped by {', '.join(blocks)})", file=stream)
        for row in rows:
            where = location(row["path"], row["line"]) if row["path"] else "-"
            text = texts.get(row["id"])
            print(f"  {row['id']}  {row['source']}  {where}", file=stream)
            print(f"    text:   {_snippet(text) if text is not None else '(not read)'}", file=stream)
            print(f"    detail: {row['detail']}", file=stream)
