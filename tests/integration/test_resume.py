"""Kill continued pretraining with SIGKILL at random steps, resume, and land on the same weights."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

pytestmark = pytest.mark.integration
TINY = Path(__file__).parent / "tiny.yaml"
# Checkpoint every 2 steps, no early stop, 20 steps: room for several kills.
SETTINGS = [
    "--set",
    "pretrain.max_steps=20",
    "--set",
    "pretrain.checkpoint_every=2",
    "--set",
    "pretrain.eval_every=10",
    "--set",
    "pretrain.early_stopping.patience=100",
]

# Three training sources with their own weights (pretrain.mix): a second replay source next to tiny.yaml's.
THREE_SOURCES = [
    "--set",
    "sources.3={name: email-docstrings, role: replay, kind: python_docstrings, package: email, min_chars: 100}",
    "--set",
    "pretrain.mix={xml-docstrings: 2, json-docstrings: 1, email-docstrings: 1}",
]


def pretrain(out: Path, extra: list[str]) -> subprocess.Popen:
    command = [sys.executable, "-m", "dapt.cli", "pretrain", str(TINY), "--out", str(out), *SETTINGS, *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # same thread count in every process: same float sums
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)


def logged_step(out: Path) -> int:
    metrics = out / "pretrain" / "metrics.jsonl"
    if not metrics.exists():
        return -1
    lines = [json.loads(line) for line in metrics.read_text().splitlines() if line.endswith("}")]
    return max((record["step"] for record in lines), default=-1)


@pytest.mark.parametrize("extra", [[], THREE_SOURCES], ids=["domain+replay", "three-source-mix"])
def test_sigkilled_runs_resume_to_the_weights_of_an_uninterrupted_run(tmp_path, extra):
    reference = tmp_path / "reference"
    assert pretrain(reference, extra).wait(timeout=300) == 0

    interrupted = tmp_path / "interrupted"
    rng = random.Random(7)
    kills = 0
    for target in sorted(rng.sample(range(3, 18), 3)):
        process = pretrain(interrupted, extra)
        deadline = time.time() + 120
        while process.poll() is None and logged_step(interrupted) < target and time.time() < deadline:
            time.sleep(0.005)
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            process.wait()
            kills += 1
    assert kills >= 2, "the run finished before it could be killed; make it longer"
    assert not (interrupted / "pretrain" / "manifest.json").exists()
    assert pretrain(interrupted, extra).wait(timeout=300) == 0

    finished = json.loads((interrupted / "pretrain" / "manifest.json").read_text())
    assert finished["metrics"]["resumed"] is not None and finished["metrics"]["steps"] == 20
    for folder in ("model", "checkpoints/step-000020"):
        expected = load_file(reference / "pretrain" / folder / "model.safetensors")
        got = load_file(interrupted / "pretrain" / folder / "model.safetensors")
        assert expected.keys() == got.keys()
        for name in expected:
            assert (expected[name] - got[name]).abs().max().item() <= 1e-6, name
    records = [json.loads(line) for line in (interrupted / "pretrain" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == list(range(1, 21)), "every step logged once, in order"
    drawn = finished["metrics"]["windows_drawn"]
    assert drawn == json.loads((reference / "pretrain" / "manifest.json").read_text())["metrics"]["windows_drawn"]
    if extra:
        assert set(drawn) == {"xml-docstrings", "json-docstrings", "email-docstrings"}


def test_an_interrupted_run_is_not_discarded_for_a_changed_config(tmp_path):
    out = tmp_path / "run"
    process = pretrain(out, [])
    while process.poll() is None and logged_step(out) < 3:
        time.sleep(0.005)
    process.send_signal(signal.SIGTERM)  # stops after the step under way, with a checkpoint of it
    assert process.wait(timeout=120) == 128 + signal.SIGTERM
    interrupted = (out / "pretrain").resolve()  # .artifacts/pretrain-<id>, which the stage's name points at
    checkpoints = sorted((interrupted / "checkpoints").glob("step-*"))
    assert checkpoints

    # another config trains under its own id; the interrupted run is kept, and the output says how to resume it
    command = [sys.executable, "-m", "dapt.cli", "pretrain", str(TINY), "--out", str(out), *SETTINGS]
    another = ["--set", "pretrain.lr=0.0123", "--set", "pretrain.max_steps=2"]  # 2 steps: only its id matters here
    changed = subprocess.run([*command, *another], capture_output=True, text=True, timeout=300)
    assert changed.returncode == 0, changed.stderr[-3000:]
    assert f"the earlier, unfinished attempt stays in {interrupted}" in changed.stderr
    assert "pretrain.lr: " in changed.stderr and "→ 0.0123" in changed.stderr
    assert (out / "pretrain").resolve() != interrupted
    assert sorted((interrupted / "checkpoints").glob("step-*")) == checkpoints, "nothing was deleted"

    resumed = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming an interrupted run" in resumed.stderr and (out / "pretrain").resolve() == interrupted
