"""pretrain.stages: a run SIGKILLed inside each of its two stages resumes to the losses, weights and data of an
uninterrupted one; the stages are recorded in the manifest and shown in the report."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

pytestmark = pytest.mark.integration
TINY = Path(__file__).parent / "tiny.yaml"

# main: 10 steps of tiny.yaml's windows with replay; anneal: 10 steps at twice the window, on the domain source and a
# little replay, the learning rate decayed linearly to zero. Checkpoints every 3 steps: a kill loses up to 2 steps
STAGES = [
    {"name": "main", "steps": 10, "schedule": "constant"},
    {
        "name": "anneal",
        "steps": 10,
        "mix": {"xml-docstrings": 4, "json-docstrings": 1},
        "seq_len": 128,
        "micro_batch_size": 2,
        "schedule": "linear",
        "min_lr_ratio": 0,
    },
]


def staged_pipeline(folder: Path) -> Path:
    raw = yaml.safe_load(TINY.read_text())
    del raw["pretrain"]["max_steps"]
    raw["pretrain"] |= {"stages": STAGES, "checkpoint_every": 3, "eval_every": 100, "early_stopping": {"patience": 50}}
    raw["tasks"] = []
    path = folder / "staged.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def pretrain(pipeline: Path, out: Path) -> subprocess.Popen:
    command = [sys.executable, "-m", "dapt.cli", "pretrain", str(pipeline), "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # same thread count in every process: same float sums
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)


def step_losses(out: Path) -> dict[int, float]:
    metrics = out / "pretrain" / "metrics.jsonl"
    if not metrics.exists():
        return {}
    records = [json.loads(line) for line in metrics.read_text().splitlines() if line.endswith("}")]
    return {record["step"]: record["loss"] for record in records if "loss" in record}


def test_a_run_killed_inside_each_stage_resumes_to_the_uninterrupted_run(tmp_path):
    pipeline = staged_pipeline(tmp_path)
    reference = tmp_path / "reference"
    assert pretrain(pipeline, reference).wait(timeout=300) == 0

    interrupted = tmp_path / "interrupted"
    killed_at = []
    for target in (4, 14):  # inside main (steps 1-10), inside anneal (steps 11-20)
        process = pretrain(pipeline, interrupted)
        deadline = time.time() + 120
        while process.poll() is None and max(step_losses(interrupted), default=0) < target and time.time() < deadline:
            time.sleep(0.005)
        assert process.poll() is None, "the run finished before it could be killed"
        process.send_signal(signal.SIGKILL)
        process.wait()
        killed_at.append(max(step_losses(interrupted)))
    assert 4 <= killed_at[0] < 10 and 14 <= killed_at[1] < 20, f"killed after steps {killed_at}: not inside each stage"
    assert not (interrupted / "pretrain" / "manifest.json").exists()
    assert pretrain(pipeline, interrupted).wait(timeout=300) == 0

    expected, got = step_losses(reference), step_losses(interrupted)
    assert list(got) == list(range(1, 21)), "every step logged once, in order"
    assert got == pytest.approx(expected, rel=1e-6, abs=1e-6), "the same loss at every step"
    for folder in ("model", "checkpoints/step-000020"):
        want = load_file(reference / "pretrain" / folder / "model.safetensors")
        have = load_file(interrupted / "pretrain" / folder / "model.safetensors")
        assert all((want[name] - have[name]).abs().max().item() <= 1e-6 for name in want), folder

    metrics = json.loads((interrupted / "pretrain" / "manifest.json").read_text())["metrics"]
    assert metrics["resumed"] is not None and metrics["steps"] == 20
    main, anneal = metrics["stages"]
    want_main, want_anneal = json.loads((reference / "pretrain" / "manifest.json").read_text())["metrics"]["stages"]
    assert (
        main["windows_drawn"] == want_main["windows_drawn"] and anneal["windows_drawn"] == want_anneal["windows_drawn"]
    )
    assert (main["first_step"], main["last_step"], anneal["first_step"], anneal["last_step"]) == (1, 10, 11, 20)
    assert set(main["windows_drawn"]) == {"domain_train", "replay_train"}
    assert sum(main["windows_drawn"].values()) == 10 * 4, "main: 4 windows a step"
    assert set(anneal["windows_drawn"]) == {"xml-docstrings", "json-docstrings"}
    assert sum(anneal["windows_drawn"].values()) == 10 * 2, "anneal: its own 2 windows a step"
    assert (main["tokens"], anneal["tokens"]) == (10 * 4 * 64, 10 * 2 * 128)
    assert main["lr"] == [pytest.approx(3e-3), pytest.approx(3e-3)], "tiny.yaml's 1 warmup step, then held"
    assert anneal["lr"] == [pytest.approx(3e-3), pytest.approx(3e-4)], "then decayed linearly towards zero"
    assert [e["step"] for e in metrics["evaluations"]] == [0, 10, 20], "each stage ends with an evaluation"
    assert main["end_evaluation"]["domain_val_loss"] == metrics["evaluations"][1]["domain_val_loss"]


def test_the_guard_and_early_stopping_watch_every_stage(tmp_path):
    from dapt.cli import main

    pipeline = staged_pipeline(tmp_path)
    guarded = ["--set", "pretrain.forgetting_budget=0.02", "--set", "pretrain.on_forgetting=remix"]
    stages = [
        "--set",
        "pretrain.stages.0.steps=3",
        "--set",
        "pretrain.stages.1.steps=3",
        "--set",
        "pretrain.eval_every=2",
    ]
    assert main(["pretrain", str(pipeline), "--out", str(tmp_path / "run"), *guarded, *stages]) == 0
    metrics = json.loads((tmp_path / "run" / "pretrain" / "manifest.json").read_text())["metrics"]
    steps = [evaluation["step"] for evaluation in metrics["evaluations"]]
    assert steps == [0, 2, 3, 4, 6], "every eval_every steps and at each stage's end"
    assert [check["step"] for check in metrics["forgetting"]["checks"]] == steps, "the guard judged every one"

    # an improvement of 10 nats is never met: early stopping ends the run at its first evaluation, inside main (the
    # same run folder: the corpus is reused)
    stop = ["--set", "pretrain.early_stopping.patience=1", "--set", "pretrain.early_stopping.min_delta=10"]
    assert main(["pretrain", str(pipeline), "--out", str(tmp_path / "run"), *stages, *stop]) == 0
    metrics = json.loads((tmp_path / "run" / "pretrain" / "manifest.json").read_text())["metrics"]
    assert metrics["stopped_early"] and metrics["steps"] == 2
    main_stage, anneal = metrics["stages"]
    assert (main_stage["steps"], main_stage["completed"], anneal["steps"]) == (2, False, 0)
    assert set(anneal["windows_drawn"].values()) == {0} and anneal["lr"] == [] and anneal["end_evaluation"] is None
