"""Two processes (gloo, CPU) follow the same loss curve as one process with the same global batch, replicated (DDP),
sharded (FSDP) or under DeepSpeed ZeRO, and the whole pipeline launched over two processes builds the DAPT base a
single process builds, also when killed midway and resumed."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from importlib.resources import files
from pathlib import Path

import psutil
import pytest
import torch
import yaml
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

pytestmark = pytest.mark.integration
SCRIPT = Path(__file__).parent / "ddp_train.py"


def records(metrics_file: Path, key: str) -> list[float]:
    return [json.loads(line)[key] for line in metrics_file.read_text().splitlines() if f'"{key}"' in line]


ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1"}
# --standalone: rendezvous on a free local port chosen by torchrun itself: no port race
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]


def layout(name: str) -> tuple[str, dict[str, str]]:
    """ddp_train.py's sharding argument and the environment for a layout: none (DDP), fsdp[-chunked], or
    zeroN[-offload][-bf16][-accumulate] (DeepSpeed ZeRO stage N, told as `accelerate launch` with a DeepSpeed config
    tells it; -offload: the optimizer state in host memory; -bf16: trained in bf16; -accumulate: 2 micro-batches
    a step). -chunked: the loss over 48 positions' logits at a time (dapt.model.chunked_loss), 3 chunks per process
    and step with the preset's byte-level vocabulary of 258 entries. -cp: both processes train every row, each on
    half of its tokens (context parallelism, dapt.model.context_parallel)."""
    if name.startswith("zero"):
        stage, *options = name.removeprefix("zero").split("-")
        deepspeed = {"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": stage}
        if "offload" in options:
            deepspeed["ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE"] = "cpu"
        if "bf16" in options:
            deepspeed["DDP_TRAIN_PRECISION"] = "bf16"
        if "accumulate" in options:
            deepspeed["DDP_TRAIN_MICRO_BATCHES"] = "2"
        return "none", {**ENV, **deepspeed}
    if name.endswith("-chunked"):
        return name.removesuffix("-chunked"), {**ENV, "DDP_TRAIN_MAX_LOGITS_BYTES": str(48 * 258 * 4)}
    if name.endswith("-cp"):
        return name.removesuffix("-cp"), {**ENV, "DDP_TRAIN_CONTEXT_PARALLEL": "2"}
    return name, ENV


@pytest.fixture(scope="module")
def single_process_metrics(tmp_path_factory) -> Path:
    single = tmp_path_factory.mktemp("single") / "single.jsonl"
    subprocess.run([sys.executable, str(SCRIPT), str(single)], check=True, env=ENV, timeout=300)
    return single


# ZeRO stage 1 is covered by the resume tests below (zero1-bf16*)
@pytest.mark.parametrize("sharding", ["none", "fsdp", "fsdp-chunked", "none-cp", "fsdp-cp", "zero2", "zero2-offload"])
def test_two_processes_match_one(tmp_path, single_process_metrics, sharding):
    double = tmp_path / "double.jsonl"
    argument, env = layout(sharding)
    launched = subprocess.run(
        [*TORCHRUN, str(SCRIPT), str(double), argument],
        env=env,
        timeout=300,
        capture_output=True,
        text=True,
    )
    assert launched.returncode == 0, f"torchrun failed:\n{launched.stdout[-4000:]}\n{launched.stderr[-4000:]}"
    assert "Traceback" not in launched.stderr and "terminate called" not in launched.stderr
    one, two = records(single_process_metrics, "loss"), records(double, "loss")
    assert len(one) == len(two) == 8
    assert one[-1] < one[0], "the tiny model learns"
    assert two == pytest.approx(one, rel=1e-4, abs=1e-5)
    # the norm clipped is the global one (over both halves of the batch, and over both shards with fsdp)
    norms = records(double, "grad_norm")
    assert max(norms) > 1.0, "clipping (at 1.0) was active"
    assert norms == pytest.approx(records(single_process_metrics, "grad_norm"), rel=1e-4)
    assert records(double, "units")[-1] == 8 * 8 * 32, "tokens are counted over both processes"
    shards = [json.loads((tmp_path / f"double.jsonl.rank{rank}.json").read_text()) for rank in (0, 1)]
    assert shards[0]["context_parallel"] == (2 if sharding.endswith("-cp") else 1)
    if sharding.startswith("fsdp"):
        assert [shard["held"] for shard in shards] == [shards[0]["of"] // 2] * 2, "each process holds half a layer"
        assert shards[0]["sharding"] == "fsdp"
    elif sharding.startswith("zero"):
        assert [shard["held"] for shard in shards] == [shards[0]["of"]] * 2, "ZeRO 1-2 keep the weights whole"
        assert shards[0]["sharding"] == f"deepspeed-{sharding[:5]}", "DeepSpeed's engine trained it"


# zero1-bf16-accumulate: DeepSpeed's BF16_Optimizer (chosen for ZeRO 1 in bf16 with fp32 gradient accumulation)
@pytest.mark.parametrize("sharding", ["zero2", "zero1-bf16", "zero1-bf16-accumulate"])
def test_a_deepspeed_run_resumes_exactly_with_only_the_main_process_reading_the_optimizer_state(
    tmp_path, single_process_metrics, sharding
):
    argument, env = layout(sharding)
    uninterrupted = single_process_metrics
    if "bf16" in sharding:  # bf16 weights, fp32 master weights in the optimizer state
        uninterrupted = tmp_path / "uninterrupted.jsonl"
        subprocess.run([*TORCHRUN, str(SCRIPT), str(uninterrupted), argument], env=env, timeout=300, check=True)
        assert records(uninterrupted, "loss") != records(single_process_metrics, "loss"), "trained in bf16"
    metrics = tmp_path / "resumed.jsonl"
    command = [*TORCHRUN, str(SCRIPT), str(metrics), argument, "crash-and-resume"]
    launched = subprocess.run(command, env=env, timeout=300, capture_output=True, text=True)
    assert launched.returncode == 0, f"torchrun failed:\n{launched.stdout[-4000:]}\n{launched.stderr[-4000:]}"
    # crashed in step 5, resumed from step 4 (weights, each process's partition of the moments and fp32 master
    # weights): the loss curve of a run that never stopped
    assert records(metrics, "loss") == pytest.approx(records(uninterrupted, "loss"), rel=1e-5, abs=1e-6)
    if "bf16" in sharding:  # the checkpoints (and so a DAPT base) hold the fp32 master weights, not the bf16 ones
        saved = load_file(tmp_path / "checkpoints" / "step-000008" / "model.safetensors")
        assert all(tensor.dtype == torch.float32 for tensor in saved.values())
        assert any(not torch.equal(tensor, tensor.bfloat16().float()) for tensor in saved.values())
    main, other = [json.loads((tmp_path / f"resumed.jsonl.rank{rank}.json").read_text())["reads"] for rank in (0, 1)]
    assert main == {"model.safetensors": 1, "training_state.pt": 1}
    # the other process got its partition from the main one; the weights are whole, it reads them itself
    assert other == {"model.safetensors": 1, "training_state.pt memory-mapped": 1}


def launch_failing(metrics: Path, sharding: str, fault: str) -> subprocess.CompletedProcess:
    """ddp_train.py over two processes with a `fault` that must stop it, within 120 s: no process waits forever."""
    argument, env = layout(sharding)
    command = [*TORCHRUN, str(SCRIPT), str(metrics), argument, fault]
    failed = subprocess.run(command, env=env, timeout=120, capture_output=True, text=True)
    assert failed.returncode != 0
    return failed


def test_a_sharded_run_resumes_exactly_with_only_the_main_process_reading_the_checkpoint(
    tmp_path, single_process_metrics
):
    metrics = tmp_path / "resumed.jsonl"
    command = [*TORCHRUN, str(SCRIPT), str(metrics), "fsdp", "crash-and-resume"]
    launched = subprocess.run(command, env=ENV, timeout=300, capture_output=True, text=True)
    assert launched.returncode == 0, f"torchrun failed:\n{launched.stdout[-4000:]}\n{launched.stderr[-4000:]}"
    # crashed in step 5, resumed from step 4: the loss curve of a run that never stopped
    assert records(metrics, "loss") == pytest.approx(records(single_process_metrics, "loss"), rel=1e-4, abs=1e-5)
    main, other = [json.loads((tmp_path / f"resumed.jsonl.rank{rank}.json").read_text())["reads"] for rank in (0, 1)]
    assert main == {"model.safetensors": 1, "training_state.pt": 1}
    # the other process got its shards from the main one: of training_state.pt it needs the scheduler and RNG
    # state only, memory-mapped (the optimizer moments in it are never touched)
    assert other == {"training_state.pt memory-mapped": 1}


def test_a_sharded_resume_from_a_checkpoint_of_another_model_stops_every_process(tmp_path):
    metrics = tmp_path / "deeper.jsonl"
    failed = launch_failing(metrics, "fsdp", "crash-and-resume-deeper")
    # each process checks the names in the file's header itself: both stop, neither waits for the other
    assert failed.stderr.count("the checkpoint does not match the model: 9 missing (model.layers.2.") == 2


@pytest.mark.parametrize("sharding", ["none", "fsdp", "zero2"])
def test_two_processes_accumulating_gradients_match_one(tmp_path, sharding):
    # replicated, the gradients are averaged over the processes once per step (after the second micro-batch);
    # under DeepSpeed, its engine is told which micro-batch ends the step
    single, double = tmp_path / "single.jsonl", tmp_path / "double.jsonl"
    subprocess.run([sys.executable, str(SCRIPT), str(single), "none", "accumulate"], check=True, env=ENV, timeout=300)
    argument, env = layout(sharding)
    command = [*TORCHRUN, str(SCRIPT), str(double), argument, "accumulate"]
    launched = subprocess.run(command, env=env, timeout=300, capture_output=True, text=True)
    assert launched.returncode == 0, launched.stderr[-3000:]
    assert records(double, "loss") == pytest.approx(records(single, "loss"), rel=1e-4, abs=1e-5)
    assert records(double, "grad_norm") == pytest.approx(records(single, "grad_norm"), rel=1e-4)
    assert records(double, "units")[-1] == 8 * 2 * 8 * 32, "two micro-batches of 8 rows per step"


@pytest.mark.parametrize("sharding", ["fsdp", "zero2"])
def test_a_nan_gradient_stops_every_sharded_process(tmp_path, sharding):
    metrics = tmp_path / "nan.jsonl"
    failed = launch_failing(metrics, sharding, "nan-gradient")
    # the norm over all shards is NaN on every process (DeepSpeed reports inf, and skips the step): each stops with
    # the message, none waits for the other
    bad = "inf" if sharding.startswith("zero") else "nan"
    assert failed.stderr.count(f"the gradient norm became {bad} at step 3; training stopped") == 2
    assert len(records(metrics, "loss")) == 2, "steps 1 and 2 were logged, 3 was not"


@pytest.mark.parametrize("sharding", ["none", "fsdp", "zero2"])
def test_a_nan_loss_on_one_process_stops_them_all(tmp_path, sharding):
    metrics = tmp_path / "nan.jsonl"
    failed = launch_failing(metrics, sharding, "nan-loss-rank-1")
    # the global loss is NaN on both: both stop with the message, neither waits for the other (timeout=120)
    assert failed.stderr.count("the loss became nan at step 3; training stopped") == 2
    assert len(records(metrics, "loss")) == 2, "steps 1 and 2 were logged, 3 was not"


TINY = Path(__file__).parent / "tiny.yaml"
# 30 steps, a checkpoint every 2 and no early stop: room to kill the two-process run midway.
CHECKPOINTS = [
    *("--set", "pretrain.max_steps=30", "--set", "pretrain.checkpoint_every=2"),
    *("--set", "pretrain.eval_every=10", "--set", "pretrain.early_stopping.patience=100"),
]
LAUNCH = [*TORCHRUN, "-m", "dapt.cli"]


def dapt(*args: str, processes: int = 1) -> subprocess.CompletedProcess:
    """The dapt command, alone or under torchrun; fails the test with both outputs if it fails."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [*LAUNCH, *args] if processes == 2 else [sys.executable, "-m", "dapt.cli", *args]
    done = subprocess.run(command, env=env, timeout=300, capture_output=True, text=True)
    assert done.returncode == 0, f"{' '.join(args)} failed:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    return done


def weights_difference(one: Path, other: Path) -> float:
    expected, got = load_file(one / "model.safetensors"), load_file(other / "model.safetensors")
    assert expected.keys() == got.keys()
    return max((expected[name] - got[name]).abs().max().item() for name in expected)


@pytest.fixture(scope="module")
def single_pretrain(tmp_path_factory) -> Path:
    """The tiny pipeline's pretraining in one process: the DAPT base that two processes must also build."""
    single = tmp_path_factory.mktemp("single")
    dapt("pretrain", str(TINY), "--out", str(single), *CHECKPOINTS)
    return single


def kill_midway(out: Path, *args: str, launch: tuple[str, ...] = tuple(LAUNCH)) -> None:
    """Launch pretraining over two processes and SIGKILL every process once step 5 is logged."""
    process = subprocess.Popen(
        [*launch, "pretrain", str(TINY), "--out", str(out), *CHECKPOINTS, *args],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    metrics, deadline = out / "pretrain" / "metrics.jsonl", time.time() + 200
    while (
        process.poll() is None
        and time.time() < deadline
        and not any('"step": 5,' in line for line in (metrics.read_text().splitlines() if metrics.exists() else []))
    ):
        time.sleep(0.005)
    launcher = psutil.Process(process.pid)
    for member in [*launcher.children(recursive=True), launcher]:
        member.kill()
    process.wait()
    assert not (out / "pretrain" / "manifest.json").exists(), "killed before the end (make pretraining longer)"


def logged_steps(out: Path) -> list[int]:
    metrics = out / "pretrain" / "metrics.jsonl"
    lines = metrics.read_text().splitlines() if metrics.exists() else []
    return [json.loads(line)["step"] for line in lines if line.endswith("}") and '"loss"' in line]


def test_sigterm_to_one_process_stops_both_at_one_checkpoint_and_resuming_loses_nothing(tmp_path, single_pretrain):
    out = tmp_path / "preempted"
    process = subprocess.Popen(
        [*LAUNCH, "pretrain", str(TINY), "--out", str(out), *CHECKPOINTS],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 200
    while process.poll() is None and time.time() < deadline and 5 not in logged_steps(out):
        time.sleep(0.005)
    workers = psutil.Process(process.pid).children(recursive=True)
    rank_1 = next(worker for worker in workers if worker.environ().get("RANK") == "1")
    rank_1.send_signal(signal.SIGTERM)  # as a scheduler or a preempted machine would, to one process only
    _, stderr = process.communicate(timeout=120)
    assert process.returncode != 0
    stopped_at = logged_steps(out)[-1]
    assert 5 <= stopped_at < 30, "stopped midway"
    assert stderr.count(f"stopped: pretrain: stopped by SIGTERM after step {stopped_at} of 30") == 2, stderr[-3000:]
    assert "Traceback" not in stderr.split("stopped: pretrain")[0] and "terminate called" not in stderr
    assert "exitcode  : 143" in stderr, "the process torchrun saw end first exited as a SIGTERM would end it"
    assert (out / "pretrain" / "checkpoints" / f"step-{stopped_at:06d}" / "training_state.pt").is_file()
    assert not (out / "pretrain" / "manifest.json").exists()

    resumed = dapt("pretrain", str(TINY), "--out", str(out), *CHECKPOINTS, processes=2)
    assert f"resuming from step-{stopped_at:06d}" in resumed.stdout + resumed.stderr
    assert logged_steps(out) == list(range(1, 31)), "no step lost or done twice"
    assert weights_difference(single_pretrain / "pretrain" / "model", out / "pretrain" / "model") < 1e-4


def test_whole_pipeline_over_two_processes(tmp_path, single_pretrain):
    single, double = single_pretrain, tmp_path / "double"

    launched = dapt("run", str(TINY), "--out", str(double), *CHECKPOINTS, processes=2)
    assert launched.stdout.count("Report:") == 1, "the main process alone writes and prints the report"
    assert (double / "report.json").exists()
    manifests = sorted(p.parent.name for p in double.glob("*/manifest.json"))
    assert "pretrain" in manifests and "evaluate-xml-subpackage-dapt" in manifests
    assert launched.stderr.count(": done in") == len(manifests), "each stage ran and printed its progress once"
    # the DAPT base of two processes, each on half of every micro-batch, is the single-process one
    assert weights_difference(single / "pretrain" / "model", double / "pretrain" / "model") < 1e-4
    one = json.loads((single / "pretrain" / "manifest.json").read_text())["metrics"]
    two = json.loads((double / "pretrain" / "manifest.json").read_text())["metrics"]
    assert two["tokens_trained"] == one["tokens_trained"]
    assert two["best"]["domain_val_loss"] == pytest.approx(one["best"]["domain_val_loss"], abs=1e-5)

    again = dapt("run", str(TINY), "--out", str(double), *CHECKPOINTS, processes=2)
    assert again.stderr.count("cached, skipped") == len(manifests)

    # SIGKILL every process mid-pretraining; launched again, both processes resume from the last checkpoint
    (double / "pretrain").unlink()  # the stage's name: built again (the finished artifact is kept in .artifacts/)
    kill_midway(double)
    resumed = dapt("pretrain", str(TINY), "--out", str(double), *CHECKPOINTS, processes=2)
    assert (resumed.stdout + resumed.stderr).count("resuming from step-") == 1
    assert weights_difference(single / "pretrain" / "model", double / "pretrain" / "model") < 1e-4


FSDP = ["--set", "pretrain.sharding=fsdp"]


def test_whole_pipeline_sharded_over_two_processes(tmp_path, single_pretrain):
    single, sharded = single_pretrain, tmp_path / "fsdp"
    dapt("run", str(TINY), "--out", str(sharded), *CHECKPOINTS, *FSDP, processes=2)
    assert (sharded / "report.json").exists()
    # each process held half of the weights; the DAPT base they export is the plain one a single process writes
    assert weights_difference(single / "pretrain" / "model", sharded / "pretrain" / "model") < 1e-4
    one = json.loads((single / "pretrain" / "manifest.json").read_text())["metrics"]
    two = json.loads((sharded / "pretrain" / "manifest.json").read_text())["metrics"]
    assert (one["processes"], one["sharding"]) == (1, "none")
    assert (two["processes"], two["sharding"]) == (2, "fsdp")
    assert two["best"]["domain_val_loss"] == pytest.approx(one["best"]["domain_val_loss"], abs=1e-5)
    # a sharded run killed midway resumes exactly: test_a_sharded_run_resumes_exactly_..., through the loop


def zero2_on_this_machine(folder: Path) -> Path:
    """The shipped DeepSpeed launch config (zero2-gpu.yaml) for two processes on this machine, on a free port."""
    config = yaml.safe_load((files("dapt") / "launch" / "zero2-gpu.yaml").read_text())
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        config.update(num_processes=2, main_process_port=probe.getsockname()[1])
    path = folder / "zero2.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_pretraining_with_deepspeed_zero2_through_accelerate_launch(tmp_path, single_pretrain):
    accelerate = str(Path(sys.executable).with_name("accelerate"))
    launch = (accelerate, "launch", "--config_file", str(zero2_on_this_machine(tmp_path)), "-m", "dapt.cli")
    out, env = tmp_path / "zero2", {**os.environ, "OMP_NUM_THREADS": "1"}
    pretrain = ["pretrain", str(TINY), "--out", str(out), *CHECKPOINTS]
    done = subprocess.run([*launch, *pretrain], env=env, timeout=300, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-4000:]
    # two processes, each with half of the optimizer state and gradients, build the single-process DAPT base
    assert weights_difference(single_pretrain / "pretrain" / "model", out / "pretrain" / "model") < 1e-4
    metrics = json.loads((out / "pretrain" / "manifest.json").read_text())["metrics"]
    assert (metrics["processes"], metrics["sharding"]) == (2, "deepspeed-zero2")

    # killed midway: launched without DeepSpeed, both processes refuse its checkpoint, saying why; launched as it
    # was, they resume from it and end with the same weights
    (out / "pretrain").unlink()  # the stage's name: built again (the finished artifact is kept in .artifacts/)
    kill_midway(out, launch=launch)
    refused = subprocess.run([*LAUNCH, *pretrain], env=env, timeout=300, capture_output=True, text=True)
    assert refused.returncode != 0
    assert refused.stderr.count("this checkpoint was written under DeepSpeed") == 2, refused.stderr[-3000:]
    assert "Traceback" not in refused.stderr.split("this checkpoint was written")[0], "a message, not a traceback"
    resumed = subprocess.run([*launch, *pretrain], env=env, timeout=300, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert (resumed.stdout + resumed.stderr).count("resuming from step-") == 1
    assert weights_difference(single_pretrain / "pretrain" / "model", out / "pretrain" / "model") < 1e-4


def test_lora_pretraining_under_deepspeed_matches_one_process(tmp_path):
    # only the adapters (and the embeddings, LM head: modules_to_save) train; ZeRO partitions just their state
    lora = [*("--set", "pretrain.max_steps=12", "--set", "pretrain.method=lora", "--set", "pretrain.lora.r=8")]
    lora += ["--set", "pretrain.lora.train_embeddings=true"]
    dapt("pretrain", str(TINY), "--out", str(tmp_path / "one"), *lora)
    _, env = layout("zero2")
    command = [*LAUNCH, "pretrain", str(TINY), "--out", str(tmp_path / "zero2"), *lora]
    done = subprocess.run(command, env=env, timeout=300, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-4000:]
    # fp32 reduction-order differences of two processes, grown over 12 steps at lr 3e-3 (1.5e-5 measured on the
    # streamed shards' windows; the full-model ZeRO tests allow 1e-4)
    assert weights_difference(tmp_path / "one" / "pretrain" / "model", tmp_path / "zero2" / "pretrain" / "model") < 5e-5
    metrics = json.loads((tmp_path / "zero2" / "pretrain" / "manifest.json").read_text())["metrics"]
    assert (metrics["method"], metrics["sharding"]) == ("lora", "deepspeed-zero2")

    # in bf16 the adapters saved are DeepSpeed's fp32 master weights, the same ones as in fp32
    bf16_run = ["--out", str(tmp_path / "bf16"), *lora, "--set", "pretrain.precision=bf16"]
    command = [*LAUNCH, "pretrain", str(TINY), *bf16_run]
    done = subprocess.run(command, env=env, timeout=300, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-4000:]
    fp32, bf16 = (load_file(tmp_path / run / "pretrain/adapter/adapter_model.safetensors") for run in ("one", "bf16"))
    assert sorted(bf16) == sorted(fp32) and {tensor.dtype for tensor in bf16.values()} == {torch.float32}
    # and the DAPT base is those adapters merged onto the fp32 base, as peft would (DeepSpeed trained a bf16 copy)
    base = AutoModelForCausalLM.from_pretrained(tmp_path / "bf16" / "base" / "model", dtype=torch.float32)
    merged = PeftModel.from_pretrained(base, tmp_path / "bf16" / "pretrain" / "adapter").merge_and_unload()
    exported = load_file(tmp_path / "bf16" / "pretrain" / "model" / "model.safetensors")
    assert {tensor.dtype for tensor in exported.values()} == {torch.float32}
    assert max((merged.state_dict()[name] - tensor).abs().max().item() for name, tensor in exported.items()) < 1e-6


def test_one_process_with_deepspeed_builds_the_same_base(tmp_path, single_pretrain):
    # e.g. ZeRO-Offload on a single GPU: no launcher's variables, DeepSpeed gets a process group of one; the task
    # stages after pretraining train without it
    _, env = layout("zero2")
    out = tmp_path / "alone"
    command = [sys.executable, "-m", "dapt.cli", "run", str(TINY), "--out", str(out), *CHECKPOINTS]
    done = subprocess.run(command, env=env, timeout=300, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-4000:]
    assert (out / "report.json").exists()
    assert weights_difference(single_pretrain / "pretrain" / "model", out / "pretrain" / "model") < 1e-4
    metrics = json.loads((out / "pretrain" / "manifest.json").read_text())["metrics"]
    assert (metrics["processes"], metrics["sharding"]) == (1, "deepspeed-zero2")
    variants = [json.loads(path.read_text())["metrics"] for path in out.glob("adapt*/manifest.json")]
    assert variants and {(m["processes"], m["sharding"]) for m in variants} == {(1, "none")}, "without DeepSpeed"


def test_an_error_on_the_main_process_stops_every_process_with_that_error(tmp_path):
    # the tokenize stage (main process) fails
    too_much_held_out = ["--set", "tokenize.eval_tokens=100000000", "--set", "tokenize.eval_max_tokens=100000000"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    failed = subprocess.run(
        [*LAUNCH, "run", str(TINY), "--out", str(tmp_path / "run"), *too_much_held_out],
        env=env,
        timeout=300,
        capture_output=True,
        text=True,
    )
    assert failed.returncode != 0
    assert "error: the domain corpus has" in failed.stderr and "lower tokenize.eval_tokens" in failed.stderr
    assert "[rank1]" not in failed.stderr, "the waiting process stops without a traceback of its own"
    assert not (tmp_path / "run" / "tokenize" / "manifest.json").exists()


PROBE = Path(__file__).parent / "timeout_probe.py"
SHORT_TIMEOUT = {**ENV, "DAPT_COLLECTIVE_TIMEOUT": "2"}


def test_waiting_for_the_main_process_outlasts_the_collective_timeout():
    waited = subprocess.run(
        [*TORCHRUN, str(PROBE), "slow-main"], env=SHORT_TIMEOUT, timeout=120, capture_output=True, text=True
    )
    assert waited.returncode == 0, waited.stderr[-3000:]
    assert waited.stdout.count("waited") == 2


def test_a_hung_process_stops_the_others_at_the_collective_timeout():
    # the second process sleeps 120 s in step 2; the first gives up on its gradient all-reduce after 2 s
    hung = subprocess.run(
        [*TORCHRUN, str(PROBE), "hung-rank-1"], env=SHORT_TIMEOUT, timeout=90, capture_output=True, text=True
    )
    assert hung.returncode != 0
    assert "timed out" in hung.stderr.lower() or "timeout" in hung.stderr.lower(), hung.stderr[-3000:]


LOAD_PROBE = Path(__file__).parent / "sharded_load_probe.py"


@pytest.fixture
def base_without_weights(tmp_path) -> tuple[Path, Path]:
    """A tiny base folder, and a copy of it without model.safetensors (config and tokenizer only)."""
    from dapt.config import BaseConfig, PresetConfig
    from dapt.model.load import load_original_base, save_model_folder

    model, tokenizer, _ = load_original_base(BaseConfig(preset=PresetConfig(num_layers=2)))
    save_model_folder(model, tokenizer, tmp_path / "base")
    shutil.copytree(tmp_path / "base", tmp_path / "empty", ignore=shutil.ignore_patterns("*.safetensors"))
    return tmp_path / "base", tmp_path / "empty"


def test_sharded_only_the_main_process_reads_the_base_weights(tmp_path, base_without_weights):
    base, empty = base_without_weights
    out = tmp_path / "loaded.json"
    done = subprocess.run(
        [*TORCHRUN, str(LOAD_PROBE), str(base), str(empty), str(out)],
        env=ENV,
        timeout=120,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    # the other process had no weight file to read: its shards came from the main process, exactly
    assert json.loads(out.read_text())["difference"] == 0.0


def test_processes_that_built_different_models_stop_with_an_error_not_an_abort(tmp_path, base_without_weights):
    base, empty = base_without_weights
    failed = subprocess.run(
        [*TORCHRUN, str(LOAD_PROBE), str(base), str(empty), str(tmp_path / "x.json"), "untied"],
        env=ENV,
        timeout=120,
        capture_output=True,
        text=True,
    )
    assert failed.returncode != 0
    assert failed.stderr.count("process 1 built another model than process 0") == 2
    assert "terminate called" not in failed.stderr
