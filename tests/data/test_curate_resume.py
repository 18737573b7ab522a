"""A SIGKILLed curate, run again, continues after its finished batches and ends with an uninterrupted run's output."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import dapt.data.executor as executor
from dapt.data.curate import curation_options
from dapt.data.executor import SCRATCH_NAME, curate_to_files
from helpers.corpora import mixed_corpus

# Curates in one process and SIGKILLs itself at a chosen point: in the map step while part KILL_AT is being
# written (its texts renamed into place, its state and marker not yet), or in the write step once the first part
# of the outputs is written.
KILLED_CURATE = """
import json, os, signal, sys
from pathlib import Path

import dapt.data.executor as executor
from dapt.data.curate import curation_options

source, out, where, kill_at, arguments = sys.argv[1], Path(sys.argv[2]), sys.argv[3], int(sys.argv[4]), sys.argv[5]
settings, contamination = json.loads(arguments)
options = curation_options(**settings)
write_replacing, write_table = executor.write_replacing, executor.pq.ParquetWriter.write_table

def write_replacing_then_die(path, write):
    if where == "map" and path.name == f"part-{kill_at:06d}.state.parquet":
        os.kill(os.getpid(), signal.SIGKILL)
    write_replacing(path, write)

def write_table_then_die(self, table, *args, **kwargs):
    write_table(self, table, *args, **kwargs)
    if where == "write" and str(self.where).endswith("documents.parquet"):
        os.kill(os.getpid(), signal.SIGKILL)

executor.write_replacing = write_replacing_then_die
executor.pq.ParquetWriter.write_table = write_table_then_die
executor.curate_to_files(
    source, out / "documents.parquet", out / "ledger.parquet", options=options, contamination=contamination
)
"""


@pytest.mark.parametrize("where", ["map", "write"])
def test_a_killed_curate_resumes_from_its_finished_batches(tmp_path, monkeypatch, where) -> None:
    documents, contamination = mixed_corpus(120)
    source = tmp_path / "in.parquet"
    pq.write_table(documents, source)
    settings = {"workers": 1, "batch_size": 10, "decontaminate_max_doc_frequency": 8}  # 12 batches
    options = curation_options(**settings)
    whole = tmp_path / "uninterrupted"
    whole.mkdir()
    expected = curate_to_files(
        source, whole / "documents.parquet", whole / "ledger.parquet", options=options, contamination=contamination
    )

    out = tmp_path / "killed"
    out.mkdir()
    kill_at = 5
    killed = subprocess.run(
        [sys.executable, "-c", KILLED_CURATE, str(source), str(out), where, str(kill_at)]
        + [json.dumps([settings, contamination])],
        capture_output=True,
        text=True,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    finished = sorted(path.name for path in (out / SCRATCH_NAME).glob("*.done"))
    assert len(finished) == (kill_at if where == "map" else 12)
    if where == "map":  # the part cut short left its texts, which the run again must not take as finished
        assert (out / SCRATCH_NAME / f"part-{kill_at:06d}.parquet").is_file()

    curated, curate_part = [], executor.curate_part
    monkeypatch.setattr(executor, "curate_part", lambda *args: curated.append(args[2].index) or curate_part(*args))
    messages: list[str] = []
    stats = curate_to_files(
        source,
        out / "documents.parquet",
        out / "ledger.parquet",
        options=options,
        contamination=contamination,
        log=messages.append,
    )
    # only the batches without a marker were curated again
    assert curated == list(range(len(finished), 12))
    assert messages == [f"resumed: {len(finished)} of 12 batches were finished by an earlier run, not curated again"]
    assert pq.read_table(out / "documents.parquet").equals(pq.read_table(whole / "documents.parquet"))
    assert pq.read_table(out / "ledger.parquet").equals(pq.read_table(whole / "ledger.parquet"))
    assert stats == expected
    assert not (out / SCRATCH_NAME).exists()


def test_parts_of_other_settings_or_documents_are_made_again(tmp_path, monkeypatch) -> None:
    documents, _ = mixed_corpus(40)
    source = tmp_path / "in.parquet"
    curated, curate_part = [], executor.curate_part
    monkeypatch.setattr(executor, "curate_part", lambda *args: curated.append(args[2].index) or curate_part(*args))

    class Interrupted(Exception):
        pass

    def interrupted_write(*args) -> None:
        raise Interrupted

    def curate_and_interrupt(documents, **options) -> list[int]:
        """Curate (4 batches) up to the write step; the indices of the batches curated."""
        pq.write_table(documents, source)
        curated.clear()
        with monkeypatch.context() as patch, pytest.raises(Interrupted):
            patch.setattr(executor, "write_outputs", interrupted_write)
            curate_to_files(
                source,
                tmp_path / "d.parquet",
                tmp_path / "l.parquet",
                options=curation_options(batch_size=10, **options),
            )
        return list(curated)

    assert curate_and_interrupt(documents, workers=1) == [0, 1, 2, 3]
    assert curate_and_interrupt(documents, workers=1, min_words=10) == [0, 1, 2, 3]  # other settings
    assert curate_and_interrupt(documents, workers=2, min_words=10) == []  # the number of workers changes nothing
    texts = documents.column("text").to_pylist()
    texts[25] = "Another text. " + texts[25]
    changed = documents.set_column(1, "text", pa.array(texts, pa.string()))
    assert curate_and_interrupt(changed, workers=1, min_words=10) == [2]  # the batch whose documents changed


def test_the_ray_backends_map_step_reads_finished_parts_back(tmp_path) -> None:
    # what a Ray actor does with each slice (dapt.data.ray_backend), here without a Ray runtime: a killed run's
    # finished parts are read back, the others curated again, and the state rows are those of an uninterrupted run
    from dapt.data.ray_backend import RAY_STATE_SUFFIX, _CurateSlices, _slices

    documents, _ = mixed_corpus(120)
    source = tmp_path / "in.parquet"
    pq.write_table(documents, source, row_group_size=50)
    scratch = tmp_path / SCRATCH_NAME
    scratch.mkdir()
    options = curation_options(backend="ray", batch_size=16)
    slices = pa.Table.from_pylist(_slices(pq.ParquetFile(source), 16))
    uninterrupted = _CurateSlices(str(source), str(scratch), options, [])(slices)
    parts = sorted(scratch.glob(f"part-*{RAY_STATE_SUFFIX}"))
    assert len(parts) == 10  # row groups of 50, 50 and 20 rows, cut in slices of 16, 16, 16, 2 | ... | 16, 4
    for state in parts[1::2]:  # as if killed in the map step: the odd parts never finished
        state.with_name(state.name.replace(RAY_STATE_SUFFIX, ".done")).unlink()
    finished = {state: state.stat().st_mtime_ns for state in parts[0::2]}
    unfinished = {state: state.stat().st_mtime_ns for state in parts[1::2]}

    resumed = _CurateSlices(str(source), str(scratch), options, [])(slices)
    assert resumed.equals(uninterrupted)
    assert {state: state.stat().st_mtime_ns for state in finished} == finished, "read back, not curated again"
    assert all(state.stat().st_mtime_ns != mtime for state, mtime in unfinished.items()), "curated again"
