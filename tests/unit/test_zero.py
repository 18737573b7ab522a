"""A DeepSpeed launch is checked before any work: the ZeRO stage, the sections dapt owns, precision; dapt's own
batch sizes, accumulation and clipping go into DeepSpeed's config. (Training under DeepSpeed: test_distributed.)"""

import json
import os

import pytest
import torch

from dapt.errors import TrainingError
from dapt.train import zero
from dapt.train.distributed import alone
from dapt.train.loop import FP16_SKIPS_IN_A_ROW, LoopSettings, _count_skipped_step, check_launch, train_loop


@pytest.fixture
def deepspeed_launch(monkeypatch):
    """The variables `accelerate launch` sets for a DeepSpeed config; returns a writer of a DeepSpeed JSON file."""
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", "2")

    def config_file(path, **config):
        path.write_text(json.dumps({"zero_optimization": {"stage": 2}, **config}))
        monkeypatch.setenv("ACCELERATE_DEEPSPEED_CONFIG_FILE", str(path))
        monkeypatch.delenv("ACCELERATE_DEEPSPEED_ZERO_STAGE")
        return path

    return config_file


def plugin(precision="no", grad_clip=1.0):
    return zero.plugin_for(rows_per_process=4, grad_accum_steps=8, grad_clip=grad_clip, world=2, precision=precision)


def test_dapt_sets_the_batch_sizes_accumulation_clipping_and_precision(deepspeed_launch):
    config = plugin(precision="bf16").deepspeed_config
    assert config["train_micro_batch_size_per_gpu"] == 4
    assert config["gradient_accumulation_steps"] == 8
    assert config["train_batch_size"] == 4 * 8 * 2
    assert config["gradient_clipping"] == 1.0
    assert (config["bf16"]["enabled"], config["fp16"]["enabled"]) == (True, False)
    assert plugin(grad_clip=None).deepspeed_config["gradient_clipping"] == 0.0, "no clipping"


def test_a_batch_size_in_the_deepspeed_config_is_replaced_and_said(deepspeed_launch, tmp_path, capsys):
    deepspeed_launch(tmp_path / "ds.json", train_micro_batch_size_per_gpu=16, gradient_accumulation_steps="auto")
    config = plugin().deepspeed_config
    assert config["train_micro_batch_size_per_gpu"] == 4
    out = capsys.readouterr().out
    assert f"the DeepSpeed config {tmp_path / 'ds.json'}: train_micro_batch_size_per_gpu 16 replaced by dapt's 4" in out
    assert "gradient_accumulation_steps" not in out, "an 'auto' value is filled without a note"


@pytest.mark.parametrize("section", ["optimizer", "scheduler"])
def test_an_optimizer_or_scheduler_in_the_deepspeed_config_is_refused(deepspeed_launch, tmp_path, section):
    deepspeed_launch(tmp_path / "ds.json", **{section: {"type": "AdamW", "params": {}}})
    with pytest.raises(TrainingError, match=rf"ds.json: remove its `{section}` section: dapt trains with its own"):
        check_launch()


@pytest.mark.parametrize(
    ("stage", "way"), [("3", "pretrain.sharding: fsdp"), ("0", "launch without DeepSpeed \\(torchrun")]
)
def test_zero_stages_0_and_3_are_refused_with_the_way_to_get_them(deepspeed_launch, monkeypatch, stage, way):
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", stage)
    with pytest.raises(TrainingError, match=rf"zero_optimization.stage {stage} is not supported.*{way}"):
        check_launch()


@pytest.mark.parametrize("elastic", [True, "yes"])
def test_elastic_checkpoints_are_refused(deepspeed_launch, tmp_path, elastic):
    deepspeed_launch(tmp_path / "ds.json", zero_optimization={"stage": 2, "elastic_checkpoint": elastic})
    with pytest.raises(TrainingError, match="elastic_checkpoint is not supported"):
        check_launch()


def test_16_bit_training_sums_accumulated_gradients_in_fp32(deepspeed_launch):
    assert plugin(precision="bf16").deepspeed_config["data_types"]["grad_accum_dtype"] == "fp32"
    assert "data_types" not in plugin(precision="no").deepspeed_config
    one_micro_batch = zero.plugin_for(rows_per_process=4, grad_accum_steps=1, grad_clip=1.0, world=2, precision="bf16")
    assert "data_types" not in one_micro_batch.deepspeed_config, "nothing to sum: no fp32 buffer"


def test_fp16_may_skip_steps_but_not_too_many_in_a_row():
    counters = {}
    for _ in range(FP16_SKIPS_IN_A_ROW - 1):
        _count_skipped_step(True, counters, "pretrain", 7)
    _count_skipped_step(False, counters, "pretrain", 8)  # a step applied: the count starts over
    assert counters["skipped_in_a_row"] == 0
    for step in range(FP16_SKIPS_IN_A_ROW - 1):
        _count_skipped_step(True, counters, "pretrain", 9 + step)
    with pytest.raises(TrainingError, match=f"skipped {FP16_SKIPS_IN_A_ROW} steps in a row, up to step 99"):
        _count_skipped_step(True, counters, "pretrain", 99)


def test_a_precision_the_deepspeed_config_forces_must_be_the_pretrain_one(deepspeed_launch, tmp_path):
    deepspeed_launch(tmp_path / "ds.json", bf16={"enabled": True})
    with pytest.raises(TrainingError, match=r"bf16.enabled is true but pretrain.precision gives fp32"):
        plugin(precision="no")
    assert plugin(precision="bf16").deepspeed_config["bf16"]["enabled"] is True


def test_a_missing_deepspeed_config_file_is_named(deepspeed_launch, monkeypatch, tmp_path):
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_CONFIG_FILE", str(tmp_path / "missing.json"))
    with pytest.raises(TrainingError, match="missing.json"):
        check_launch()


@pytest.mark.parametrize(
    ("sharding", "compile", "message"),
    [("fsdp", False, "DeepSpeed and pretrain.sharding: fsdp: choose one"), ("none", True, "compile is not supported")],
)
def test_deepspeed_does_not_combine_with_fsdp_or_compile(deepspeed_launch, sharding, compile, message):
    with pytest.raises(TrainingError, match=message):
        check_launch(sharding, compile)


def test_deepspeed_not_installed_says_how_to_install_it(deepspeed_launch, monkeypatch):
    real = zero.importlib.util.find_spec
    monkeypatch.setattr(zero.importlib.util, "find_spec", lambda name: None if name == "deepspeed" else real(name))
    with pytest.raises(TrainingError, match="deepspeed is not installed: pip install deepspeed"):
        check_launch()


def test_the_loop_checks_the_launch_before_training(deepspeed_launch, monkeypatch):
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", "3")
    model = torch.nn.Linear(2, 1)
    before = model.weight.detach().clone()

    def loss_fn(model, batch):
        return model(batch).pow(2).mean(), 1

    with pytest.raises(TrainingError, match="stage 3"):
        train_loop(model, lambda: torch.ones(4, 2), loss_fn, LoopSettings(max_steps=2, lr=0.1))
    assert torch.equal(model.weight, before)


def test_stages_run_alone_train_without_deepspeed(deepspeed_launch):
    # the task stages of a pipeline run on the main process alone, with a plain Accelerator
    with alone():
        assert not zero.launched_with_deepspeed()
    assert os.environ["ACCELERATE_USE_DEEPSPEED"] == "true", "put back afterwards"
