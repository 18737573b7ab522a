"""Two processes (gloo, CPU) follow the same loss curve as one process with the same global batch."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
SCRIPT = Path(__file__).parent / "ddp_train.py"


def losses(metrics_file: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in metrics_file.read_text().splitlines() if "loss" in line]


def test_two_processes_match_one(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1"}
    single = tmp_path / "single.jsonl"
    subprocess.run([sys.executable, str(SCRIPT), str(single)], check=True, env=env, timeout=300)
    double = tmp_path / "double.jsonl"
    launched = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",  # rendezvous on a free local port chosen by torchrun itself: no port race
            "--nproc_per_node",
            "2",
            str(SCRIPT),
            str(double),
        ],
        env=env,
        timeout=300,
        capture_output=True,
        text=True,
    )
    assert launched.returncode == 0, f"torchrun failed:\n{launched.stdout[-4000:]}\n{launched.stderr[-4000:]}"
    assert "Traceback" not in launched.stderr and "terminate called" not in launched.stderr
    one, two = losses(single), losses(double)
    assert len(one) == len(two) == 8
    assert one[-1] < one[0], "the tiny model learns"
    assert two == pytest.approx(one, rel=1e-4, abs=1e-5)
    units = [json.loads(line)["units"] for line in double.read_text().splitlines() if "units" in line]
    assert units[-1] == 8 * 8 * 32, "tokens are counted over both processes"
