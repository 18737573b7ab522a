"""tokenize: the base's tokenizer over the curated documents → packed token shards + held-out splits.

Splits are by document (never a document cut between train and validation):
- domain → domain_train, domain_val (early stopping), domain_test (the before/after perplexity);
- general_eval sources → general_val, general_test (the forgetting signal);
- replay sources → replay_train. With no general_eval source, general_val/test are held-out replay
  documents instead, and the manifest says so: that mostly measures how well the replay was learned.

The corpus is streamed (`dapt.data.tokenization`): batches of documents are tokenized into parts by
`tokenize.workers` processes (or Ray), a killed run resumes from its finished parts, and the parts are
assembled into shards of about `tokenize.shard_tokens` tokens. Memory stays bounded whatever the corpus size,
and the shards are the same, byte for byte, for any number of workers.

With vocabulary extension the corpus is tokenized twice: `tokenize` with the original base's tokenizer
decides the splits, and `tokenize-extended` (its `splits` input) puts the very same documents in each split,
so both bases are measured on the same held-out text and the extension never sees it.

The training shards keep each source's documents apart (a shard holds one source, recorded in its
shard.json), so pretraining can open each source alone and weight it (pretrain.mix).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm.auto import tqdm
from transformers import AutoTokenizer

from dapt.config import TokenizeConfig
from dapt.data.documents import stream_parquet
from dapt.data.progress import peak_rss_mb
from dapt.data.tokenization import (
    ROLE_CODE,
    SPLIT_CODE,
    SPLITS,
    HeldOutSize,
    PartSettings,
    assemble_shards,
    choose_splits,
    read_index,
    tokenize_parts,
)
from dapt.errors import DataError
from dapt.stages.context import StageContext

BATCH = 256
SCRATCH = "parts"  # the tokenized batches of an unfinished run, inside the stage's folder


def tokenize_texts(tokenizer: Any, texts: list[str], eos_id: int, description: str) -> list[list[int]]:
    """Token ids per text, each ending in end-of-text so packed documents stay delimited (small sets of texts)."""
    out: list[list[int]] = []
    for start in tqdm(range(0, len(texts), BATCH), desc=description, unit="batch", leave=False):
        encoded = tokenizer(texts[start : start + BATCH], add_special_tokens=False)["input_ids"]
        out.extend(ids + [eos_id] for ids in encoded)
    return out


class SameSplits:
    """Another tokenization's splits (its `splits.parquet`, one row per curated document, in corpus order): the
    split code of every document, and a check that the corpus being tokenized has the same documents."""

    def __init__(self, splits_file: Path, documents: int) -> None:
        self.file = splits_file
        table = pq.read_table(splits_file, columns=["split"])
        if table.num_rows != documents:
            raise DataError(
                f"{splits_file}: {table.num_rows} documents, but the curated corpus has {documents}; rerun the pipeline"
            )
        # Arrow all along (no Python object per document): each split's number in SPLITS, -1 for none
        codes = pc.index_in(table.column("split"), value_set=pa.array(SPLITS, pa.string()))
        self.codes = pc.fill_null(codes, -1).to_numpy(zero_copy_only=False).astype(np.int8)
        self._ids = self._stream_ids()

    def _stream_ids(self) -> Iterator[str]:
        for batch in stream_parquet(self.file).iter_batches(columns=["id"]):
            yield from batch.column("id").to_pylist()

    def check(self, first: int, ids: list[str]) -> None:
        for offset, document_id in enumerate(ids):
            theirs = next(self._ids, None)
            if theirs != document_id:
                raise DataError(
                    f"{self.file}: document {first + offset} is {theirs!r} there but {document_id!r} in the curated "
                    "corpus; rerun the pipeline"
                )


def split_texts(splits_file: Path, documents_file: Path, wanted: tuple[str, ...] | None = None) -> dict[str, list[str]]:
    """The texts of each split of a tokenization (its `splits.parquet`), in shard order, from the curated corpus.

    `splits.parquet` has one row per curated document, in corpus order. Only the `wanted` splits' texts (default:
    all) are read, and only from the row groups of the corpus that hold them: asking for the held-out splits of a
    100 GB corpus reads those documents, not the corpus."""
    listed = pq.read_table(splits_file, columns=["id", "split", "position"])
    split_column = listed.column("split")
    chosen = pc.is_valid(split_column) if wanted is None else pc.is_in(split_column, pa.array(wanted, pa.string()))
    rows = np.flatnonzero(chosen.to_numpy(zero_copy_only=False))  # Arrow all along: no Python object per document
    selected = listed.take(pa.array(rows, pa.int64()))
    names = selected.column("split").to_pylist()
    corpus = stream_parquet(documents_file)
    if corpus.metadata.num_rows != listed.num_rows:
        raise DataError(f"{splits_file} does not list the documents of {documents_file}; rerun the pipeline")
    group_ends = np.cumsum([corpus.metadata.row_group(g).num_rows for g in range(corpus.num_row_groups)])
    ids, positions = selected.column("id").to_pylist(), selected.column("position").to_pylist()
    collected: dict[str, list[tuple[int, str]]] = {}
    by_group: dict[int, list[int]] = {}  # row group -> numbers (into `rows`) of the chosen documents in it
    for number, row in enumerate(rows):
        by_group.setdefault(int(np.searchsorted(group_ends, row, side="right")), []).append(number)
    for group, members in sorted(by_group.items()):
        table = corpus.read_row_group(group, columns=["id", "text"])
        first = int(group_ends[group - 1]) if group else 0
        local = pa.array([int(rows[number]) - first for number in members], pa.int64())
        picked = table.take(local)
        for number, document_id, text in zip(
            members, picked.column("id").to_pylist(), picked.column("text").to_pylist(), strict=True
        ):
            if document_id != ids[number]:
                raise DataError(f"{splits_file} does not list the documents of {documents_file}; rerun the pipeline")
            collected.setdefault(names[number], []).append((positions[number], text))
    return {name: [text for _, text in sorted(pairs)] for name, pairs in collected.items()}


def run(context: StageContext) -> dict[str, Any]:
    config = context.section_of(TokenizeConfig)
    documents_file = context.inputs["corpus"].path / "documents.parquet"
    tokenizer_folder = context.inputs["base"].path / "model"
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_folder)
    eos_id = tokenizer.eos_token_id
    if eos_id is None:
        raise DataError("the base's tokenizer has no end-of-text token (eos_token); packed documents need one")
    scratch = context.out / SCRATCH
    settings = PartSettings(str(tokenizer_folder), int(eos_id), len(tokenizer), int(context.config["seed"]))
    work = tokenize_parts(
        documents_file,
        scratch,
        settings,
        batch_size=config.batch_size,
        workers=config.workers,
        backend=config.backend,
        log=context.log,
    )
    index = read_index(scratch, work["parts"])

    role_of = {s.name: s.role for s in context.pipeline.sources}
    source_roles = np.array([ROLE_CODE[role_of.get(name, "domain")] for name in index.source_names], dtype=np.int8)
    roles = source_roles[index.sources] if len(index.sources) else np.zeros(0, dtype=np.int8)
    size = HeldOutSize(config.eval_tokens, config.eval_min_documents, config.eval_max_tokens)
    splits, general_from = choose_splits(index.keys, index.lengths, roles, size, config.max_train_tokens)
    same = None
    if "splits" in context.inputs:  # an extended tokenizer: the original tokenization's documents, split for split
        same = SameSplits(context.inputs["splits"].path / "splits.parquet", len(splits))
        splits = same.codes
    elif general_from == "replay" and (roles == ROLE_CODE["replay"]).any():
        context.log("no general_eval source: general val/test are held-out replay documents (weaker forgetting signal)")

    train_tokens = int(index.lengths[splits == SPLIT_CODE["domain_train"]].sum())
    if train_tokens == 0:
        raise DataError(
            f"the domain corpus has {int(index.lengths[roles == ROLE_CODE['domain']].sum())} tokens after curation; "
            f"nothing is left for training after holding out 2 × tokenize.eval_tokens ({config.eval_tokens}) for "
            "test and validation. Add domain text or lower tokenize.eval_tokens"
        )
    stats = assemble_shards(
        scratch,
        index,
        splits,
        context.out,
        source_order=[s.name for s in context.pipeline.sources],
        shard_tokens=config.shard_tokens,
        vocab_size=len(tokenizer),
        check_ids=same.check if same is not None else None,
    )
    for split, numbers in stats.items():
        context.log(
            f"{split}: {numbers['documents']} documents, {numbers['tokens']} tokens, {numbers['shards']} shards"
        )
    shutil.rmtree(scratch)  # the shards are complete: the parts are no longer needed
    return {
        "splits": stats,
        "general_heldout_from": general_from,
        "tokenizer": type(tokenizer).__name__,
        "vocab_size": len(tokenizer),
        "total_tokens": int(index.lengths.sum()),
        "documents": len(splits),
        "throughput": {k: v for k, v in work.items() if k.endswith("_per_s")},
        "parts": work["parts"],
        "parts_resumed": work["parts_resumed"],
        "peak_rss_mb": peak_rss_mb(),
    }
