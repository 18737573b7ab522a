"""fp16 with dynamic loss scaling, run for real on this CPU: the loop's side of it (skipped steps, the schedule
waiting, the stop after too many skips, the scale resuming with a checkpoint).

accelerate makes no loss scaler on a CPU, so `fp16_on_this_cpu` gives it the one it makes on a GPU: the same
torch.amp.GradScaler class, for the CPU, with fp16 autocast. The fp16 arithmetic is real; only the GPU is not."""

import json

import accelerate
import pytest
import torch
from safetensors.torch import load_file, save_file

from dapt.errors import TrainingError
from dapt.train.checkpoint import Checkpointer
from dapt.train.loop import FP16_SKIPS_IN_A_ROW, LoopSettings, train_loop
from dapt.train.preemption import TrainingStopped
from helpers.streams import Stream


@pytest.fixture
def fp16_on_this_cpu(monkeypatch):
    """Calling it with GradScaler's settings makes every fp16 Accelerator of the test autocast and scale as on a GPU."""

    def with_scaler(**scaler_settings):
        made = accelerate.Accelerator.__init__

        def init(self, *args, **kwargs):
            made(self, *args, **kwargs)
            if self.state.mixed_precision == "fp16" and self.device.type == "cpu":
                self.native_amp = True  # prepare() wraps the model's forward in fp16 autocast
                self.scaler = torch.amp.GradScaler("cpu", **scaler_settings)

        monkeypatch.setattr(accelerate.Accelerator, "__init__", init)

    return with_scaler


def regression_batches(signal_at: int | None = None) -> Stream:
    """The preemption tests' regression batches, 16 rows of 8 features; SIGTERM when drawing batch `signal_at`."""
    return Stream(signal_at, rows=16, features=8)


def loss_fn(model, batch):
    return torch.nn.functional.mse_loss(model(batch[0]).float(), batch[1]), len(batch[0])


def network():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1))


def train(tmp_path, settings, stream=None, folder=None):
    model = network()
    checkpointer = None
    if folder is not None:

        def save_model(path, weights):
            path.mkdir(parents=True)
            save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path / "model.safetensors")

        checkpointer = Checkpointer(
            folder, save_model, lambda path: model.load_state_dict(load_file(path / "model.safetensors"))
        )
    metrics = tmp_path / f"metrics-{len(list(tmp_path.glob('metrics-*')))}.jsonl"
    result = train_loop(
        model, stream or regression_batches(), loss_fn, settings, metrics_file=metrics, checkpointer=checkpointer
    )
    return model, result, [json.loads(line) for line in metrics.read_text().splitlines()]


def test_fp16_trains_in_half_precision_skipping_the_steps_that_overflow_while_the_schedule_waits(
    fp16_on_this_cpu, tmp_path
):
    fp16_on_this_cpu(init_scale=2.0**24)  # far too high: the first steps overflow until the scale has come down
    settings = LoopSettings(max_steps=40, lr=0.01, warmup_steps=4, precision="fp16", grad_clip=1.0)
    model, result, lines = train(tmp_path, settings)

    skipped = [line["step"] for line in lines if line.get("skipped")]
    assert skipped and skipped == list(range(1, len(skipped) + 1)), "the overflowing steps are the first ones"
    assert len(skipped) < FP16_SKIPS_IN_A_ROW
    assert all("grad_norm" not in line for line in lines if line.get("skipped")), "no norm for a skipped step"
    # the warm-up starts once the scaler lets a step through: the skipped steps kept the first learning rate, which
    # the first step through trains with (each step logs the rate it trained with)
    assert {line["lr"] for line in lines[: len(skipped) + 1]} == {0.01 / 4}
    assert lines[len(skipped) + 1]["lr"] == pytest.approx(0.01 * 2 / 4)
    assert lines[-1]["loss"] < lines[len(skipped)]["loss"] / 4, "and then it learns"
    assert result.steps == 40

    # and a skipped step changed nothing: after only those, the weights are the initial ones
    only_skipped, _, _ = train(tmp_path, LoopSettings(max_steps=len(skipped), lr=0.01, precision="fp16"))
    for name, tensor in network().state_dict().items():
        assert torch.equal(only_skipped.state_dict()[name], tensor), name


def test_fp16_that_overflows_at_every_scale_stops_with_a_message(fp16_on_this_cpu, tmp_path):
    fp16_on_this_cpu(init_scale=2.0**120)  # twenty halvings later, still far beyond fp16's range
    settings = LoopSettings(max_steps=40, lr=0.01, precision="fp16")
    with pytest.raises(TrainingError, match=f"skipped {FP16_SKIPS_IN_A_ROW} steps in a row, up to step 20"):
        train(tmp_path, settings)


def test_fp16_resumes_exactly_with_the_loss_scale_it_had(fp16_on_this_cpu, tmp_path):
    # the scale grows every 3 steps and skips a step when it grows too far: a resume that restarted it would train
    # other steps than the run that never stopped
    fp16_on_this_cpu(init_scale=2.0**10, growth_interval=3)
    # without clipping, the scaler hands its scale to the fused AdamW, which unscales and skips by itself
    settings = LoopSettings(max_steps=30, lr=0.01, warmup_steps=2, eval_every=10, precision="fp16", grad_clip=None)
    reference, _, reference_lines = train(tmp_path, settings, folder=tmp_path / "reference")
    assert any(line.get("skipped") for line in reference_lines[12:]), "the scale overflows again after the resume"

    with pytest.raises(TrainingStopped, match="after step 12 of 30"):
        train(tmp_path, settings, stream=regression_batches(signal_at=11), folder=tmp_path / "run")
    resumed, result, lines = train(tmp_path, settings, folder=tmp_path / "run")
    assert result.resumed_from == 12
    assert [line.get("skipped", False) for line in lines] == [
        line.get("skipped", False) for line in reference_lines[12:]
    ]
    for name, tensor in reference.state_dict().items():
        assert torch.equal(resumed.state_dict()[name], tensor), name


def test_a_checkpoint_of_the_foreach_adamw_resumes_under_fp16(fp16_on_this_cpu, tmp_path, monkeypatch):
    # dapt's AdamW was foreach before it was fused, and a checkpoint's param groups say which: loaded as they are,
    # the loss scaler would hand its scale to a foreach AdamW, which refuses it
    import dapt.train.loop

    fp16_on_this_cpu(init_scale=2.0**10, growth_interval=3)
    settings = LoopSettings(max_steps=30, lr=0.01, warmup_steps=2, eval_every=10, precision="fp16")
    fused = dapt.train.loop.adamw
    monkeypatch.setattr(dapt.train.loop, "adamw", lambda groups, lr, device_type: fused(groups, lr, "xla"))
    with pytest.raises(TrainingStopped, match="after step 12 of 30"):
        train(tmp_path, settings, stream=regression_batches(signal_at=11), folder=tmp_path / "run")
    monkeypatch.setattr(dapt.train.loop, "adamw", fused)
    _, result, lines = train(tmp_path, settings, folder=tmp_path / "run")
    assert result.resumed_from == 12 and result.steps == 30
    assert lines[-1]["loss"] < lines[0]["loss"]
