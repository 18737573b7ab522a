"""`dapt tokenize` SIGKILLed midway and run again: the runner hands the unfinished stage back and it continues from
its finished parts (the parts themselves are compared with an uninterrupted run in tests/unit/test_tokenization.py)."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

TINY = Path(__file__).parent / "tiny.yaml"

# dapt's own command, with each batch slowed down so that the run can be killed while it tokenizes
SLOW_DAPT = textwrap.dedent(
    """
    import sys, time
    import dapt.data.tokenization as tokenization

    real = tokenization.BatchTokenizer.__call__

    def slow(self, batch, part):
        time.sleep(0.4)
        return real(self, batch, part)

    tokenization.BatchTokenizer.__call__ = slow
    from dapt.cli import main
    sys.exit(main(sys.argv[1:]))
    """
)


def test_a_killed_tokenize_stage_resumes_from_its_finished_parts(tmp_path):
    out = tmp_path / "run"
    settings = ["--set", "tokenize.batch_size=8", "--set", "tokenize.workers=1"]
    command = ["tokenize", str(TINY), "--out", str(out), *settings]
    script = tmp_path / "slow_dapt.py"
    script.write_text(SLOW_DAPT)
    process = subprocess.Popen([sys.executable, str(script), *command], stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while len(list(out.glob(".artifacts/tokenize-*/parts/part-???????"))) < 3:
        assert process.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    finished = len(list(out.glob(".artifacts/tokenize-*/parts/part-???????")))

    resumed = subprocess.run(
        [sys.executable, "-m", "dapt.cli", *command], capture_output=True, text=True, env={**os.environ}
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "tokenize: resuming an interrupted run" in resumed.stderr
    assert f"resuming: {finished} of " in resumed.stderr
    metrics = json.loads((out / "tokenize" / "manifest.json").read_text())["metrics"]
    assert metrics["parts_resumed"] == finished and metrics["parts"] > finished
    assert not (out / "tokenize" / "parts").exists()  # the parts are gone once the shards are whole
    assert metrics["splits"]["domain_train"]["tokens"] > 0
