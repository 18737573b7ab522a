"""The training loop: early stopping, the NaN guard, the schedule."""

import json
import math

import pytest
import torch

from dapt.errors import ConfigError, TrainingError
from dapt.train.loop import LoopSettings, batch_sharing, train_loop
from dapt.train.schedule import warmup_cosine_factor
from dapt.train.sharding import decoder_layers


def regression():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    x = torch.randn(64, 4)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]])
    return model, (lambda: (x, y)), (lambda m, b: (torch.nn.functional.mse_loss(m(b[0]), b[1]), len(b[0])))


def test_training_lowers_the_loss_and_logs_every_step(tmp_path):
    model, batch, loss_fn = regression()
    before = loss_fn(model, batch())[0].item()
    result = train_loop(model, batch, loss_fn, LoopSettings(max_steps=50, lr=0.1), metrics_file=tmp_path / "m.jsonl")
    assert loss_fn(model, batch())[0].item() < before / 10
    assert result.steps == 50 and len((tmp_path / "m.jsonl").read_text().splitlines()) == 50


def test_early_stopping_after_patience_evaluations_without_improvement():
    model, batch, loss_fn = regression()
    values = iter([1.0, 0.5, 0.6, 0.7, 0.4])
    settings = LoopSettings(max_steps=100, lr=0.01, eval_every=2, monitor="val", patience=2)
    result = train_loop(model, batch, loss_fn, settings, evaluate=lambda: {"val": next(values)})
    assert result.stopped_early and result.steps == 6
    assert result.best_step == 2 and result.best_value == 0.5


def test_nan_loss_stops_with_the_step_named():
    model, batch, _ = regression()
    calls = iter(range(100))

    def loss_fn(m, b):
        loss = torch.nn.functional.mse_loss(m(b[0]), b[1])
        return (loss * float("nan") if next(calls) == 3 else loss), 1

    with pytest.raises(TrainingError, match="at step 4"):
        train_loop(model, batch, loss_fn, LoopSettings(max_steps=10, lr=0.01))


def test_warmup_then_cosine_to_the_floor():
    assert warmup_cosine_factor(0, 4, 20, 0.1) == pytest.approx(0.25)
    assert warmup_cosine_factor(3, 4, 20, 0.1) == pytest.approx(1.0)
    assert warmup_cosine_factor(4, 4, 20, 0.1) == pytest.approx(1.0)
    assert warmup_cosine_factor(12, 4, 20, 0.1) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert warmup_cosine_factor(20, 4, 20, 0.1) == pytest.approx(0.1)


def test_warmup_stable_decay():
    from dapt.train.schedule import warmup_stable_decay_factor as wsd

    assert wsd(0, 2, 10, 0.1, 0.2) == pytest.approx(0.5)
    assert [wsd(s, 2, 10, 0.1, 0.2) for s in (2, 5, 7)] == [1.0, 1.0, 1.0]  # stable until 80% of the steps
    assert wsd(9, 2, 10, 0.1, 0.2) == pytest.approx(1 - 0.9 * 0.5)
    assert wsd(10, 2, 10, 0.1, 0.2) == pytest.approx(0.1)


def test_parameter_groups_decay_matrices_only_and_slow_down_embeddings():
    from dapt.train.loop import parameter_groups

    model = torch.nn.ModuleDict(
        {"embed_tokens": torch.nn.Embedding(10, 4), "proj": torch.nn.Linear(4, 4), "norm": torch.nn.LayerNorm(4)}
    )
    groups = parameter_groups(model, weight_decay=0.1, lr=1e-3, embedding_lr_ratio=0.2)
    by_size = {sum(p.numel() for p in g["params"]): g for g in groups}
    assert by_size[40]["lr"] == pytest.approx(2e-4) and by_size[40]["weight_decay"] == 0.0  # embeddings
    assert by_size[16]["lr"] == pytest.approx(1e-3) and by_size[16]["weight_decay"] == 0.1  # proj.weight
    assert by_size[12]["weight_decay"] == 0.0  # proj.bias + norm weight/bias


def test_global_batch_in_tokens_sets_accumulation():
    from dapt.train.loop import resolve_accumulation

    settings = LoopSettings(max_steps=1, lr=1.0, global_batch_tokens=4096, seq_len=256, micro_batch_size=4)
    assert resolve_accumulation(settings).grad_accum_steps == 4
    with pytest.raises(TrainingError, match="use e.g. 4096"):
        resolve_accumulation(
            LoopSettings(max_steps=1, lr=1.0, global_batch_tokens=4000, seq_len=256, micro_batch_size=4)
        )


def test_bf16_training_runs_and_learns():
    model, batch, loss_fn = regression()
    before = loss_fn(model, batch())[0].item()
    train_loop(model, batch, loss_fn, LoopSettings(max_steps=30, lr=0.1, precision="bf16"))
    assert loss_fn(model, batch())[0].item() < before / 5


def test_metrics_also_go_to_tensorboard_when_asked(tmp_path):
    pytest.importorskip("tensorboard", reason="tensorboard is in the [dev] extra")
    model, batch, loss_fn = regression()
    settings = LoopSettings(max_steps=3, lr=0.1, report_to=("tensorboard",), tracking_dir=tmp_path)
    train_loop(model, batch, loss_fn, settings, description="tb run")
    assert list(tmp_path.rglob("events.out.tfevents.*"))


def test_an_unknown_or_missing_tracker_is_a_clear_error():
    model, batch, loss_fn = regression()
    with pytest.raises(TrainingError, match="unknown tracker 'tensorbored'"):
        train_loop(model, batch, loss_fn, LoopSettings(max_steps=1, lr=0.1, report_to=("tensorbored",)))


def test_accelerates_own_fsdp_launch_is_refused_before_training(monkeypatch):
    model, batch, loss_fn = regression()
    before = [p.detach().clone() for p in model.parameters()]
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    message = r"launched with accelerate's FSDP .*set `pretrain\.sharding: fsdp`.*torchrun"
    with pytest.raises(TrainingError, match=message):
        train_loop(model, batch, loss_fn, LoopSettings(max_steps=2, lr=0.1))
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_fsdp_in_one_process_trains_unsharded_and_says_so(capsys):
    model, batch, loss_fn = regression()
    sharded = train_loop(model, batch, loss_fn, LoopSettings(max_steps=5, lr=0.1, sharding="fsdp"))
    assert "sharding fsdp with one process: training unsharded" in capsys.readouterr().out
    plain_model, batch, loss_fn = regression()
    train_loop(plain_model, batch, loss_fn, LoopSettings(max_steps=5, lr=0.1))
    assert (sharded.sharding, sharded.processes) == ("none", 1)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), plain_model.parameters(), strict=True))


def test_fsdp_needs_decoder_layers_it_can_find():
    with pytest.raises(TrainingError, match=r"decoder layers of Linear.*use pretrain\.sharding: none"):
        decoder_layers(torch.nn.Linear(4, 1))


def tiny_llama_run(compile_model: bool) -> tuple[list[float], torch.nn.Module]:
    """Four steps of a 2-block Llama on a learnable pattern, packed documents masked: (losses, the model)."""
    from dapt.config import BaseConfig, PresetConfig
    from dapt.model.load import load_original_base
    from dapt.train.objectives import causal_lm_loss, lm_batch

    torch.manual_seed(0)
    model, tokenizer, _ = load_original_base(BaseConfig(preset=PresetConfig(num_layers=2)))
    windows = (torch.arange(32 * 33) * 7 % 50 + 1).view(32, 33)
    windows[:, 16] = tokenizer.eos_token_id  # two documents per window
    step, losses = {"i": 0}, []

    def next_batch():
        start = step["i"] * 8 % len(windows)
        step["i"] += 1
        return lm_batch(windows[start : start + 8], tokenizer.eos_token_id)

    def loss_fn(forward_model, batch):
        loss, units = causal_lm_loss(forward_model, batch)
        losses.append(loss.item())
        return loss, units

    train_loop(model, next_batch, loss_fn, LoopSettings(max_steps=4, lr=3e-3, compile=compile_model))
    return losses, model


def test_compiled_training_follows_eager_and_trains_the_model_itself():
    eager_losses, eager = tiny_llama_run(compile_model=False)
    compiled_losses, compiled_model = tiny_llama_run(compile_model=True)
    assert compiled_losses == pytest.approx(eager_losses, rel=1e-4)
    assert eager_losses[-1] < eager_losses[0]
    # the weights the stage saves are the ones the compiled module trained (an untrained copy would differ by ~lr)
    for (name, a), (_, b) in zip(eager.named_parameters(), compiled_model.named_parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-4), name


def test_compile_without_a_cxx_compiler_is_a_clear_error(monkeypatch):
    monkeypatch.setattr("dapt.train.loop.shutil.which", lambda name: None)
    model, batch, loss_fn = regression()
    with pytest.raises(TrainingError, match=r"needs a C\+\+ compiler.*set compile: false"):
        train_loop(model, batch, loss_fn, LoopSettings(max_steps=1, lr=0.1, compile=True))


def test_dapt_run_refuses_a_deepspeed_launch_it_cannot_train_with_before_any_stage(monkeypatch, tmp_path, capsys):
    from pathlib import Path

    from dapt.cli import main

    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", "3")
    tiny = Path(__file__).parents[1] / "integration" / "tiny.yaml"
    assert main(["run", str(tiny), "--out", str(tmp_path / "run")]) == 2
    assert "zero_optimization.stage 3 is not supported" in capsys.readouterr().err
    assert not (tmp_path / "run").exists(), "no stage ran"


def test_every_step_logs_its_throughput_and_mfu_against_the_devices_peak(tmp_path):
    model, batch, loss_fn = regression()
    # 1e12 FLOPs per unit and a peak of 1000 TFLOP/s: MFU is units/s ÷ 1000
    settings = LoopSettings(max_steps=3, lr=0.1, flops_per_unit=1e12, peak_tflops=1000.0)
    train_loop(model, batch, loss_fn, settings, metrics_file=tmp_path / "m.jsonl")
    lines = [json.loads(line) for line in (tmp_path / "m.jsonl").read_text().splitlines()]
    assert all(line["units_per_second"] > 0 for line in lines)
    assert [line["mfu"] for line in lines] == pytest.approx([line["units_per_second"] / 1000 for line in lines], 1e-2)
    train_loop(model, batch, loss_fn, LoopSettings(max_steps=1, lr=0.1), metrics_file=tmp_path / "none.jsonl")
    assert "mfu" not in (tmp_path / "none.jsonl").read_text(), "no peak known (a CPU): no MFU"


def test_mfu_is_a_share_of_every_process_device():
    from dapt.train.throughput import model_flops_utilization

    assert model_flops_utilization(6e9, 50_000, 1000.0) == pytest.approx(0.3)
    assert model_flops_utilization(6e9, 50_000, 1000.0, processes=2) == pytest.approx(0.15)
    assert model_flops_utilization(6e9, 50_000, None) is None


@pytest.mark.skipif(torch.cuda.is_available(), reason="trains on the GPU where there is one")
def test_fp16_on_a_cpu_is_an_error_not_a_silent_fp32_run():
    model, batch, loss_fn = regression()
    with pytest.raises(TrainingError, match="precision fp16 needs a GPU"):
        train_loop(model, batch, loss_fn, LoopSettings(max_steps=1, lr=0.1, precision="fp16"))


def test_adamw_is_fused_where_torch_has_the_kernel_and_foreach_elsewhere():
    from torch.utils._foreach_utils import _get_fused_kernels_supported_devices

    from dapt.train.loop import FUSED_ADAMW_DEVICES, adamw

    assert set(FUSED_ADAMW_DEVICES) <= set(_get_fused_kernels_supported_devices()), "torch still has these kernels"
    parameter = torch.nn.Parameter(torch.zeros(3))
    parameter.grad = torch.ones(3)
    on_cpu = adamw([{"params": [parameter]}], lr=0.1, device_type="cpu")
    assert on_cpu.defaults["fused"] and not on_cpu.defaults["foreach"]
    on_cpu.step()
    assert parameter[0] < 0
    elsewhere = adamw([{"params": [torch.nn.Parameter(torch.zeros(3))]}], lr=0.1, device_type="xla")
    assert elsewhere.defaults["foreach"] and not elsewhere.defaults["fused"]


def test_loop_settings_are_read_from_the_pretrain_config_by_name(tmp_path):
    from dataclasses import fields

    from dapt.config import PretrainConfig
    from dapt.train.loop import STOPPING_FIELDS

    config = PretrainConfig.model_validate(
        {
            "lr": 3e-4,
            "max_steps": 7,
            "schedule": "wsd",
            "report_to": ["tensorboard"],
            "early_stopping": {"patience": 5, "min_delta": 0.01},
        }
    )
    settings = LoopSettings.from_config(config, tracking_dir=tmp_path, monitor="general_val_loss")
    assert (settings.lr, settings.max_steps, settings.schedule) == (3e-4, 7, "wsd")
    assert settings.report_to == ("tensorboard",)
    assert (settings.monitor, settings.patience, settings.min_delta) == ("general_val_loss", 5, 0.01)
    assert settings.tracking_dir == tmp_path
    # a loop setting is the config's, under the same name, or one of these that the stage works out
    worked_out = {"unit", "tracking_dir", "flops_per_unit", "lr_segments", "evaluate_at"}  # the last two: stages
    read = {f.name for f in fields(LoopSettings)} - worked_out
    assert read <= set(PretrainConfig.model_fields) | set(STOPPING_FIELDS)


def test_context_parallelism_is_refused_where_it_cannot_run():
    settings = LoopSettings(max_steps=1, lr=1e-3, context_parallel=2)
    with pytest.raises(
        ConfigError, match="context_parallel: 2: it needs 2 processes per sequence and this run has one"
    ):
        batch_sharing(settings, "none", rank=0, world=1, model=torch.nn.Linear(2, 2))
    with pytest.raises(ConfigError, match="not available with DeepSpeed"):
        batch_sharing(settings, "deepspeed-zero2", rank=0, world=2, model=torch.nn.Linear(2, 2))
    one = batch_sharing(LoopSettings(max_steps=1, lr=1e-3), "none", rank=1, world=2, model=torch.nn.Linear(2, 2))
    assert torch.equal(one.share(torch.arange(4)), torch.tensor([1, 3])), "without it: rows rank, rank + world, ..."
