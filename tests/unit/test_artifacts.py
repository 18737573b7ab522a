"""The artifact contract: manifest written last, unfinished folders never read as finished, caching."""

import json

import pytest

from dapt.artifacts import MANIFEST_NAME, read_artifact
from dapt.config import config_from_dict
from dapt.pipeline import StageSpec, run_stages

CONFIG = config_from_dict(
    {
        "name": "t",
        "base": {"preset": {}},
        "sources": [{"name": "d", "role": "domain", "kind": "pydoc_topics"}],
    }
)


class Recorder:
    """Stages that write a file, record that they ran, and can be made to fail."""

    def __init__(self):
        self.ran: list[str] = []
        self.fail: set[str] = set()
        self.content: dict[str, str] = {}

    def stage(self, name):
        def run(context):
            self.ran.append(name)
            (context.out / "data.txt").write_text(self.content.get(name, name))
            assert not (context.out / MANIFEST_NAME).exists(), "the manifest must be written after the stage's files"
            if name in self.fail:
                raise RuntimeError(f"{name} failed")
            return {"value": len(self.ran)}

        return run

    def plan(self, settings=None):
        settings = settings or {}
        return [
            StageSpec("first", "first", self.stage("first"), {"x": settings.get("first", 1)}),
            StageSpec("second", "second", self.stage("second"), {"y": 2}, {"data": "first"}),
            StageSpec("third", "third", self.stage("third"), {"z": 3}, {"data": "second"}),
        ]


def test_manifest_is_written_last_and_records_inputs(tmp_path):
    recorder = Recorder()
    artifacts = run_stages(recorder.plan(), CONFIG, tmp_path)
    manifest = json.loads((tmp_path / "second" / MANIFEST_NAME).read_text())
    assert manifest["inputs"]["data"]["id"] == artifacts["first"].id
    assert manifest["inputs"]["data"]["content_hash"] == artifacts["first"].content_hash
    assert manifest["metrics"] == {"value": 2}
    assert not list(tmp_path.rglob("*.tmp")), "no temporary files left behind"


def test_rerun_with_nothing_changed_is_a_cache_hit(tmp_path, capsys):
    recorder = Recorder()
    run_stages(recorder.plan(), CONFIG, tmp_path)
    recorder.ran.clear()
    run_stages(recorder.plan(), CONFIG, tmp_path)
    assert recorder.ran == []
    assert capsys.readouterr().err.count("cached, skipped") == 3


def test_a_folder_without_manifest_is_unfinished_and_is_rerun(tmp_path):
    recorder = Recorder()
    recorder.fail = {"second"}
    with pytest.raises(RuntimeError):
        run_stages(recorder.plan(), CONFIG, tmp_path)
    assert (tmp_path / "second" / "data.txt").exists()
    assert read_artifact(tmp_path / "second") is None, "a crashed stage must not look finished"
    recorder.fail, recorder.ran = set(), []
    run_stages(recorder.plan(), CONFIG, tmp_path)
    assert recorder.ran == ["second", "third"]


def test_config_change_reruns_the_stage_and_what_depends_on_it(tmp_path):
    recorder = Recorder()
    run_stages(recorder.plan(), CONFIG, tmp_path)
    recorder.ran.clear()
    run_stages(recorder.plan({"first": 5}), CONFIG, tmp_path)
    assert recorder.ran == ["first", "second", "third"]


def test_deleted_artifact_is_rebuilt_and_dependents_follow_its_content(tmp_path):
    recorder = Recorder()
    run_stages(recorder.plan(), CONFIG, tmp_path)
    # Rebuilt with identical content: the stages downstream are still valid and stay cached.
    recorder.ran.clear()
    (tmp_path / "second" / MANIFEST_NAME).unlink()
    run_stages(recorder.plan(), CONFIG, tmp_path)
    assert recorder.ran == ["second"]
    # Rebuilt with different content: everything downstream is rebuilt too; upstream is untouched.
    recorder.ran.clear()
    recorder.content["second"] = "something else"
    (tmp_path / "second" / MANIFEST_NAME).unlink()
    run_stages(recorder.plan(), CONFIG, tmp_path)
    assert recorder.ran == ["second", "third"]
