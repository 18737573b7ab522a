"""The Ray backend on a real local Ray runtime: the same kept documents, ledger and counts as the local one."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest

from dapt.data.curate import curation_options
from dapt.data.executor import curate_documents, curate_to_files
from helpers.corpora import mixed_corpus

pytest.importorskip("ray")


def test_ray_backend_equals_the_local_backend(local_ray, tmp_path) -> None:
    documents, contamination = mixed_corpus(120)
    options = {"decontaminate_max_doc_frequency": 8, "batch_size": 16}
    local = curate_documents(documents, contamination=contamination, workers=1, **options)
    source = tmp_path / "in.parquet"
    pq.write_table(documents, source, row_group_size=50)  # slices cut row groups: 16 + 16 + 16 + 2 rows
    out_documents, out_ledger = tmp_path / "documents.parquet", tmp_path / "ledger.parquet"
    stats = curate_to_files(
        source,
        out_documents,
        out_ledger,
        options=curation_options(backend="ray", workers=2, **options),
        contamination=contamination,
    )
    assert set(local.stats["dropped_by_reason"]) >= {"exact_duplicate", "near_duplicate", "contaminated"}
    assert pq.read_table(out_documents).equals(local.kept)
    assert pq.read_table(out_ledger).select(local.ledger.column_names).equals(local.ledger)
    assert stats == local.stats
