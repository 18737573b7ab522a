"""`dapt adapt`'s record in a run folder (adapted.json), read: which tasks were branched there, from which bases.

`dapt adapt` writes the record; `dapt lineage` shows the bases it names (they may live in another run folder),
and `dapt report` reports the tasks it lists beside the run's own, leaving out those whose base was rebuilt since.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from dapt.artifacts import Artifact, read_artifact
from dapt.config import PipelineConfig, TaskConfig, _explain
from dapt.errors import ConfigError
from dapt.pipeline import StageSpec, plan, task_data_stage, variant_stages
from dapt.run_folder import ADAPTED_NAME, run_folder_of


def read_adapted(run_dir: Path) -> list[dict[str, Any]]:
    """The entries of a run folder's adapted.json (none when `dapt adapt` never wrote there)."""
    path = run_dir / ADAPTED_NAME
    return json.loads(path.read_text())["adapted"] if path.is_file() else []


def entry_task(entry: dict[str, Any], run_dir: Path) -> TaskConfig:
    """The task of an adapted.json entry, validated (fields added to tasks since it was written take their
    defaults)."""
    try:
        return TaskConfig.model_validate(entry["task"])
    except ValidationError as error:
        raise _explain(error, f"{run_dir / ADAPTED_NAME}: task {entry['task'].get('name')!r}") from None


def adapted_stages(task: TaskConfig, entry: dict[str, Any], seed: int, precision: str) -> list[StageSpec]:
    """The planned stages of `task`, branched as an adapted.json `entry` records: the task's examples, then its
    variants and evaluations."""
    bases = {"control": entry["original_base"]["name"], "dapt": entry["dapt_base"]["name"]}
    return [task_data_stage(task, seed), *variant_stages(task, seed, bases, precision)]


def run_stages_found(config: PipelineConfig, source_run: Path) -> dict[str, Artifact]:
    """The finished artifacts of a pipeline's planned stages in its run folder."""
    found = {spec.name: read_artifact(source_run / spec.name) for spec in plan(config)}
    return {name: artifact for name, artifact in found.items() if artifact is not None}


def adapted_sources(run_dir: Path) -> Path | None:
    """The run folder the adapted bases of `run_dir` come from, when `run_dir` has no pipeline of its own."""
    sources = {entry["source_run"] for entry in read_adapted(run_dir)}
    if len(sources) > 1:
        raise ConfigError(f"{run_dir}: its adapted tasks come from several runs ({', '.join(sorted(sources))})")
    return Path(sources.pop()) if sources else None


def adapted_tasks(
    run_dir: Path, seed: int, precision: str
) -> tuple[list[tuple[TaskConfig, dict[str, Any], dict[str, Artifact]]], list[str]]:
    """The tasks `dapt adapt` branched into `run_dir`: (task, its adapted.json entry, its finished artifacts) each,
    and the names of those left out because a base was rebuilt since (their variants are of the old base)."""
    found, stale = [], []
    for entry in read_adapted(run_dir):
        current = {key: read_artifact(Path(entry[key]["path"])) for key in ("dapt_base", "original_base")}
        if any(a is None or a.id != entry[key]["id"] for key, a in current.items()):
            stale.append(entry["task"]["name"])
            continue
        task = entry_task(entry, run_dir)
        stages = adapted_stages(task, entry, seed, precision)
        artifacts = {spec.name: read_artifact(run_dir / spec.name) for spec in stages}
        found.append(
            (
                task,
                entry,
                {name: artifact for name, artifact in artifacts.items() if artifact is not None},
            )
        )
    return found, stale


def external_models(run_dir: Path) -> list[Artifact]:
    """The bases outside `run_dir` that its adapted tasks were branched from (for the lineage tree)."""
    models = {}
    for entry in read_adapted(run_dir):
        for folder in entry["chain"]:
            artifact = read_artifact(Path(folder))
            if artifact is not None and run_folder_of(Path(folder)).resolve() != run_dir.resolve():
                models[artifact.id] = artifact
    return list(models.values())
