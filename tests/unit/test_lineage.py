"""`dapt lineage`: harness results (`dapt evaluate --harness` on an artifact) sit under the model they scored."""

import json

from dapt.artifacts import write_manifest
from dapt.cli import main
from dapt.harness_command import build_harness_artifact


def _results(tasks, scores):
    """The results dict as run_harness builds it from lm-eval's output."""
    return {"model": "m", "tasks": tasks, "lm_eval_version": "0", "num_fewshot": None, "limit": None,
            "results": scores, "n_samples": {}, "seconds": 1.0}  # fmt: skip


def _harness(model, tasks, scores):
    """`dapt evaluate --harness` on an artifact, lm-eval's answer given."""
    return build_harness_artifact(
        model, tasks, num_fewshot=None, limit=None, include_path=None, evaluate=lambda: _results(tasks, scores)
    )


def _run_folder(tmp_path):
    run = tmp_path / "run"
    base = write_manifest(
        run / "base", kind="base", name="base", id="b0", config={}, inputs={},
        metrics={"origin": "from scratch", "parameters": 2_000_000}, timings={},
    )  # fmt: skip
    pretrain = write_manifest(
        run / "pretrain", kind="pretrain", name="pretrain", id="p0", config={}, inputs={"base": base},
        metrics={"tokens_trained": 1000, "best_step": 5}, timings={},
    )  # fmt: skip
    return run, base, pretrain


def test_harness_scores_hang_under_the_model_they_scored(tmp_path, capsys):
    run, base, pretrain = _run_folder(tmp_path)
    scores = {"hellaswag": {"acc,none": 0.25, "acc_stderr,none": 0.01, "acc_norm,none": 0.3}}
    _harness(pretrain, ["hellaswag"], scores)
    words = {"dapt_words": {"acc,none": 0.625, "acc_stderr,none": 0.2}}
    _harness(base, ["dapt_words"], words)

    assert main(["lineage", str(run), "--json"]) == 0
    (root,) = json.loads(capsys.readouterr().out)
    assert [child["name"] for child in root["children"]] == ["harness-base", "pretrain"]
    assert root["children"][0]["kind"] == "harness" and root["children"][0]["scores"] == {"dapt_words": {"acc": 0.625}}
    (harness,) = root["children"][1]["children"]
    assert harness["name"] == "harness-pretrain" and harness["children"] == []
    assert harness["scores"] == {"hellaswag": {"acc": 0.25, "acc_norm": 0.3}}

    assert main(["lineage", str(run)]) == 0
    tree = capsys.readouterr().out.splitlines()
    assert tree[1].startswith("├── harness-base") and "dapt_words acc 0.6250" in tree[1]
    assert tree[3].startswith("    └── harness-pretrain") and "hellaswag acc 0.2500, acc_norm 0.3000" in tree[3]


def test_a_group_shows_the_tasks_asked_for_not_its_subtasks(tmp_path, capsys):
    run, _, pretrain = _run_folder(tmp_path)
    scores = {"mmlu": {"acc,none": 0.4}, "mmlu_law": {"acc,none": 0.3}, "mmlu_math": {"acc,none": 0.5}}
    _harness(pretrain, ["mmlu"], scores)
    assert main(["lineage", str(run), "--json"]) == 0
    (root,) = json.loads(capsys.readouterr().out)
    (harness,) = root["children"][0]["children"]
    assert harness["scores"] == {"mmlu": {"acc": 0.4}}


def test_harness_of_a_rebuilt_model_is_left_out(tmp_path, capsys):
    run, _, pretrain = _run_folder(tmp_path)
    _harness(pretrain, ["t"], {"t": {"acc,none": 0.5}})
    manifest = json.loads((run / "pretrain" / "manifest.json").read_text())
    manifest["id"] = "p1"  # the pretrain stage ran again with another config
    (run / "pretrain" / "manifest.json").write_text(json.dumps(manifest))
    assert main(["lineage", str(run)]) == 0
    assert "harness" not in capsys.readouterr().out
