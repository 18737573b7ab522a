"""curate: clean the documents and keep an account of every one dropped (the rejection ledger).

The task test texts are passed in so that no document sharing a long n-gram with them reaches
pretraining: a model that saw the test set during pretraining would make the comparison dishonest.
"""

from __future__ import annotations

from typing import Any

import pyarrow.parquet as pq

from dapt.data.curate import curate_documents
from dapt.data.documents import read_documents
from dapt.pipeline import StageContext
from dapt.stages.tasks import read_examples


def run(context: StageContext) -> dict[str, Any]:
    documents = read_documents(context.inputs["corpus"].path / "documents.parquet")
    contamination = {
        artifact.manifest["config"]["task"]["name"]: [e["text"] for e in read_examples(artifact.path / "test.parquet")]
        for role, artifact in context.inputs.items()
        if role.startswith("task:")
    }
    options = dict(context.config["curate"])
    result = curate_documents(documents, **options, contamination=contamination)
    if result.kept.num_rows + result.ledger.num_rows != documents.num_rows:
        raise AssertionError("curate lost documents: kept + ledger != input")  # the ledger invariant
    pq.write_table(result.kept, context.out / "documents.parquet")
    pq.write_table(result.ledger, context.out / "rejection_ledger.parquet")
    stats = result.stats
    dropped = ", ".join(f"{reason} {n}" for reason, n in sorted(stats["dropped_by_reason"].items())) or "none"
    context.log(f"{stats['docs_in']} documents in, {stats['docs_kept']} kept; dropped: {dropped}")
    return stats
