"""pretrain.stages: each stage's settings resolved, its stretch of the learning-rate schedule, its batches drawn from
its own mixture at its own window length, and the data position resumed exactly across a stage boundary."""

import math

import pytest
import torch

from dapt.config import config_from_dict
from dapt.data.shards import open_split, write_shard
from dapt.errors import ConfigError
from dapt.stages.context import StageContext
from dapt.stages.pretrain import lr_segments, staged_batches
from dapt.train.loop import LoopSettings
from dapt.train.schedule import (
    ScheduleSegment,
    StagedSchedule,
    warmup_cosine_factor,
    warmup_stable_decay_factor,
)

PIPELINE = {
    "name": "t",
    "base": {"preset": {}},
    "sources": [
        {"name": "d", "role": "domain", "kind": "pydoc_topics"},
        {"name": "hq", "role": "domain", "kind": "pydoc_topics"},
        {"name": "r", "role": "replay", "kind": "pydoc_topics"},
    ],
    "pretrain": {
        "seq_len": 8,
        "micro_batch_size": 4,
        "lr": 1e-3,
        "warmup_steps": 2,
        "replay_fraction": 0.25,
        "stages": [
            {"name": "main", "steps": 6, "schedule": "constant"},
            {
                "name": "anneal",
                "tokens": 100,  # 2 windows of 16 per micro-batch, 2 micro-batches a step: 64 a step -> 2 steps
                "mix": {"d": 1, "hq": 3, "r": 1},
                "seq_len": 16,
                "micro_batch_size": 2,
                "schedule": "linear",
                "min_lr_ratio": 0,
            },
        ],
    },
}


def pipeline(**pretrain):
    raw = {**PIPELINE, "pretrain": {**PIPELINE["pretrain"], **pretrain}}
    return config_from_dict({key: value for key, value in raw.items()})


def test_a_stage_takes_what_it_leaves_out_from_pretrain_and_starts_where_the_last_one_ended():
    main, anneal = pipeline(grad_accum_steps=2).pretrain.training_stages()
    assert (main.name, main.first_step, main.steps, main.seq_len, main.micro_batch_size) == ("main", 0, 6, 8, 4)
    assert (main.replay_fraction, main.mix, main.warmup_steps) == (0.25, None, 2)  # pretrain's own
    assert (main.lr_start, main.lr, main.lr_end) == (0.0, 1e-3, 1e-3)
    assert main.tokens == 6 * 4 * 2 * 8
    assert (anneal.first_step, anneal.steps, anneal.tokens) == (6, 2, 128), "100 tokens: rounded up to whole steps"
    assert (anneal.replay_fraction, anneal.mix, anneal.warmup_steps) == (None, {"d": 1, "hq": 3, "r": 1}, 0)
    assert (anneal.lr_start, anneal.lr, anneal.lr_end) == (1e-3, 1e-3, 0.0), "from where main ended, to zero"


def test_without_stages_the_one_stage_is_the_top_level_settings():
    config = pipeline(stages=None, max_steps=9, schedule="wsd")
    (only,) = config.pretrain.training_stages()
    assert (only.steps, only.schedule, only.warmup_steps, only.seq_len, only.replay_fraction) == (9, "wsd", 2, 8, 0.25)
    assert config.pretrain.stages is None


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"max_steps": 10}, "pretrain.max_steps: with pretrain.stages each stage sets its own steps or tokens"),
        ({"stages": [{"steps": 2, "tokens": 64}]}, r"pretrain.stages\[0\]: give the stage's budget as steps or as"),
        ({"stages": [{"name": "x"}]}, r"pretrain.stages\[0\]: give the stage's budget"),
        ({"stages": [{"steps": 4, "mix": {"d": 1, "r": 1}}]}, r"pretrain.stages\[0\].mix has no weight for hq"),
        (
            {"stages": [{"steps": 4, "mix": {"d": 1, "hq": 1, "r": 0}}]},
            r"pretrain.stages\[0\].mix: weights must be positive",
        ),
        ({"stages": [{"steps": 4, "replay_fraction": 0.1, "mix": {"d": 1}}]}, "give either replay_fraction or mix"),
        ({"stages": [{"steps": 1}]}, r"pretrain.stages\[0\].warmup_steps: 2 warmup steps \(pretrain.warmup_steps"),
        (
            {"stages": [{"steps": 4, "schedule": "constant", "lr": 1e-5}, {"steps": 4, "schedule": "cosine"}]},
            r"pretrain.stages\[1\].min_lr_ratio: the stage's cosine schedule would end at pretrain.lr × 0.1 = 0.0001",
        ),
        ({"stages": [{"steps": 4, "name": "a"}, {"steps": 4, "name": "a"}]}, "stage names must be unique; repeated: a"),
        ({"stages": [{"steps": 4, "seq_len": 64}], "context": {"length": 32}}, r"stages\[0\].seq_len: 64 tokens, more"),
        (
            {"stages": [{"steps": 4, "seq_len": 16}], "global_batch_tokens": 64},
            r"pretrain.stages\[0\]: with global_batch_tokens .* set its micro_batch_size to 2",
        ),
        ({"stages": []}, "pretrain.stages: List should have at least 1 item"),
    ],
)
def test_a_stage_that_does_not_fit_is_a_config_error_naming_the_field(change, message):
    with pytest.raises(ConfigError, match=message):
        pipeline(**change)


def test_a_first_stage_from_zero_is_the_unstaged_schedule_step_for_step():
    for steps, warmup, min_ratio in ((20, 3, 0.1), (7, 0, 0.0), (5, 5, 0.2)):
        cosine = ScheduleSegment(steps, warmup, start=0.0, peak=1.0, end=min_ratio, shape="cosine")
        wsd = ScheduleSegment(steps, warmup, start=0.0, peak=1.0, end=min_ratio, shape="wsd", decay_fraction=0.3)
        for step in range(steps + 2):
            assert cosine.factor(step) == warmup_cosine_factor(step, warmup, steps, min_ratio)
            assert wsd.factor(step) == warmup_stable_decay_factor(step, warmup, steps, min_ratio, 0.3)


def test_the_staged_schedule_warms_holds_and_anneals_to_zero_across_the_boundaries():
    schedule = StagedSchedule(
        [
            ScheduleSegment(4, 2, start=0.0, peak=1.0, end=1.0, shape="constant"),
            ScheduleSegment(4, 0, start=1.0, peak=1.0, end=0.0, shape="linear"),
            ScheduleSegment(3, 1, start=0.0, peak=0.5, end=0.5, shape="constant"),  # re-warmed from zero
        ]
    )
    factors = [schedule.factor(step) for step in range(12)]
    assert factors == [0.5, 1.0, 1.0, 1.0, 1.0, 0.75, 0.5, 0.25, 0.5, 0.5, 0.5, 0.5]
    cosine = ScheduleSegment(5, 1, start=0.2, peak=0.6, end=0.1, shape="cosine")
    assert cosine.factor(0) == pytest.approx(0.6) and cosine.factor(1) == pytest.approx(0.6)
    assert cosine.factor(3) == pytest.approx(0.1 + 0.5 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert cosine.factor(99) == pytest.approx(0.1)


def test_the_lr_segments_of_a_config_are_multipliers_of_pretrain_lr():
    main, anneal = lr_segments(pipeline().pretrain)
    assert (main.steps, main.warmup_steps, main.start, main.peak, main.end, main.shape) == (6, 2, 0, 1, 1, "constant")
    assert (anneal.steps, anneal.warmup_steps, anneal.start, anneal.peak, anneal.end) == (4, 0, 1, 1, 0)


def tokens_folder(tmp_path):
    """Training shards whose windows say where they come from: d's tokens are 1, hq's 2, r's 3."""
    shards = tmp_path / "tokens" / "shards"
    write_shard(shards / "domain_train", [[1] * 400, [2] * 400], vocab_size=300, document_sources=["d", "hq"])
    write_shard(shards / "replay_train", [[3] * 400], vocab_size=300, document_sources=["r"])
    return shards


def batches_of(tmp_path, config):
    shards = tokens_folder(tmp_path)
    context = StageContext("pretrain", tmp_path / "pretrain", {"seed": 0}, {}, config)
    settings = LoopSettings(max_steps=8, lr=1e-3, grad_accum_steps=2)
    opened = {p.name: open_split(p) for p in shards.iterdir()}
    return staged_batches(context, config.pretrain, settings, opened, shards, eos_id=None)


def test_each_stage_draws_its_own_data_at_its_own_window_and_resumes_exactly_across_the_boundary(tmp_path):
    config = pipeline(stages=[PIPELINE["pretrain"]["stages"][0] | {"steps": 2}, PIPELINE["pretrain"]["stages"][1]])
    batches = batches_of(tmp_path, config)  # main: 2 steps × 2 micro-batches; anneal: 2 steps × 2 micro-batches
    drawn = [batches() for _ in range(3)]
    state = batches.state_dict()  # inside the first stage, one micro-batch before its end
    drawn += [batches() for _ in range(5)]
    assert [tuple(batch["input_ids"].shape) for batch in drawn] == [(4, 8)] * 4 + [(2, 16)] * 4
    main_drawn = batches.mixers[0].drawn
    assert set(main_drawn) == {"domain_train", "replay_train"} and sum(main_drawn.values()) == 16, "main: the pools"
    assert sum(batches.mixers[1].drawn.values()) == 8 and set(batches.mixers[1].drawn) == {"d", "hq", "r"}

    resumed = batches_of(tmp_path / "again", config)
    resumed.load_state_dict(state)
    again = [resumed() for _ in range(5)]
    assert all(torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(again, drawn[3:], strict=True))
    assert resumed.drawn == batches.drawn


def test_a_remix_raises_the_replay_share_of_the_stage_under_way_and_is_resumed(tmp_path):
    batches = batches_of(tmp_path, pipeline())
    assert batches.raise_replay_share(2.0, 0.5) == (0.25, 0.5)  # main: the replay pool
    for _ in range(12):  # main's 6 steps × 2 micro-batches
        batches()
    before, after = batches.raise_replay_share(2.0, 0.5)  # now the anneal's: r's weight 1 of 5
    assert (before, after) == (pytest.approx(0.2), pytest.approx(0.4))
    resumed = batches_of(tmp_path / "again", pipeline())
    resumed.load_state_dict(batches.state_dict())
    assert resumed.mixers[1].share({"r"}) == pytest.approx(0.4) and resumed.mixers[0].share({"replay_train"}) == 0.5


def test_a_stage_window_longer_than_the_base_takes_is_named_before_anything_runs():
    from dapt.preflight import check_positions

    config = pipeline(stages=[{"steps": 2}, {"steps": 2, "seq_len": 2048}])
    with pytest.raises(ConfigError, match=r"pretrain.stages\[1\].seq_len: 2048 tokens, but the base model takes at"):
        check_positions(config, 1024, "base/model/config.json")
    check_positions(pipeline(stages=[{"steps": 2, "seq_len": 1024}]), 1024, "base/model/config.json")


def test_one_stage_draws_what_the_run_without_stages_draws(tmp_path):
    from dapt.stages.pretrain import PackedBatches, training_mixture

    config = pipeline(stages=[{"steps": 4}])
    staged = batches_of(tmp_path, config)
    shards = tmp_path / "tokens" / "shards"
    context = StageContext("pretrain", tmp_path / "pretrain", {"seed": 0}, {}, config)
    opened = {p.name: open_split(p) for p in shards.iterdir()}
    unstaged = PackedBatches(training_mixture(context, config.pretrain, opened, shards, seed=0), 4, eos_id=None)
    for _ in range(8):
        assert torch.equal(staged()["input_ids"], unstaged()["input_ids"])
