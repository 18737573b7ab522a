"""Curation on a Ray cluster (`curate.backend: ray`): the local executor's map, reduce and write, with the
work that grows with the corpus done by Ray Data.

- map: `map_batches` over a dataset of slices of the input Parquet file; each actor builds one
  `BatchCurator` (the same per-document blocks as the local backend), reads its slices itself and returns
  one compact state row per document (verdict, text digest, MinHash signature, eval n-grams). The cleaned
  texts go to scratch Parquet files next to the output, which must be storage every node sees.
- decontamination: only documents containing an eval n-gram carry any; they are few, and their n-grams
  are counted and judged on the driver.
- exact dedup: `groupby` on the digest; each group keeps its first document in input order.
- near dedup: each remaining document's LSH band keys become (band, key) rows, `groupby` on them yields the
  candidate pairs bucket by bucket (the rules of `dapt.data.near_dup.bucket_pairs`); only the signatures of
  paired documents come to the driver, which verifies and clusters them exactly as the local backend does.
- write: the driver streams the scratch files in input order with the verdicts.

Resumable like the local backend: each slice's cleaned texts, state rows and marker (last, naming the slice's
documents by a hash of their Arrow bytes) are written to its part in the scratch folder, which outlives a killed run;
run again with the same settings, the map step reads the finished parts' rows back instead of curating them again.

Rows carry their position in the input, and every reduction orders by it, so the kept documents, the
ledger and the counts equal the local backend's (tests/data/test_curate_ray.py checks it on a local Ray).
The driver holds one verdict slot per document (8 bytes) and the rows of the dropped ones, never text.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from dapt.data.curate import Decontaminator, NearDedup
from dapt.data.documents import DOCUMENT_SCHEMA, stream_parquet
from dapt.data.executor import (
    BatchCurator,
    ScratchPart,
    Verdict,
    batch_fingerprint,
    corpus_stats,
    near_dup_finder,
    write_outputs,
    write_replacing,
)
from dapt.data.near_dup import PRIME, band_keys, bucket_pairs
from dapt.errors import ConfigError

STATE_SCHEMA = pa.schema(
    [
        ("row", pa.int64()),
        ("id", pa.string()),
        ("block", pa.string()),  # null while the document is kept
        ("reason", pa.string()),
        ("detail", pa.string()),
        ("digest", pa.binary()),  # null for documents a per-document block dropped
        ("signature", pa.binary()),  # num_perm little-endian uint32, or null
        ("kept_chars", pa.int64()),
        ("eval_ngrams", pa.list_(pa.int32())),  # null when the document contains none
        ("batch_stats", pa.string()),  # JSON of the slice's counters, on its first row only
    ]
)


def _import_ray():
    try:
        import ray
        import ray.data
    except ImportError as error:
        raise ConfigError(
            "curate.backend: 'ray' needs Ray Data, which is not installed; install the extra with "
            "pip install 'dapt-lm[ray]' (or set curate.backend: local)"
        ) from error
    return ray


class _CurateSlices:
    """Ray Data actor: curates slices (row group, first row, rows) of one Parquet file into state rows."""

    def __init__(
        self, source: str, scratch: str, options: Mapping[str, Any], eval_ngrams: Sequence[tuple[str, ...]]
    ) -> None:
        self.file = stream_parquet(source)
        self.scratch = Path(scratch)
        self.curator = BatchCurator(options, [tuple(gram) for gram in eval_ngrams])
        self._row_group: tuple[int, pa.Table] | None = None  # the last one read: slices of one come together

    def _slice(self, row_group: int, start: int, rows: int) -> pa.RecordBatch:
        if self._row_group is None or self._row_group[0] != row_group:
            table = self.file.read_row_group(row_group, columns=DOCUMENT_SCHEMA.names)
            self._row_group = (row_group, table.select(DOCUMENT_SCHEMA.names).cast(DOCUMENT_SCHEMA))
        return self._row_group[1].slice(start, rows).combine_chunks().to_batches()[0]

    def __call__(self, slices: pa.Table) -> pa.Table:
        tables = []
        for item in slices.to_pylist():
            batch = self._slice(item["row_group"], item["start"], item["rows"])
            tables.append(self._curated(batch, ScratchPart(self.scratch, item["part"]), item["first_row"]))
        return pa.concat_tables(tables) if tables else STATE_SCHEMA.empty_table()

    def _curated(self, batch: pa.RecordBatch, part: ScratchPart, first_row: int) -> pa.Table:
        """The slice's state rows: read back when an earlier, killed run finished this part from the same documents
        (its marker names them), else curated, with the cleaned texts, the state and the marker (last) written
        under temporary names and renamed, as the local backend's parts are."""
        fingerprint = batch_fingerprint(batch)
        if part.finished(fingerprint) is not None:
            return pq.read_table(part.file(RAY_STATE_SUFFIX), schema=STATE_SCHEMA)
        texts = part.file(".parquet.tmp")
        state = self.curator(batch, texts)
        os.replace(texts, part.texts)
        table = _state_table(first_row, state)
        write_replacing(part.file(RAY_STATE_SUFFIX), lambda path: pq.write_table(table, path))
        write_replacing(part.marker, lambda path: path.write_text(json.dumps({"fingerprint": fingerprint})))
        return table


# A Ray part's state rows (STATE_SCHEMA) in the scratch folder, next to its cleaned texts and its marker: a killed
# run, run again, reads the finished parts' rows back instead of curating their documents again.
RAY_STATE_SUFFIX = ".ray-state.parquet"


def _state_table(first_row: int, state) -> pa.Table:
    n = len(state.ids)
    survivors = [i for i, verdict in enumerate(state.verdicts) if verdict is None]
    digests: list[bytes | None] = [None] * n
    signatures: list[bytes | None] = [None] * n
    kept_chars: list[int | None] = [None] * n
    for position, i in enumerate(survivors):
        digests[i] = state.digests[position]
        signatures[i] = state.signatures[position].astype("<u4").tobytes()
        kept_chars[i] = state.kept_chars[position]
    batch_stats = json.dumps(
        {"chars_in": state.chars_in, "pii_replaced": dict(state.pii_replaced), "pii_changed": state.pii_changed}
    )
    return pa.table(
        {
            "row": pa.array(np.arange(first_row, first_row + n), pa.int64()),
            "id": state.ids,
            "block": [v[0] if v else None for v in state.verdicts],
            "reason": [v[1] if v else None for v in state.verdicts],
            "detail": [v[2] if v else None for v in state.verdicts],
            "digest": digests,
            "signature": signatures,
            "kept_chars": kept_chars,
            "eval_ngrams": [list(state.eval_ngrams[i]) if i in state.eval_ngrams else None for i in range(n)],
            "batch_stats": [batch_stats] + [None] * (n - 1),
        },
        schema=STATE_SCHEMA,
    )


def _collect(ray, dataset) -> pa.Table:
    """A (small) dataset as one Arrow table on the driver."""
    tables = [table for table in ray.get(dataset.to_arrow_refs()) if table.num_rows]
    return pa.concat_tables(tables) if tables else pa.table({})


def _rows_in(table: pa.Table, rows: set[int] | np.ndarray) -> pa.Table:
    return table.filter(pc.is_in(table.column("row"), value_set=pa.array(sorted(rows), pa.int64())))


def _first_of_each_digest(group: pa.Table) -> pa.Table:
    """Exact dedup in one digest group: the rows after the first in input order name the first one's id."""
    group = group.sort_by("row")
    kept_id = group.column("id")[0].as_py()
    return pa.table({"row": group.column("row")[1:], "kept_id": pa.array([kept_id] * (group.num_rows - 1))})


def _band_rows(bands: int):
    def band_rows(table: pa.Table) -> pa.Table:
        signatures = np.frombuffer(b"".join(table.column("signature").to_pylist()), dtype="<u4")
        signatures = signatures.reshape(table.num_rows, -1).astype(np.uint32)
        has_shingles = signatures[:, 0] != PRIME  # documents without shingles are never paired
        keys = band_keys(signatures[has_shingles], bands)
        rows = table.column("row").to_numpy()[has_shingles]
        return pa.table(
            {
                "band": np.tile(np.arange(bands, dtype=np.int64), len(rows)),
                "key": keys.reshape(-1),
                "row": np.repeat(rows, bands),
            }
        )

    return band_rows


def _bucket_pairs(group: pa.Table) -> pa.Table:
    left, right = bucket_pairs(np.sort(group.column("row").to_numpy()))
    return pa.table({"left": pa.array(left, pa.int64()), "right": pa.array(right, pa.int64())})


def curate_with_ray(
    source: Path,
    documents_out: Path,
    ledger_out: Path,
    scratch: Path,
    *,
    options: Mapping[str, Any],
    decontaminator: Decontaminator,
    contaminated: bool,
    earlier_rejections: Path | None,
) -> dict[str, Any]:
    """`dapt.data.executor.curate_to_files` on Ray; `source` is a Parquet document file.

    A map step runs the per-document blocks on slices of the file (each writes its kept documents to `scratch`);
    the driver then gathers the verdicts, row by row, of decontamination, exact and near dedup, and the writer
    keeps the documents without one."""
    ray = _import_ray()
    slices = _slices(pq.ParquetFile(source), options["batch_size"])
    n_docs = sum(item["rows"] for item in slices)
    workers = options["workers"] or max(1, int(ray.cluster_resources().get("CPU", 1)))
    eval_ngrams = decontaminator.eval_ngrams if contaminated else []
    partitions = 2 * workers  # of the shuffles; Ray's default (200) is meant for far bigger inputs than a worker's
    state = (
        ray.data.from_items(slices, override_num_blocks=max(1, min(len(slices), 4 * workers)))
        .map_batches(
            _CurateSlices,
            batch_size=1,
            batch_format="pyarrow",
            fn_constructor_kwargs={
                "source": str(source),
                "scratch": str(scratch),
                "options": dict(options),
                "eval_ngrams": eval_ngrams,
            },
            concurrency=max(1, min(workers, len(slices))),
        )
        .materialize()
    )

    verdicts: list[Verdict] = [None] * n_docs
    small, text_stats = _map_step_verdicts(ray, state, verdicts)
    if contaminated and small.num_rows:
        _decontaminate(small, decontaminator, eval_ngrams, options["decontaminate_max_doc_frequency"], verdicts)
    survivors = _survivors(state, verdicts, ["row", "id", "digest", "signature"])
    if options["exact_dedup"]:
        groups = survivors.groupby("digest", num_partitions=partitions).map_groups(
            _first_of_each_digest, batch_format="pyarrow"
        )
        duplicates = _collect(ray, groups)
        for row in duplicates.to_pylist() if duplicates.num_rows else []:
            verdicts[row["row"]] = ("exact_dedup", "exact_duplicate", f"same text as {row['kept_id']}")
        survivors = _survivors(state, verdicts, ["row", "id", "signature"])
    near = NearDedup(near_dup_finder(options))
    if options["near_dedup"]:
        _near_duplicates(ray, survivors, near, options["near_dedup_bands"], partitions, verdicts)

    chars_kept = _kept_chars(ray, state, verdicts)
    parts = [scratch / f"part-{item['part']:06d}.parquet" for item in slices]
    verdicts_by_part = (verdicts[item["first_row"] : item["first_row"] + item["rows"]] for item in slices)
    counts = write_outputs(parts, verdicts_by_part, documents_out, ledger_out, earlier_rejections)
    return corpus_stats(
        counts,
        options,
        decontaminator,
        contaminated,
        chars_kept=chars_kept,
        near=near,
        **text_stats,
    )


def _slices(parquet: pq.ParquetFile, batch_size: int) -> list[dict[str, int]]:
    """The map step's work items: up to `batch_size` rows of one row group each, with their first row in the file."""
    slices, first_row = [], 0
    for row_group in range(parquet.num_row_groups):
        group_rows = parquet.metadata.row_group(row_group).num_rows
        for start in range(0, group_rows, batch_size):
            rows = min(batch_size, group_rows - start)
            slices.append(
                {"part": len(slices), "row_group": row_group, "start": start, "rows": rows, "first_row": first_row}
            )
            first_row += rows
    return slices


def _map_step_verdicts(ray: Any, state: Any, verdicts: list[Verdict]) -> tuple[pa.Table, dict[str, Any]]:
    """The map step's rows that matter on the driver (dropped, holding eval n-grams, or carrying a batch's counters),
    sorted by row; the per-document blocks' verdicts go into `verdicts`. Also the counters: characters read, PII
    replacements and documents PII scrubbing changed."""
    small = _collect(
        ray,
        state.select_columns(["row", "id", "block", "reason", "detail", "eval_ngrams", "batch_stats"]).map_batches(
            lambda t: t.filter(
                pc.or_(pc.or_(pc.is_valid(t["block"]), pc.is_valid(t["eval_ngrams"])), pc.is_valid(t["batch_stats"]))
            ),
            batch_format="pyarrow",
        ),
    )
    chars_in, pii_replaced, pii_changed = 0, Counter(), 0
    if small.num_rows:
        small = small.sort_by("row")
        for stats_text in small.column("batch_stats").drop_null().to_pylist():
            batch_stats = json.loads(stats_text)
            chars_in += batch_stats["chars_in"]
            pii_replaced.update(batch_stats["pii_replaced"])
            pii_changed += batch_stats["pii_changed"]
        for row in small.filter(pc.is_valid(small["block"])).to_pylist():
            verdicts[row["row"]] = (row["block"], row["reason"], row["detail"])
    return small, {"chars_in": chars_in, "pii_replaced": pii_replaced, "pii_changed": pii_changed}


def _decontaminate(
    small: pa.Table,
    decontaminator: Decontaminator,
    eval_ngrams: list[Any],
    max_doc_frequency: int,
    verdicts: list[Verdict],
) -> None:
    """Decontamination on the driver: the documents with eval n-grams, counted (dropped ones too) and judged."""
    with_ngrams = small.filter(pc.is_valid(small["eval_ngrams"])).to_pylist()
    if max_doc_frequency > 0:
        frequency = Counter(gram for row in with_ngrams for gram in row["eval_ngrams"])
        decontaminator.ignore_frequent(
            Counter({eval_ngrams[gram]: count for gram, count in frequency.items()}), max_doc_frequency
        )
    for row in with_ngrams:
        if verdicts[row["row"]] is None:
            rejection = decontaminator.judge_shared(eval_ngrams[gram] for gram in row["eval_ngrams"])
            if rejection is not None:
                verdicts[row["row"]] = ("decontaminate", rejection.reason, rejection.detail)


def _survivors(state: Any, verdicts: list[Verdict], columns: list[str]) -> Any:
    """The map step's rows (those columns) without a verdict yet, as a lazy Ray dataset."""
    decided = pa.array([row for row, verdict in enumerate(verdicts) if verdict is not None], pa.int64())

    def still_kept(table: pa.Table) -> pa.Table:
        return table.filter(pc.invert(pc.is_in(table["row"], value_set=decided)))

    return state.select_columns(columns).map_batches(still_kept, batch_format="pyarrow")


def _near_duplicates(
    ray: Any, survivors: Any, near: NearDedup, bands: int, partitions: int, verdicts: list[Verdict]
) -> None:
    """Near dedup: candidate pairs from LSH buckets shuffled by (band, key), judged on the driver by `near`."""
    n_docs = len(verdicts)
    pairs = _collect(
        ray,
        survivors.map_batches(_band_rows(bands), batch_format="pyarrow")
        .groupby(["band", "key"], num_partitions=partitions)
        .map_groups(_bucket_pairs, batch_format="pyarrow"),
    )
    if not pairs.num_rows:
        return
    codes = np.unique(pairs.column("left").to_numpy() * n_docs + pairs.column("right").to_numpy())
    left, right = codes // n_docs, codes % n_docs
    involved = np.unique(np.concatenate((left, right)))
    paired = _collect(ray, survivors.map_batches(lambda t: _rows_in(t, involved), batch_format="pyarrow"))
    paired = paired.sort_by("row")
    signatures = np.frombuffer(b"".join(paired.column("signature").to_pylist()), dtype="<u4")
    signatures = signatures.reshape(paired.num_rows, -1).astype(np.uint32)
    # Positions among the paired documents keep the input order, so clusters and their first
    # documents are those the local backend finds among all survivors.
    candidates = np.stack((np.searchsorted(involved, left), np.searchsorted(involved, right)), axis=1)
    rejections = near.judge_signatures(paired.column("id").to_pylist(), signatures, candidates)
    for row, rejection in zip(involved.tolist(), rejections, strict=True):
        if rejection is not None:
            verdicts[row] = (near.name, rejection.reason, rejection.detail)


def _kept_chars(ray: Any, state: Any, verdicts: list[Verdict]) -> int:
    """Characters of the documents kept in the end."""
    kept_chars = _collect(
        ray,
        state.select_columns(["row", "kept_chars"]).map_batches(
            lambda t: t.filter(pc.is_valid(t["kept_chars"])), batch_format="pyarrow"
        ),
    )
    if not kept_chars.num_rows:
        return 0
    return sum(
        chars
        for row, chars in zip(kept_chars["row"].to_pylist(), kept_chars["kept_chars"].to_pylist(), strict=True)
        if verdicts[row] is None
    )
