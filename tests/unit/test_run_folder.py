"""The run folder: artifacts kept by id across re-runs, `dapt gc`, what dapt may delete, the path rule, the lock."""

import json
import os
import signal

import pytest

from dapt.artifacts import MANIFEST_NAME, read_artifact
from dapt.cli import main
from dapt.config import config_from_dict
from dapt.errors import ConfigError
from dapt.pipeline import StageSpec, run_stages
from dapt.run_folder import ATTEMPT_NAME, STORE_NAME, garbage, inside, locked
from helpers.lock_holder import hold_lock

CONFIG = config_from_dict(
    {"name": "t", "base": {"preset": {}}, "sources": [{"name": "d", "role": "domain", "kind": "pydoc_topics"}]}
)


METRICS = {  # what lineage shows of each kind
    "base": {"origin": "a test", "parameters": 1000},
    "model": {"tokens_trained": 100, "best_step": 1},
    "variant": {"recipe": "full", "variant": "dapt"},
}


class Stages:
    """A base, a model built on it and a variant built on that, each writing one file (its config's value)."""

    def __init__(self):
        self.ran: list[str] = []

    def stage(self, name):
        def run(context):
            self.ran.append(name)
            (context.out / "weights.txt").write_text(json.dumps(context.config))
            return METRICS[name]

        return run

    def plan(self, base=1, model=1, variant=1):
        return [
            StageSpec("base", "base", self.stage("base"), {"v": base}),
            StageSpec("model", "pretrain", self.stage("model"), {"v": model}, {"base": "base"}),
            StageSpec(
                "variant", "adapt", self.stage("variant"), {"v": variant, "task": {"name": "t"}}, {"base": "model"}
            ),
        ]


def test_a_changed_config_keeps_the_earlier_artifact_and_going_back_is_a_cache_hit(tmp_path, capsys):
    stages = Stages()
    first = run_stages(stages.plan(), CONFIG, tmp_path)
    earlier = (tmp_path / "model").resolve()
    assert earlier.parent.name == STORE_NAME and earlier.name == f"model-{first['model'].id}"

    second = run_stages(stages.plan(model=2), CONFIG, tmp_path)
    assert second["model"].id != first["model"].id
    assert json.loads((tmp_path / "model" / "weights.txt").read_text())["v"] == 2  # the name: the current one
    assert json.loads((earlier / "weights.txt").read_text())["v"] == 1, "the earlier build is kept, unchanged"
    assert read_artifact(earlier).id == first["model"].id
    assert f"the earlier build stays in {earlier}" in capsys.readouterr().err

    stages.ran.clear()
    run_stages(stages.plan(), CONFIG, tmp_path)  # back to the first config: nothing runs
    assert stages.ran == []
    assert (tmp_path / "model").resolve() == earlier


def test_lineage_shows_the_current_and_the_earlier_builds(tmp_path, capsys):
    stages = Stages()
    first = run_stages(stages.plan(), CONFIG, tmp_path)
    run_stages(stages.plan(model=2), CONFIG, tmp_path)
    capsys.readouterr()
    assert main(["lineage", str(tmp_path), "--json"]) == 0
    (root,) = json.loads(capsys.readouterr().out)
    models = [(child["id"], child["current"]) for child in root["children"]]
    assert len(models) == 2 and (first["model"].id, False) in models
    earlier = next(child for child in root["children"] if not child["current"])
    assert earlier["path"].endswith(f"{STORE_NAME}/model-{first['model'].id}")
    assert [variant["current"] for variant in earlier["children"]] == [False]  # the variant built on it, kept too
    assert main(["lineage", str(tmp_path)]) == 0
    assert "earlier build, kept in" in capsys.readouterr().out


def test_gc_frees_what_nothing_refers_to_and_keeps_the_inputs_of_current_artifacts(tmp_path, capsys):
    stages = Stages()
    first = run_stages(stages.plan(), CONFIG, tmp_path)
    # only the model is rebuilt and pointed at: the current variant is still the one built on the earlier model
    run_stages(stages.plan(model=2)[:2], CONFIG, tmp_path)
    unused, _ = garbage(tmp_path)
    assert unused == [], "the earlier model is the input of the current variant"

    run_stages(stages.plan(model=2), CONFIG, tmp_path)  # now the variant follows the new model
    stray = tmp_path / STORE_NAME / "notes"
    stray.mkdir()
    (stray / "mine.txt").write_text("keep")
    capsys.readouterr()
    assert main(["gc", str(tmp_path), "--dry-run"]) == 0
    assert (tmp_path / STORE_NAME / f"model-{first['model'].id}").is_dir(), "a dry run deletes nothing"
    assert main(["gc", str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    for name in ("model", "variant"):
        assert f"{name}-{first[name].id}" in out and not (tmp_path / STORE_NAME / f"{name}-{first[name].id}").exists()
    assert "freed" in out and "2 artifact(s)" in out
    assert f"left alone: {stray}" in err and (stray / "mine.txt").read_text() == "keep"
    for name in ("base", "model", "variant"):
        assert read_artifact(tmp_path / name) is not None
    stages.ran.clear()
    run_stages(stages.plan(model=2), CONFIG, tmp_path)
    assert stages.ran == [], "gc kept everything the current stages need"


def test_an_older_layout_is_used_where_it_is_and_set_aside_when_replaced(tmp_path):
    stages = Stages()
    run_stages(stages.plan(), CONFIG, tmp_path)
    # as an earlier dapt (or `cp -rL`) leaves it: the artifacts themselves under the stages' names
    for name in ("base", "model", "variant"):
        link = tmp_path / name
        target = link.resolve()
        link.unlink()
        target.rename(link)
    stages.ran.clear()
    run_stages(stages.plan(), CONFIG, tmp_path)
    assert stages.ran == [] and not (tmp_path / "model").is_symlink()
    old_id = read_artifact(tmp_path / "model").id
    run_stages(stages.plan(model=2), CONFIG, tmp_path)
    assert (tmp_path / "model").is_symlink()
    assert read_artifact(tmp_path / STORE_NAME / f"model-{old_id}").id == old_id, "set aside, not deleted"


def test_a_stage_named_folder_dapt_did_not_make_stops_the_run_and_is_kept(tmp_path):
    stages = Stages()
    (tmp_path / "model").mkdir(parents=True)
    (tmp_path / "model" / "important.txt").write_text("notes")
    with pytest.raises(ConfigError, match=rf"{tmp_path / 'model'}: a folder that dapt did not make"):
        run_stages(stages.plan(), CONFIG, tmp_path)
    assert (tmp_path / "model" / "important.txt").read_text() == "notes"
    # inside .artifacts/ too: a folder under an artifact's own place without the marker is not deleted
    (tmp_path / "model" / "important.txt").unlink()
    (tmp_path / "model").rmdir()
    first = run_stages(stages.plan(), CONFIG, tmp_path)
    folder = (tmp_path / "model").resolve()
    (folder / MANIFEST_NAME).unlink()
    (folder / ATTEMPT_NAME).unlink()
    with pytest.raises(ConfigError, match="a folder that dapt did not make"):
        run_stages(stages.plan(), CONFIG, tmp_path)
    assert (folder / "weights.txt").exists() and first["model"].id in folder.name


def test_an_unfinished_attempt_of_ours_is_started_over(tmp_path):
    stages = Stages()
    run_stages(stages.plan(), CONFIG, tmp_path)
    folder = (tmp_path / "variant").resolve()
    (folder / MANIFEST_NAME).unlink()  # as if killed before the end: the attempt marker says it is dapt's
    (folder / "leftover.tmp").write_text("x")
    stages.ran.clear()
    run_stages(stages.plan(), CONFIG, tmp_path)
    assert stages.ran == ["variant"] and not (folder / "leftover.tmp").exists()


def test_no_path_outside_the_run_folder_is_written(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    for escaping in (run / ".." / "victim", run / "x" / ".." / ".." / "victim", tmp_path / "victim", run):
        with pytest.raises(ConfigError, match="outside the run folder"):
            inside(run, escaping)
    assert inside(run, run / "stage") == run / "stage"
    # a stage whose name would escape (names from the config are checked before, this is the second line)
    spec = StageSpec("x/../../victim", "task", Stages().stage("x"), {})
    with pytest.raises(ConfigError, match="outside the run folder"):
        run_stages([spec], CONFIG, run)
    assert not (tmp_path / "victim").exists() and not list(tmp_path.glob("victim*"))


def test_a_second_run_on_a_locked_folder_stops_naming_the_holder_and_a_killed_holder_never_blocks(tmp_path, capsys):
    run = tmp_path / "run"
    holder = hold_lock(run)
    try:
        with pytest.raises(ConfigError, match=rf"in use by another dapt process \(PID {holder.pid},") as error:
            with locked(run):
                pass
        assert "Wait for it to finish" in str(error.value) and "another --out" in str(error.value)
        # read-only commands do not need the lock
        assert main(["lineage", str(run)]) == 0
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with locked(run) as folder:  # the OS released the killed process's lock
        assert json.loads((folder / ".lock").read_text())["pid"] == os.getpid()


def test_deleting_a_stage_name_builds_it_again_and_keeps_the_earlier_build(tmp_path, capsys):
    stages = Stages()
    first = run_stages(stages.plan(), CONFIG, tmp_path)
    earlier = (tmp_path / "model").resolve()
    (tmp_path / "model").unlink()  # `rm -r runs/x/model`: the name goes, the artifact stays
    stages.ran.clear()
    capsys.readouterr()
    again = run_stages(stages.plan(), CONFIG, tmp_path)
    assert stages.ran == ["model"], "built again; the variant is cached: the same content"
    assert again["model"].id == first["model"].id and (tmp_path / "model").resolve() == earlier
    kept = earlier.with_name(f"{earlier.name}~1")
    assert (
        read_artifact(kept).id == first["model"].id and f"the earlier build stays in {kept}" in capsys.readouterr().err
    )
