"""SIGTERM or Ctrl-C while a run trains: the step under way finishes, a checkpoint of it is written, and the
same run resumed from it ends on the weights of a run never stopped."""

import json
import os
import signal

import pytest
import torch
from safetensors.torch import load_file, save_file

from dapt.train.checkpoint import Checkpointer
from dapt.train.loop import LoopSettings, train_loop
from dapt.train.preemption import StopRequests, TrainingStopped
from helpers.streams import Stream

SETTINGS = LoopSettings(max_steps=12, lr=0.05, warmup_steps=2, eval_every=5)


def loss_fn(model, batch):
    return torch.nn.functional.mse_loss(model(batch[0]), batch[1]), len(batch[0])


def train(folder, stream):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)

    def save_model(path, weights):
        path.mkdir(parents=True)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path / "model.safetensors")

    def load_weights(path):
        model.load_state_dict(load_file(path / "model.safetensors"))

    checkpointer = Checkpointer(folder, save_model, load_weights)
    evaluate = lambda: {"val": loss_fn(model, (stream.x[0], stream.y[0]))[0].item()}  # noqa: E731
    result = train_loop(model, stream, loss_fn, SETTINGS, evaluate=evaluate, checkpointer=checkpointer)
    return model, result


@pytest.fixture
def ctrl_c_not_ignored():
    """A process started as a background job of a shell script ignores Ctrl-C, and dapt leaves it so (tested
    below); a test of what Ctrl-C does needs the process a terminal starts."""
    previous = signal.getsignal(signal.SIGINT)
    if previous == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "ctrl-c"])
def test_a_signal_stops_after_the_step_with_a_checkpoint_and_resuming_loses_nothing(
    tmp_path, signum, ctrl_c_not_ignored
):
    reference, _ = train(tmp_path / "reference", Stream())
    handlers = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)  # whatever earlier code set

    with pytest.raises(TrainingStopped, match="after step 8 of 12") as stopped:
        train(tmp_path / "run", Stream(signal_at=7, signum=signum))  # while drawing step 8's batch
    assert stopped.value.exit_code == 128 + signum
    assert "run the same command again" in str(stopped.value)
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == handlers, "the ones before are back"

    resumed, result = train(tmp_path / "run", Stream())
    assert result.resumed_from == 8 and result.steps == 12
    assert torch.equal(resumed.weight, reference.weight) and torch.equal(resumed.bias, reference.bias)


def test_a_signal_at_an_evaluation_step_keeps_that_checkpoint(tmp_path):
    with pytest.raises(TrainingStopped, match="after step 5 of 12"):
        train(tmp_path / "run", Stream(signal_at=4))
    assert (tmp_path / "run" / "step-000005" / "training_state.pt").is_file()


def test_a_signal_during_the_last_evaluation_stops_with_the_last_step_checkpointed(tmp_path):
    stream = Stream()
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    checkpointer = Checkpointer(tmp_path, lambda path, weights: path.mkdir(parents=True), lambda path: None)
    evaluations = []

    def evaluate():
        evaluations.append(1)
        if len(evaluations) == 4:  # 0, 5, 10, and the last one at 12
            os.kill(os.getpid(), signal.SIGTERM)
        return {"val": 1.0}

    with pytest.raises(TrainingStopped, match="after step 12 of 12"):
        train_loop(model, stream, loss_fn, SETTINGS, evaluate=evaluate, checkpointer=checkpointer)
    assert (tmp_path / "step-000012" / "training_state.pt").is_file()
    # run again, there is nothing left to train: it finishes at once
    result = train_loop(model, stream, loss_fn, SETTINGS, evaluate=evaluate, checkpointer=checkpointer)
    assert result.steps == 12 and result.resumed_from == 12


def test_a_signal_the_loop_did_not_act_on_is_passed_on_when_leaving():
    received = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: received.append(signum))
    try:
        with StopRequests("probe"):
            os.kill(os.getpid(), signal.SIGTERM)
            assert received == [], "held back while inside"
        assert received == [signal.SIGTERM], "handed to the handler in place before, on leaving"
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_a_signal_the_process_ignores_stays_ignored():
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # as in a background job of a shell script
    try:
        with StopRequests("probe") as requests:
            os.kill(os.getpid(), signal.SIGINT)
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        assert requests.signum is None
    finally:
        signal.signal(signal.SIGINT, previous)


def test_without_checkpoints_a_signal_is_not_held_back(tmp_path):
    received = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: received.append(stream.position))
    try:
        stream = Stream(signal_at=3)
        torch.manual_seed(0)
        train_loop(torch.nn.Linear(4, 1), stream, loss_fn, SETTINGS)
        assert received == [3], "handled at once, by the handler in place"
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_a_run_started_over_without_a_checkpoint_logs_each_step_once(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text('{"step": 1, "loss": 9.0}\n{"step": 2, "loss": 8.0}\n')  # an attempt killed before a checkpoint
    torch.manual_seed(0)
    checkpointer = Checkpointer(tmp_path / "checkpoints", lambda path, weights: path.mkdir(parents=True), print)
    train_loop(torch.nn.Linear(4, 1), Stream(), loss_fn, SETTINGS, metrics_file=metrics, checkpointer=checkpointer)
    steps = [json.loads(line)["step"] for line in metrics.read_text().splitlines() if '"loss"' in line]
    assert steps == list(range(1, 13))
