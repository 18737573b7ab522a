"""Documents per second of dapt's curate against datatrove on the same pipeline, documents and machine.

The pipeline: Gopher quality rules, Gopher repetition rules, then MinHash near-duplicate removal (5-word
shingles, 16 bands x 8 rows, as dapt's defaults). dapt runs `dapt.data.executor.curate_to_files` with its
other blocks (C4, language ID, PII, exact dedup) switched off or made permissive (normalisation and the
length/quality blocks still run, with thresholds nothing fails: dapt does a little more work than datatrove
here); datatrove 0.10.1 runs its
`GopherQualityFilter`, `GopherRepetitionFilter` and its four MinHash stages with `LocalPipelineExecutor`.
Both use every core (dapt: `workers`; datatrove: as many tasks and workers), read their own input format
(Parquet for dapt, JSONL shards for datatrove) and write the kept documents.

Documents: the docstrings of SciPy, the standard library, NumPy, torch and transformers (20k by default),
plus near-copies of a share of them (a few words changed) so that the MinHash stages have clusters to find.
Runs alternate between the two tools and each reports the median of its runs; timings are wall-clock and
noisy on a shared machine.

datatrove is not a dapt dependency: `pip install datatrove==0.10.1` in the environment running the bench.
Its Gopher filters need a word tokenizer (spaCy for English by default, not installed here); they get a
whitespace tokenizer (bench/whitespace_tokenizer.py), which counts words as dapt's Gopher blocks do. Its
JSONL reader needs orjson. Its MinHash stage 1 hashes with xxhash by default, which fails
under xxhash 4.x ("Strings must be encoded before hashing"), so it is given `HashConfig(hash_fc="sha1")`.

python bench/curation_speed.py                 # writes bench/results/curation_speed.json; ratio last
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import random
import shutil
import statistics
import tempfile
import time
from datetime import date
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from dapt.data.curate import curation_options
from dapt.data.documents import DOCUMENT_SCHEMA
from dapt.data.executor import available_cores, curate_to_files
from dapt.data.pydocs import STDLIB, docstring_documents

RESULTS = Path(__file__).resolve().parent / "results" / "curation_speed.json"


# Packages whose docstrings make the corpus: the demo's two, then dapt's own dependencies (torch and
# transformers are large), so that fixed costs (starting workers, datatrove's stages) weigh as little as
# they would on a real corpus.
PACKAGES = ("scipy", STDLIB, "numpy", "torch", "transformers")


def corpus(max_docs: int, seed: int = 0) -> list[dict]:
    """Docstrings (>= 200 chars) of PACKAGES, 15% of them followed by a near-copy (1 word in 100 changed)."""
    rng = random.Random(seed)
    docs = []
    for package in PACKAGES:
        try:
            found = list(docstring_documents(package, source=package, min_chars=200))
        except Exception as error:  # a package not installed: use the others
            print(f"skipping {package}: {error}")
            continue
        for doc in found:
            docs.append({"id": doc["id"], "text": doc["text"], "source": package})
            if rng.random() < 0.15:
                words = doc["text"].split(" ")
                for _ in range(max(1, len(words) // 100)):
                    words[rng.randrange(len(words))] = rng.choice(words)
                docs.append({"id": doc["id"] + "#copy", "text": " ".join(words), "source": package})
            if len(docs) >= max_docs:
                return docs
    return docs


def run_dapt(source: Path, out: Path, workers: int, batch_size: int) -> dict:
    options = curation_options(
        min_chars=0,
        max_chars=10**12,
        min_words=0,
        max_symbol_ratio=1.0,
        min_alpha_words_ratio=0.0,
        max_mean_word_chars=1e9,
        pii_scrub=False,
        exact_dedup=False,
        fix_mojibake=False,
        c4={"enabled": False},
        language={"enabled": False},  # datatrove's pipeline here has no language ID
        workers=workers,
        batch_size=batch_size,
    )
    started = time.perf_counter()
    stats = curate_to_files(source, out / "documents.parquet", out / "ledger.parquet", options=options)
    seconds = time.perf_counter() - started
    dropped = stats["dropped_by_reason"]
    return {"seconds": seconds, "kept": stats["docs_kept"], "near_duplicates": dropped.get("near_duplicate", 0)}


def run_datatrove(shards: Path, work: Path, workers: int) -> dict:
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup import MinhashDedupCluster, MinhashDedupFilter, MinhashDedupSignature
    from datatrove.pipeline.dedup.minhash import MinhashConfig, MinhashDedupBuckets
    from datatrove.pipeline.filters import GopherQualityFilter, GopherRepetitionFilter
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter
    from datatrove.utils.hashing import HashConfig
    from whitespace_tokenizer import WhitespaceWordTokenizer  # its own module: datatrove's workers import it

    tokenizer = WhitespaceWordTokenizer()
    config = MinhashConfig(n_grams=5, num_buckets=16, hashes_per_bucket=8, hash_config=HashConfig(hash_fc="sha1"))
    tasks = len(list(shards.glob("*.jsonl")))
    stages = [
        LocalPipelineExecutor(
            [
                JsonlReader(str(shards)),
                GopherQualityFilter(language=tokenizer),
                GopherRepetitionFilter(language=tokenizer),
                JsonlWriter(str(work / "filtered")),
                MinhashDedupSignature(str(work / "signatures"), config=config, language=tokenizer),
            ],
            tasks=tasks,
            workers=workers,
            logging_dir=str(work / "logs1"),
        ),
        LocalPipelineExecutor(
            [MinhashDedupBuckets(str(work / "signatures"), str(work / "buckets"), config=config)],
            tasks=config.num_buckets,
            workers=workers,
            logging_dir=str(work / "logs2"),
        ),
        LocalPipelineExecutor(
            [MinhashDedupCluster(str(work / "buckets"), str(work / "remove_ids"), config=config)],
            tasks=1,
            logging_dir=str(work / "logs3"),
        ),
        LocalPipelineExecutor(
            [
                JsonlReader(str(work / "filtered")),
                MinhashDedupFilter(str(work / "remove_ids")),
                JsonlWriter(str(work / "output")),
            ],
            tasks=tasks,
            workers=workers,
            logging_dir=str(work / "logs4"),
        ),
    ]
    started = time.perf_counter()
    for stage in stages:
        stage.run()
    seconds = time.perf_counter() - started
    filtered = sum(1 for path in (work / "filtered").glob("*.jsonl.gz") for _ in gzip.open(path, "rt"))
    kept = sum(1 for path in (work / "output").glob("*.jsonl.gz") for _ in gzip.open(path, "rt"))
    return {"seconds": seconds, "kept": kept, "near_duplicates": filtered - kept}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--docs", type=int, default=20000, help="documents in the corpus (default 20000)")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each tool, alternating (default 3)")
    args = parser.parse_args()
    workers = available_cores()
    docs = corpus(args.docs)
    chars = sum(len(doc["text"]) for doc in docs)
    print(f"{len(docs)} documents, {chars / 1e6:.1f} M characters, {workers} cores", flush=True)

    with tempfile.TemporaryDirectory(prefix="curation-speed-") as folder:
        root = Path(folder)
        source = root / "documents.parquet"
        table = pa.table(
            {
                "id": [doc["id"] for doc in docs],
                "text": [doc["text"] for doc in docs],
                "source": [doc["source"] for doc in docs],
                "meta": ["{}"] * len(docs),
            },
            schema=DOCUMENT_SCHEMA,
        )
        pq.write_table(table, source)
        shards = root / "shards"
        shards.mkdir()
        for shard in range(workers):
            with open(shards / f"{shard:05d}.jsonl", "w") as handle:
                for doc in docs[shard::workers]:
                    handle.write(json.dumps({"id": doc["id"], "text": doc["text"]}) + "\n")
        # Batches small enough for every worker to get several (a corpus of fewer runs in one process).
        batch_size = max(64, len(docs) // (8 * workers))

        runs: dict[str, list[dict]] = {"dapt": [], "datatrove": []}
        for round_index in range(args.rounds):
            order = ("dapt", "datatrove") if round_index % 2 == 0 else ("datatrove", "dapt")
            for tool in order:
                work = root / f"{tool}-{round_index}"
                work.mkdir()
                if tool == "dapt":
                    result = run_dapt(source, work, workers, batch_size)
                else:
                    result = run_datatrove(shards, work, workers)
                runs[tool].append(result)
                print(f"round {round_index + 1} {tool}: {result['seconds']:.1f} s, kept {result['kept']}", flush=True)
                shutil.rmtree(work)

    summary = {}
    for tool, tool_runs in runs.items():
        seconds = statistics.median(run["seconds"] for run in tool_runs)
        summary[tool] = {
            "median_seconds": round(seconds, 2),
            "docs_per_second": round(len(docs) / seconds, 1),
            "kept": tool_runs[-1]["kept"],
            "near_duplicates_dropped": tool_runs[-1]["near_duplicates"],
            "seconds": [round(run["seconds"], 2) for run in tool_runs],
        }
    ratio = summary["dapt"]["docs_per_second"] / summary["datatrove"]["docs_per_second"]
    headline = (
        f"Gopher quality + repetition + MinHash dedup on {len(docs)} docstrings, {workers} cores: dapt "
        f"{summary['dapt']['docs_per_second']:.0f} docs/s, datatrove 0.10.1 "
        f"{summary['datatrove']['docs_per_second']:.0f} docs/s, speed ratio {ratio:.1f}"
    )
    record = {
        "benchmark": "curation_speed",
        "date": date.today().isoformat(),
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "cores": workers},
        "corpus": {"documents": len(docs), "characters": chars},
        "settings": {"rounds": args.rounds, "dapt_batch_size": batch_size, "workers": workers},
        "results": summary,
        "speed_ratio": round(ratio, 2),
        "note": "wall-clock medians; noisy when other work shares the machine",
        "headline": headline,
    }
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(record, indent=2) + "\n")
    print(headline)


if __name__ == "__main__":
    os.environ.setdefault("DATATROVE_COLORIZE_LOGS", "0")
    main()
