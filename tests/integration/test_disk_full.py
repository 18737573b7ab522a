"""A full disk: one clear error (exit 2) naming the device, the path and the free space, and a re-run resumes.

The real thing runs where a small tmpfs can be mounted (root on Linux); the same path is tested everywhere by
making Arrow's Parquet writer fail at its real call site with the error a full disk gives it.
"""

import errno
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import save_file

from dapt.artifacts import read_artifact
from dapt.cli import main
from dapt.errors import disk_problem

pytestmark = pytest.mark.integration
TINY = Path(__file__).parent / "tiny.yaml"


@pytest.fixture
def tmpfs(tmp_path):
    """A mounted tmpfs (4 MB to start; `resize(bytes)` remounts it), or a skip where mounting is not allowed."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root on Linux); test_a_full_disk_under_ingest covers the path")

    def resize(size: int) -> None:
        subprocess.run(["mount", "-o", f"remount,size={size}", str(mount)], check=True)

    yield mount, resize
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_the_writers_errors_on_a_full_disk_are_recognised(tmpfs):
    mount, _ = tmpfs
    (mount / "filler").write_bytes(b"\0" * (4 * 1024 * 1024 - 64 * 1024))  # 64 KB left
    big = torch.zeros(100_000)
    writers = {
        "torch.save": lambda: torch.save({"x": big}, mount / "a.pt"),
        "safetensors": lambda: save_file({"x": big}, mount / "b.safetensors"),
        "parquet": lambda: pq.write_table(
            pa.table({"t": ["x" * 1000] * 1000}), mount / "c.parquet", compression="none"
        ),
        "numpy": lambda: np.save(mount / "d.npy", np.zeros(100_000)),
        "open": lambda: (mount / "e.txt").write_text("x" * 200_000),
    }
    for writer, write in writers.items():
        with pytest.raises(Exception) as error:
            write()
        assert disk_problem(error.value) == "no space left", (writer, repr(error.value))
    assert disk_problem(ValueError("unexpected pos in a list")) is None


def test_pretraining_on_a_full_disk_stops_with_one_clear_error_and_resumes_once_there_is_room(tmp_path, tmpfs, capsys):
    mount, resize = tmpfs
    upstream = tmp_path / "upstream"
    assert main(["tokenize", str(TINY), "--out", str(upstream)]) == 0
    run = mount / "run"
    shutil.copytree(upstream, run, symlinks=True)
    resize(shutil.disk_usage(mount).used + 200 * 1024)  # room for the metrics, not for a checkpoint
    capsys.readouterr()
    assert main(["pretrain", str(TINY), "--out", str(run)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "warning: pretraining may need" in err, "said before it started"
    message = err.split("error: ")[-1]  # after the progress bar's last line
    assert message.startswith(f"no space left on tmpfs (mounted at {mount}) while writing {run / 'pretrain'}")
    assert "(needed ~" in message and " MB, free 0." in message and "finished stages are kept" in message
    assert "Free space and run the same command again to run pretrain again (no checkpoint" in message
    assert read_artifact(run / "pretrain") is None, "nothing marked finished"
    assert all(read_artifact(run / stage) is not None for stage in ("ingest", "curate", "tokenize"))

    resize(64 * 1024 * 1024)
    assert main(["pretrain", str(TINY), "--out", str(run)]) == 0
    assert "resuming an interrupted run" in capsys.readouterr().err
    assert read_artifact(run / "pretrain") is not None


def test_a_full_disk_under_ingest_is_one_clear_error(tmp_path, monkeypatch, capsys):
    """Arrow's Parquet writer fails at its real call site as it does on a full disk (OSError errno 28)."""

    def full(self, batch):
        raise OSError(errno.ENOSPC, "Error writing bytes to file. Detail: [errno 28] No space left on device")

    monkeypatch.setattr(pq.ParquetWriter, "write_batch", full)
    out = tmp_path / "run"
    assert main(["ingest", str(TINY), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "error: no space left on " in err and f"while writing {out / 'ingest'} (free " in err
    assert "run the same command again to run ingest again (it starts over)" in err
    assert not list(out.rglob("manifest.json"))
