"""Stage cache keys: what identifies each planned stage, and what its typed section is.

A stage's id (`dapt.artifacts.artifact_id`: its kind, its config as planned and its inputs' ids) decides whether a
finished artifact is reused; a changed key rebuilds that stage and everything after it in every existing run folder.
The ids below were recorded before the stages read their typed sections (#15), from the shipped configs.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from dapt.adapted_record import adapted_stages, entry_task
from dapt.artifacts import artifact_id
from dapt.config import CurateConfig, PretrainConfig, TaptConfig, TokenizeConfig, load_config
from dapt.pipeline import StageSpec, plan
from dapt.plan_command import planned_stages

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "src" / "dapt" / "pipelines" / "demo.yaml"
TINY = ROOT / "tests" / "integration" / "tiny.yaml"

RECORDED = {
    "demo": {
        "ingest": "215a707c45d6af31",
        "task-scipy-subpackage": "817b1e1e4bb4f78f",
        "curate": "9439be2a042bbe55",
        "base": "2d781458699e637c",
        "tokenize": "1cc7fe4759eae616",
        "pretrain": "c3fc70e9afd66575",
        "evaluate-lm": "14834d2731560408",
        "adapt-scipy-subpackage-control": "4305a2ed9e4cc717",
        "evaluate-scipy-subpackage-control": "99f035d6ac0266fb",
        "adapt-scipy-subpackage-dapt": "0462ed51b3019577",
        "evaluate-scipy-subpackage-dapt": "ba0c8e328f0c6da6",
        "cost-bases": "9fc26dbe6193ab84",
        "gates": "2ad4634cf855d298",
    },
    "tiny": {
        "ingest": "e2db3552327e49ce",
        "task-xml-subpackage": "2341f3cc4333d92b",
        "curate": "6497460bdf00e02d",
        "base": "ba7d144d117d518c",
        "tokenize": "fd7bdffdb9c4c6aa",
        "pretrain": "334f420d212dd2df",
        "evaluate-lm": "5b442a89404e0f58",
        "adapt-xml-subpackage-control": "283e923f7040c233",
        "evaluate-xml-subpackage-control": "927f91fc828a774c",
        "adapt-xml-subpackage-dapt": "e78b6cee0d1f2b34",
        "evaluate-xml-subpackage-dapt": "66fe815b11c9b27a",
        "cost-bases": "6a63190761a707a2",
        "gates": "256bec5bdf3dbd9a",
    },
    "tiny with TAPT": {
        "ingest": "e2db3552327e49ce",
        "task-xml-subpackage": "2341f3cc4333d92b",
        "curate": "6497460bdf00e02d",
        "base": "ba7d144d117d518c",
        "tokenize": "fd7bdffdb9c4c6aa",
        "pretrain": "334f420d212dd2df",
        "evaluate-lm": "5b442a89404e0f58",
        "tapt-xml-subpackage-control": "bce63cafa954e1a8",
        "adapt-xml-subpackage-control": "c4ef8c0ccc7e7a76",
        "evaluate-xml-subpackage-control": "be8f39834fb96002",
        "tapt-xml-subpackage-dapt": "8b5e5abb725ff935",
        "adapt-xml-subpackage-dapt": "33767474a9df41ea",
        "evaluate-xml-subpackage-dapt": "67c4126a2cd58388",
        "cost-bases": "6a63190761a707a2",
        "gates": "256bec5bdf3dbd9a",
    },
    "tiny with every typed section": {
        "ingest": "e2db3552327e49ce",
        "task-xml-subpackage": "2341f3cc4333d92b",
        "curate": "6497460bdf00e02d",
        "base": "ba7d144d117d518c",
        "tokenize": "fd7bdffdb9c4c6aa",
        "extend-vocab": "2ed4ee0bd96dd356",
        "tokenize-extended": "fb7cb4bfff0be9b6",
        "extend-context": "75b4705d2005d766",
        "pretrain": "361f5656aa850080",
        "evaluate-lm": "44940db891a989fd",
        "tapt-xml-subpackage-control": "008002de8d18dfc0",
        "adapt-xml-subpackage-control": "883d28727ffce5ab",
        "evaluate-xml-subpackage-control": "c706e1e109ebb9b1",
        "tapt-xml-subpackage-dapt": "7cdf295c3b1d20da",
        "adapt-xml-subpackage-dapt": "acc011763ebe6370",
        "evaluate-xml-subpackage-dapt": "35df870b4b939545",
        "cost-bases": "1123f9ba289de494",
        "restore": "7f76c07067de19be",
        "cost-restored": "8bf60fde0d5821d2",
        "gates": "fd1dd3f56a47fb9f",
    },
}
# every stage that reads a typed section planned: vocabulary and context extension, TAPT, restore
EVERY_SECTION = [
    "restore={method: merge, weight: 0.25}",
    "vocab.add=8",
    "pretrain.context.length=256",
    "tasks.0.tapt_steps=2",
]
CASES = {
    "demo": (DEMO, []),
    "tiny": (TINY, []),
    "tiny with TAPT": (TINY, ["tasks.0.tapt_steps=3"]),
    "tiny with every typed section": (TINY, EVERY_SECTION),
}


def stage_ids(specs: list[StageSpec]) -> dict[str, str]:
    """Every stage's id as the runner computes it, each input's id being its planned stage's."""
    ids: dict[str, str] = {}
    for spec in specs:
        inputs = {role: ids[source] for role, source in spec.inputs.items()}
        ids[spec.name] = artifact_id(spec.kind, spec.config, inputs)
    return ids


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_shipped_configs_plan_the_stage_ids_they_always_had(case):
    path, overrides = CASES[case]
    assert stage_ids(plan(load_config(path, overrides))) == RECORDED[case], (
        "a stage's cache key changed, so every finished run rebuilds it; if that is meant (the YAML or the key "
        "changed on purpose), record the new ids here"
    )


def test_how_a_stage_runs_is_not_part_of_its_id():
    execution = [
        "curate.workers=2",
        "curate.backend=ray",
        "tokenize.workers=3",
        "tokenize.batch_size=7",
        "pretrain.compile=true",
        "pretrain.max_logits_mb=64",
    ]
    assert stage_ids(plan(load_config(TINY, execution))) == RECORDED["tiny"]
    assert "compile" not in PretrainConfig(compile=True).cache_key()
    for section in (CurateConfig(), TokenizeConfig()):
        assert set(section.model_dump()) - set(section.cache_key()) == {"workers", "batch_size", "backend"}


def test_every_typed_section_is_the_one_its_cache_key_was_made_from():
    config = load_config(TINY, EVERY_SECTION)
    typed = {spec.name: spec for spec in plan(config) if spec.section is not None}
    assert {"base", "curate", "tokenize", "extend-vocab", "tokenize-extended", "extend-context", "pretrain"} <= set(
        typed
    )
    assert {"tapt-xml-subpackage-control", "tapt-xml-subpackage-dapt", "restore", "cost-restored"} <= set(typed)
    # a task's stages read its TaskConfig, each keyed by its own part of it
    assert {"task-xml-subpackage", "adapt-xml-subpackage-dapt", "evaluate-xml-subpackage-dapt"} <= set(typed)
    (task,) = config.tasks
    for spec in typed.values():
        if spec.kind in ("task", "adapt", "evaluate_task"):
            assert spec.section is task, spec.name
            continue
        if spec.kind == "cost":  # what the answers depend on: part of the safety section (the gates' are not)
            assert spec.section is config.safety, spec.name
            assert spec.config["safety"].items() <= config.safety.cache_key().items(), spec.name
            continue
        (key,) = (value for value in spec.config.values() if isinstance(value, dict))
        assert key == spec.section.cache_key(), spec.name
    assert typed["pretrain"].section is config.pretrain
    assert typed["task-xml-subpackage"].config["task"] == task.examples_key()
    assert typed["adapt-xml-subpackage-dapt"].config["task"] == task.variant_key()
    assert {"data", "judge", "tapt_steps", "seeds"}.isdisjoint(task.variant_key())
    evaluation = typed["evaluate-xml-subpackage-dapt"].config
    assert (evaluation["max_length"], evaluation["type"]) == (task.max_length, task.type)


def test_an_adapted_task_recorded_before_a_field_existed_plans_with_its_default(tmp_path):
    """adapted.json keeps a task as it was dumped then: a field added to tasks since takes its default."""
    (task,) = load_config(TINY).tasks
    old = task.model_dump(mode="json")
    del old["beta"], old["tapt_micro_batch_size"]
    entry = {"task": old, "original_base": {"name": "base"}, "dapt_base": {"name": "pretrain"}}
    planned = adapted_stages(entry_task(entry, tmp_path), entry, 0, "auto")
    current = adapted_stages(task, entry, 0, "auto")
    assert [(s.name, s.config, s.inputs, s.section) for s in planned] == [
        (s.name, s.config, s.inputs, s.section) for s in current
    ]
    assert planned[-1].section.beta == 0.1


def test_tapt_micro_batch_size_comes_from_the_task():
    default = {s.name: s for s in plan(load_config(TINY, ["tasks.0.tapt_steps=3"]))}
    two = {s.name: s for s in plan(load_config(TINY, ["tasks.0.tapt_steps=3", "tasks.0.tapt_micro_batch_size=2"]))}
    for variant in ("control", "dapt"):
        tapt, adapt = f"tapt-xml-subpackage-{variant}", f"adapt-xml-subpackage-{variant}"
        assert default[tapt].config["tapt"]["micro_batch_size"] == 4  # the default, as it was hard-coded before
        assert two[tapt].section == TaptConfig(steps=3, lr=5e-5, seq_len=128, micro_batch_size=2)
        assert two[tapt].config["tapt"] == two[tapt].section.cache_key()
        assert two[adapt].config == default[adapt].config  # the variant's own key leaves TAPT's settings to TAPT


def test_a_plan_pilot_trains_with_its_own_pretraining_section():
    config = load_config(TINY)
    specs = planned_stages(config, [0.1, 0.4], steps=5, eval_every=1, forgetting_budget=0.05)
    pilots = [spec for spec in specs if spec.kind == "pretrain"]
    assert [(p.section.replay_fraction, p.section.max_steps) for p in pilots] == [(0.1, 5), (0.4, 5)]
    assert all(p.config["pretrain"] == p.section.cache_key() for p in pilots)
