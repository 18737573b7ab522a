"""`dapt adapt --base ARTIFACT --task TASK.yaml [--out RUN_DIR]`: branch a finished base into a new task.

A DAPT base from an earlier run (e.g. `runs/x/pretrain`) is reused as it is: nothing in its folder is
written, and its files are hashed again before a stage builds on it (the same check as for reuse inside a
run), so a modified base is an error. The control variant starts from the original base that the DAPT
base's manifest names as its own base. The task's stages — examples, variants, evaluations — are the same
stages a pipeline would plan, and land in a run folder (by default the base's own); the folder's
`adapted.json` records which task was branched from which base, so `dapt lineage` and `dapt report` show
them with the run's own tasks.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import ValidationError

from dapt.adapted_record import adapted_stages, read_adapted, run_stages_found
from dapt.artifacts import Artifact, atomic_write_text, read_artifact
from dapt.config import PipelineConfig, TaskConfig, _explain, load_config, read_yaml_mapping
from dapt.errors import ConfigError, DataError, disk_full_reported
from dapt.pipeline import run_stages, say
from dapt.report.build import build_report, print_headline
from dapt.run_folder import ADAPTED_NAME, absolute, locate, locked, run_artifacts, run_folder_of

ADAPTABLE_KINDS = ("pretrain", "tapt")  # an adapted base: it has an original base to compare with


def _find_by_id(artifact_id: str, search: list[Path]) -> Artifact | None:
    for run_dir in search:
        for found in run_artifacts(run_dir) if run_dir.is_dir() else []:
            if found.artifact.id == artifact_id:
                return found.artifact
    return None


def resolve_base(spec: str, out: Path | None) -> Artifact:
    """The DAPT base named by --base: an artifact folder, a run folder (its `pretrain`), or an artifact id."""
    path = Path(spec)
    if path.is_dir():
        artifact = read_artifact(path) or read_artifact(path / "pretrain")
        if artifact is None:
            raise ConfigError(
                f"--base {spec}: no finished artifact there (no manifest.json in {path.resolve()}, nor in its "
                "pretrain/ folder); give a DAPT base artifact such as runs/<name>/pretrain"
            )
    else:
        search = ([out] if out else []) + sorted(p for p in Path("runs").glob("*") if p.is_dir())
        found = _find_by_id(spec, search)
        if found is None:
            raise ConfigError(
                f"--base {spec}: not a folder, and no artifact with that id in "
                f"{', '.join(str(p) for p in search) or './runs (empty)'}; give the artifact's folder instead"
            )
        artifact = found
    if artifact.kind not in ADAPTABLE_KINDS:
        raise ConfigError(
            f"--base {spec}: {artifact.manifest['name']!r} is a {artifact.kind} artifact; give an adapted base "
            f"({' or '.join(ADAPTABLE_KINDS)} artifact, e.g. runs/<name>/pretrain), whose original base becomes "
            "the control"
        )
    return artifact


def base_chain(artifact: Artifact) -> list[Artifact]:
    """The artifact and every base above it, up to the original base (kind `base`), from the manifests."""
    chain = [artifact]
    while chain[-1].kind != "base":
        current = chain[-1]
        recorded = current.manifest["inputs"].get("base")
        if recorded is None:
            raise DataError(
                f"{current.path}: its manifest names no base; cannot find the original base for the control"
            )
        run_dir = run_folder_of(current.path)
        parent = locate(run_dir, recorded["name"], recorded["id"])
        if parent is None:
            raise DataError(
                f"{current.path}: its base {recorded['name']!r} (id {recorded['id']}) is not in {run_dir} (missing "
                "or unfinished, under its name or in .artifacts/); the control variant must start from that "
                "original base"
            )
        chain.append(parent)
    return chain


def read_task_file(path: Path) -> list[TaskConfig]:
    """One task (a mapping with the keys of a pipeline's `tasks:` entry) or several (`tasks: [...]`)."""
    raw = read_yaml_mapping(path, what="task file", expected="task keys (name, type, data, ...)")
    entries = raw["tasks"] if set(raw) == {"tasks"} and isinstance(raw["tasks"], list) else [raw]
    tasks = []
    for index, entry in enumerate(entries):
        try:
            task = TaskConfig.model_validate(entry)
        except ValidationError as error:
            raise _explain(error, f"{path}" + (f" (tasks[{index}])" if len(entries) > 1 else "")) from None
        for field in ("train", "test"):
            value = getattr(task.data, field)
            if value:
                resolved = Path(value) if Path(value).is_absolute() else (path.parent / value).resolve()
                if not resolved.is_file():
                    raise ConfigError(f"{path}: data.{field}: file {resolved.name!r} not found (looked in {resolved})")
                setattr(task.data, field, str(resolved))
        tasks.append(task)
    return tasks


def source_config(dapt_base: Artifact) -> PipelineConfig:
    """The pipeline config of the run that made the base (its run folder's pipeline.yaml)."""
    pipeline_file = run_folder_of(dapt_base.path) / "pipeline.yaml"
    if not pipeline_file.is_file():
        raise ConfigError(
            f"{dapt_base.path}: its folder has no pipeline.yaml; `dapt adapt` branches bases from run folders "
            "written by `dapt run` (the report needs that run's other artifacts)"
        )
    return load_config(pipeline_file)


def run_adapt(base: str, task_file: Path, out: Path | None) -> int:
    dapt_base = resolve_base(base, out)
    chain = base_chain(dapt_base)
    original = chain[-1]
    config = source_config(dapt_base)
    source_run = run_folder_of(dapt_base.path).resolve()
    run_dir = (out or source_run).resolve()
    if run_dir != source_run:
        if (run_dir / "pipeline.yaml").is_file():
            raise ConfigError(
                f"--out {run_dir}: that is the run folder of another pipeline; give the base's own run folder "
                f"({source_run}, the default) or a new folder"
            )
        earlier = {entry["source_run"] for entry in read_adapted(run_dir)} - {str(source_run)}
        if earlier:
            raise ConfigError(
                f"--out {run_dir}: it holds tasks adapted from bases of another run ({', '.join(sorted(earlier))}); "
                "give a new folder"
            )
    tasks = read_task_file(task_file)
    in_pipeline = {t.name for t in config.tasks} if run_dir == source_run else set()
    clash = sorted(in_pipeline & {t.name for t in tasks})
    if clash:
        raise ConfigError(
            f"{task_file}: task name(s) {', '.join(clash)} already belong to the pipeline of {run_dir}; rename the "
            "task (its folders would overwrite the pipeline's)"
        )
    names = {t.name for t in tasks}
    for task in tasks:
        if task.start_from and task.start_from not in names:
            raise ConfigError(
                f"{task_file}: task {task.name!r} starts from {task.start_from!r}, which is not in this task file; "
                "put both tasks in it (`tasks: [...]`)"
            )
    # the paths under the stages' names (not resolved through their links): a base rebuilt since is then seen as such
    record = {"path": str(absolute(dapt_base.path)), "name": dapt_base.manifest["name"], "id": dapt_base.id}
    entries = [
        {
            "task": task.model_dump(mode="json"),
            "dapt_base": record,
            "original_base": {
                "path": str(absolute(original.path)),
                "name": original.manifest["name"],
                "id": original.id,
            },
            "chain": [str(absolute(a.path)) for a in chain],
            "source_run": str(source_run),
        }
        for task in tasks
    ]
    stages = [
        stage
        for task, entry in zip(tasks, entries, strict=True)
        for stage in adapted_stages(task, entry, config.seed, config.pretrain.precision)
    ]
    given = {artifact.manifest["name"]: artifact for artifact in chain}
    say(
        f"dapt adapt: {', '.join(names)} from {dapt_base.path} (DAPT base) and {original.path} (control), "
        f"into {run_dir}"
    )
    say(
        "  note: the DAPT base was pretrained before these tasks were given, so their test texts were not "
        "removed from its pretraining corpus"
    )
    with locked(run_dir, "--out" if out else "run folder"):
        artifacts = run_stages(stages, config, run_dir, given=given)
        # record the branch (replacing an earlier entry of the same task name), then rebuild the report
        kept = [e for e in read_adapted(run_dir) if e["task"]["name"] not in names]
        atomic_write_text(run_dir / ADAPTED_NAME, json.dumps({"adapted": kept + entries}, indent=2) + "\n")
        pipeline_artifacts = run_stages_found(config, source_run)
        with disk_full_reported(run_dir, "write the report (every stage is finished)"):
            report = build_report(config, run_dir, {**pipeline_artifacts, **artifacts})
    print_headline(report, run_dir)
    return 0
