"""`dapt plan` end to end on the tiny pipeline: pilots as cached artifacts, a fitted plan, a recommendation within
the forgetting budget that `pretrain.replay_fraction: plan` then reads."""

import json
from pathlib import Path

import pytest

from dapt.cli import main
from dapt.config import load_config
from dapt.pipeline import with_planned_replay

pytestmark = pytest.mark.integration
TINY = Path(__file__).parent / "tiny.yaml"


def test_dapt_plan_runs_pilots_fits_and_recommends(tmp_path, capsys):
    # a from-scratch model learns every kind of text at first: with a 100% budget nothing counts as forgetting
    options = ["--set", "pretrain.max_steps=80", "--budget", "30%", "--forgetting-budget", "100%"]
    assert main(["plan", str(TINY), "--out", str(tmp_path), *options]) == 0
    printed = capsys.readouterr()
    plan = json.loads((tmp_path / "plan" / "plan.json").read_text())
    assert [pilot["name"] for pilot in plan["pilots"]] == [f"plan-pretrain-r{r}-s8" for r in ("0.05", "0.25", "0.5")]
    for pilot in plan["pilots"]:
        assert [e["step"] for e in pilot["evaluations"]] == [0, 2, 4, 6, 8]
        assert (tmp_path / pilot["name"] / "manifest.json").is_file()
    assert plan["pilot_share"] == pytest.approx(0.3)
    chosen = plan["recommendation"]
    assert 0.05 <= chosen["replay_fraction"] <= 0.5
    assert chosen["general_val_loss"] <= plan["general_ceiling"]
    assert chosen["domain_interval"][0] <= chosen["domain_val_loss"] <= chosen["domain_interval"][1]
    assert f"pretrain.replay_fraction {chosen['replay_fraction']:g}" in printed.out
    assert (tmp_path / "plan" / "plan.png").stat().st_size > 10_000
    assert "## Recommendation" in (tmp_path / "plan" / "plan.md").read_text()

    planned = with_planned_replay(load_config(TINY, ["pretrain.replay_fraction=plan"]), tmp_path)
    assert planned.pretrain.replay_fraction == chosen["replay_fraction"]

    assert main(["plan", str(TINY), "--out", str(tmp_path), *options]) == 0  # again: every stage cached
    assert "running" not in capsys.readouterr().err
