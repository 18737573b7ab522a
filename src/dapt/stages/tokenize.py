"""tokenize: the base's tokenizer over the curated documents → packed token shards + held-out splits.

Splits are by document (never a document cut between train and validation):
- domain → domain_train, domain_val (early stopping), domain_test (the before/after perplexity);
- general_eval sources → general_val, general_test (the forgetting signal);
- replay sources → replay_train. With no general_eval source, general_val/test are held-out replay
  documents instead, and the manifest says so: that mostly measures how well the replay was learned.

With vocabulary extension the corpus is tokenized twice: `tokenize` with the original base's tokenizer
decides the splits, and `tokenize-extended` (its `splits` input) puts the very same documents in each split,
so both bases are measured on the same held-out text and the extension never sees it.

The training shards keep each source's documents together and record where (shard.json `sources`), so
pretraining can open each source alone and weight it (pretrain.mix).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm
from transformers import AutoTokenizer

from dapt.config import TokenizeConfig
from dapt.data.documents import read_documents
from dapt.data.shards import write_shard
from dapt.errors import DataError
from dapt.pipeline import StageContext

BATCH = 256


def tokenize_texts(tokenizer: Any, texts: list[str], eos_id: int, description: str) -> list[list[int]]:
    """Token ids per text, each ending in end-of-text so packed documents stay delimited."""
    out: list[list[int]] = []
    for start in tqdm(range(0, len(texts), BATCH), desc=description, unit="batch", leave=False):
        encoded = tokenizer(texts[start : start + BATCH], add_special_tokens=False)["input_ids"]
        out.extend(ids + [eos_id] for ids in encoded)
    return out


def hold_out(order: np.ndarray, lengths: list[int], budget: int) -> tuple[list[int], np.ndarray]:
    """Take documents from the front of `order` until `budget` tokens are held out; return them and the rest."""
    taken, total = [], 0
    for position, index in enumerate(order):
        if total >= budget:
            return taken, order[position:]
        taken.append(int(index))
        total += lengths[index]
    return taken, order[len(order) :]


def same_splits(splits_file: Path, ids: list[str]) -> dict[str, list[int]]:
    """The rows of `ids` in each split of another tokenization's `splits.parquet`, in that file's order."""
    row_of = {document_id: row for row, document_id in enumerate(ids)}
    if len(row_of) != len(ids):
        raise DataError(f"{splits_file}: the curated corpus repeats document ids, so splits cannot be matched by id")
    table = pq.read_table(splits_file, columns=["id", "split"])
    splits: dict[str, list[int]] = {}
    for document_id, split in zip(table.column("id").to_pylist(), table.column("split").to_pylist(), strict=True):
        if document_id not in row_of:
            raise DataError(f"{splits_file}: document {document_id!r} is not in the curated corpus; rerun the pipeline")
        splits.setdefault(split, []).append(row_of[document_id])
    return splits


def split_texts(splits_file: Path, documents_file: Path) -> dict[str, list[str]]:
    """The texts of each split of a tokenization (its `splits.parquet`), in shard order, from the curated corpus."""
    documents = read_documents(documents_file)
    text_of = dict(zip(documents.column("id").to_pylist(), documents.column("text").to_pylist(), strict=True))
    table = pq.read_table(splits_file, columns=["id", "split"])
    texts: dict[str, list[str]] = {}
    for document_id, split in zip(table.column("id").to_pylist(), table.column("split").to_pylist(), strict=True):
        texts.setdefault(split, []).append(text_of[document_id])
    return texts


def run(context: StageContext) -> dict[str, Any]:
    config = TokenizeConfig.model_validate(context.config["tokenize"])
    rng = np.random.default_rng(context.config["seed"])
    documents = read_documents(context.inputs["corpus"].path / "documents.parquet")
    tokenizer = AutoTokenizer.from_pretrained(context.inputs["base"].path / "model")
    eos_id = tokenizer.eos_token_id
    if eos_id is None:
        raise DataError("the base's tokenizer has no end-of-text token (eos_token); packed documents need one")
    role_of = {s.name: s.role for s in context.pipeline.sources}
    ids, texts, sources = (documents.column(c).to_pylist() for c in ("id", "text", "source"))

    by_role: dict[str, list[int]] = {"domain": [], "replay": [], "general_eval": []}
    for row, source in enumerate(sources):
        by_role[role_of.get(source, "domain")].append(row)
    tokens: dict[int, list[int]] = {}
    for role, rows in by_role.items():
        encoded = tokenize_texts(tokenizer, [texts[r] for r in rows], eos_id, f"tokenize {role}")
        tokens.update(zip(rows, encoded, strict=True))
    lengths = {row: len(t) for row, t in tokens.items()}

    def shuffled(rows: list[int]) -> np.ndarray:
        return np.array(rows, dtype=np.int64)[rng.permutation(len(rows))] if rows else np.array([], dtype=np.int64)

    splits: dict[str, list[int]] = {}
    domain_order = shuffled(by_role["domain"])
    splits["domain_test"], domain_order = hold_out(domain_order, lengths, config.eval_tokens)
    splits["domain_val"], domain_order = hold_out(domain_order, lengths, config.eval_tokens)
    splits["domain_train"] = domain_order.tolist()
    replay_order = shuffled(by_role["replay"])
    general_source = "general_eval" if by_role["general_eval"] else "replay"
    general_order = shuffled(by_role["general_eval"]) if by_role["general_eval"] else replay_order
    splits["general_test"], general_order = hold_out(general_order, lengths, config.eval_tokens)
    splits["general_val"], general_order = hold_out(general_order, lengths, config.eval_tokens)
    splits["replay_train"] = (general_order if general_source == "replay" else replay_order).tolist()
    if general_source == "replay" and by_role["replay"]:
        context.log("no general_eval source: general val/test are held-out replay documents (weaker forgetting signal)")
    if config.max_train_tokens is not None:
        for split in ("domain_train", "replay_train"):
            splits[split], _ = hold_out(np.array(splits[split], dtype=np.int64), lengths, config.max_train_tokens)
    if "splits" in context.inputs:  # an extended tokenizer: the original tokenization's documents, split for split
        splits = same_splits(context.inputs["splits"].path / "splits.parquet", ids)

    # Training documents grouped by source (in the config's order, each source's shuffled order kept), so the
    # shard records each source's run of documents and pretraining can weight sources one by one (pretrain.mix).
    source_rank = {s.name: i for i, s in enumerate(context.pipeline.sources)}
    for split in ("domain_train", "replay_train"):
        splits[split] = sorted(splits[split], key=lambda r: (source_rank.get(sources[r], len(source_rank)), sources[r]))

    train_tokens = sum(lengths[r] for r in splits["domain_train"])
    if train_tokens == 0:
        raise DataError(
            f"the domain corpus has {sum(lengths[r] for r in by_role['domain'])} tokens after curation; nothing is "
            f"left for training after holding out 2 × tokenize.eval_tokens ({config.eval_tokens}). Add domain text "
            "or lower tokenize.eval_tokens"
        )

    stats: dict[str, Any] = {}
    split_rows = []
    for split, rows in splits.items():
        if not rows:
            continue
        stats[split] = write_shard(
            context.out / "shards" / split,
            [tokens[r] for r in rows],
            vocab_size=len(tokenizer),
            document_sources=[sources[r] for r in rows] if split.endswith("_train") else None,
        )
        split_rows += [(ids[r], sources[r], split, lengths[r]) for r in rows]
        context.log(f"{split}: {stats[split]['documents']} documents, {stats[split]['tokens']} tokens")
    id_col, source_col, split_col, length_col = zip(*split_rows, strict=True)
    pq.write_table(
        pa.table({"id": id_col, "source": source_col, "split": split_col, "tokens": length_col}),
        context.out / "splits.parquet",
    )
    return {
        "splits": stats,
        "general_heldout_from": general_source,
        "tokenizer": type(tokenizer).__name__,
        "vocab_size": len(tokenizer),
        "total_tokens": sum(lengths.values()),
    }
