"""`dapt plan` and `pretrain.replay_fraction: plan`: what a user sees without a plan, with one, and with a budget too
small for pilots."""

from pathlib import Path

import pytest

from dapt.artifacts import write_manifest
from dapt.cli import main
from dapt.config import load_config
from dapt.errors import ConfigError
from dapt.pipeline import with_planned_replay
from dapt.plan_command import parse_share, pilot_size

TINY = Path(__file__).parents[1] / "integration" / "tiny.yaml"


def test_replay_fraction_plan_without_a_plan_stops_with_exit_2_naming_the_fix(tmp_path, capsys):
    code = main(["run", str(TINY), "--out", str(tmp_path / "run"), "--set", "pretrain.replay_fraction=plan"])
    error = capsys.readouterr().err
    assert code == 2
    assert "replay_fraction: plan" in error and "dapt plan" in error
    assert not (tmp_path / "run" / "ingest").exists()  # stopped before any stage ran


def finished_plan(run_dir: Path, recommendation: dict | None) -> None:
    """A plan artifact in `run_dir` with this recommendation, as `dapt plan` leaves it."""
    (run_dir / "plan").mkdir()
    metrics = {"recommendation": recommendation}
    write_manifest(
        run_dir / "plan", kind="plan", name="plan", id="x", config={}, inputs={}, metrics=metrics, timings={}
    )


def test_replay_fraction_plan_takes_the_plans_recommendation(tmp_path):
    config = load_config(TINY, ["pretrain.replay_fraction=plan"])
    finished_plan(tmp_path, {"replay_fraction": 0.17, "steps": 8})
    assert with_planned_replay(config, tmp_path).pretrain.replay_fraction == 0.17
    numbered = load_config(TINY, ["pretrain.replay_fraction=0.3"])
    assert with_planned_replay(numbered, tmp_path) is numbered  # a number is left alone


def test_a_plan_without_a_recommendation_is_refused(tmp_path):
    finished_plan(tmp_path, None)
    with pytest.raises(ConfigError, match="no recommendation"):
        with_planned_replay(load_config(TINY, ["pretrain.replay_fraction=plan"]), tmp_path)


def test_a_budget_too_small_for_pilots_says_which_budget_would_do(tmp_path, capsys):
    code = main(["plan", str(TINY), "--out", str(tmp_path / "run"), "--budget", "5%"])
    error = capsys.readouterr().err
    assert code == 2
    assert "--budget 300% or more" in error  # 3 pilots of 8 steps out of tiny.yaml's 8
    assert not (tmp_path / "run").exists()


def test_pilots_share_the_budget():
    config = load_config(TINY, ["pretrain.max_steps=400"])
    assert pilot_size(config, 0.1, [0.05, 0.25, 0.5]) == (13, 3)  # 40 steps over 3 pilots, 4 evaluations each
    assert parse_share("5%", "--budget") == parse_share("0.05", "--budget") == 0.05
    with pytest.raises(ConfigError, match="--budget 'lots'"):
        parse_share("lots", "--budget")


@pytest.mark.parametrize("value", ["1.5", "-0.1", "lots"])
def test_a_bad_replay_fraction_gets_one_message_naming_plan(value):
    with pytest.raises(ConfigError) as error:
        load_config(TINY, [f"pretrain.replay_fraction={value}"])
    assert "pretrain.replay_fraction: a share from 0 to below 1, or plan" in str(error.value)
    assert "literal" not in str(error.value)
