"""Run a pipeline config: plan the stages, run them in order, skip the ones already finished.

The plan is a list of `StageSpec`s in dependency order. Each writes one artifact, kept by id under the run
folder's `.artifacts/` and reached through a link named after the stage (`ingest`, `pretrain`,
`adapt-<task>-dapt`, ...; `dapt.run_folder`). A stage is skipped (cache hit) when its link leads to a finished
artifact with the same id, made from inputs with the same content; otherwise it builds under its new id and the
link moves, while the earlier finished artifact stays (a base is never modified once written; `dapt gc` removes
what nothing refers to). An interrupted resumable stage (curate, tokenize, pretrain) continues from what it
finished when run again with the same config and inputs; one interrupted under another config is kept, and the
run says what differs and how to resume it. `build_artifact` is the one place a manifest is written.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from dapt.artifacts import (
    MANIFEST_NAME,
    SCHEMA_VERSION,
    Artifact,
    artifact_id,
    content_hash,
    read_artifact,
    write_manifest,
)
from dapt.config import PipelineConfig, RestoreConfig, Section, TaskConfig
from dapt.errors import ConfigError, DataError, disk_full_reported
from dapt.preflight import check_positions, check_split_lengths, checkpoint_space_mb, disk_warning, model_positions
from dapt.run_folder import ATTEMPT_NAME, make_current, read_attempt, remove, set_aside, stage_folder
from dapt.stages import (
    adapt,
    base,
    cost,
    curate,
    evaluate,
    extend_context,
    extend_vocab,
    ingest,
    pretrain,
    restore,
    tapt,
    tasks,
    tokenize,
)
from dapt.stages.context import StageContext, say

StageFunction = Callable[[StageContext], dict[str, Any]]


@dataclass
class StageSpec:
    """One planned stage: what it is, what configures it, what it reads.

    `config` is the stage's cache key (see `stage_artifact_id`) and its manifest's record; a stage configured by a
    typed section gets it as `section` too (`config` then holds the section's `cache_key()`)."""

    name: str
    kind: str
    run: StageFunction
    config: dict[str, Any]
    inputs: dict[str, str] = field(default_factory=dict)  # role -> name of the stage that makes it
    summary: str = ""
    resumable: bool = False  # an interrupted attempt's folder is handed back to the stage, not cleared
    distributed: bool = False  # launched over several processes, it runs on all (the others on the main one only)
    section: Section | None = None  # the typed config section the stage reads (`StageContext.section_of`)


def plan(config: PipelineConfig) -> list[StageSpec]:
    """The stages of a pipeline, in dependency order."""

    dump = config.model_dump(mode="json")
    stages, pretrain_base, pretrain_tokens = _corpus_stages(config, dump)
    if config.pretrain.context is not None:  # a longer window (RoPE scaling) in the base's config, then pretrain it
        stages.append(
            StageSpec(
                "extend-context",
                "extend_context",
                extend_context.run,
                {"context": config.pretrain.context.cache_key()},
                {"base": pretrain_base},
                summary="the base with a longer context window (RoPE scaling in its config)",
                section=config.pretrain.context,
            )
        )
        pretrain_base = "extend-context"
    stages += _pretraining_stages(config, dump, pretrain_base, pretrain_tokens)
    for task in config.tasks:
        stages += variant_stages(task, config.seed, {"control": "base", "dapt": "pretrain"}, config.pretrain.precision)
    return stages + cost_stages(config)


def _corpus_stages(config: PipelineConfig, dump: dict[str, Any]) -> tuple[list[StageSpec], str, str]:
    """From the sources to token shards: ingest, task data, curate, the original base, tokenize (and, with a
    vocabulary extension, the extended base and its shards). Also the names of the stages pretraining starts from:
    (its base, its shards)."""
    tokenize_key = config.tokenize.cache_key()  # how tokenisation runs (workers, ...) changes no shard
    stages = [
        StageSpec("ingest", "ingest", ingest.run, {"sources": dump["sources"]}, summary="read the text sources"),
    ]
    stages += [task_data_stage(task, config.seed) for task in config.tasks]
    task_inputs = {f"task:{t.name}": f"task-{t.name}" for t in config.tasks}
    stages += [
        StageSpec(
            "curate",
            "curate",
            curate.run,
            {"curate": config.curate.cache_key()},  # how curation runs (workers, ...) changes nothing it keeps
            {"corpus": "ingest", **task_inputs},
            summary="clean, dedup, decontaminate",
            resumable=True,  # a killed run keeps its finished batches
            section=config.curate,
        ),
        StageSpec(
            "base",
            "base",
            base.run,
            {"base": config.base.cache_key(), "seed": config.seed},
            # a from-scratch preset may train its tokenizer on the curated text
            {"corpus": "curate"} if config.base.preset and config.base.preset.tokenizer_vocab_size else {},
            summary="materialise the original base",
            section=config.base,
        ),
        StageSpec(
            "tokenize",
            "tokenize",
            tokenize.run,
            {"tokenize": tokenize_key, "seed": config.seed},
            {"corpus": "curate", "base": "base"},
            summary="packed token shards + held-out splits",
            resumable=True,  # a killed run keeps its finished parts
            section=config.tokenize,
        ),
    ]
    # Vocabulary extension: the original base gains domain tokens (trained on the domain_train split only), and
    # the corpus is tokenized again with them, the same documents in each split. The DAPT base grows from the
    # extended base; the control variants below keep starting from the original base and its tokenizer.
    pretrain_base, pretrain_tokens = "base", "tokenize"
    if config.vocab.enabled:
        pretrain_base, pretrain_tokens = "extend-vocab", "tokenize-extended"
        stages += [
            StageSpec(
                "extend-vocab",
                "extend_vocab",
                extend_vocab.run,
                {"vocab": config.vocab.cache_key()},
                {"corpus": "curate", "tokens": "tokenize", "base": "base"},
                summary="the original base with domain tokens added (tokenizer + embeddings)",
                section=config.vocab,
            ),
            StageSpec(
                "tokenize-extended",
                "tokenize",
                tokenize.run,
                {"tokenize": tokenize_key, "seed": config.seed},
                {"corpus": "curate", "base": "extend-vocab", "splits": "tokenize"},
                summary="packed token shards with the extended tokenizer, the same documents per split",
                resumable=True,
                section=config.tokenize,
            ),
        ]
    return stages, pretrain_base, pretrain_tokens


def _pretraining_stages(
    config: PipelineConfig, dump: dict[str, Any], pretrain_base: str, pretrain_tokens: str
) -> list[StageSpec]:
    """Continued pretraining from `pretrain_base` on `pretrain_tokens`, then both bases' language-model evaluation."""
    return [
        StageSpec(
            "pretrain",
            "pretrain",
            pretrain.run,
            {"pretrain": config.pretrain.cache_key(), "seed": config.seed},
            {"tokens": pretrain_tokens, "base": pretrain_base},
            summary="continued pretraining → the DAPT base",
            resumable=True,
            distributed=True,
            section=config.pretrain,
        ),
        StageSpec(
            "evaluate-lm",
            "evaluate_lm",
            evaluate.run_lm,
            {
                "seq_len": config.pretrain.seq_len,
                "document_mask": config.pretrain.document_mask,
                **precision_config(config.pretrain.precision),
                # only when set, so that the ids of runs without a context extension stay as they were
                **({"context": dump["pretrain"]["context"]} if config.pretrain.context is not None else {}),
            },
            {"tokens": "tokenize", "corpus": "curate", "original": "base", "dapt": "pretrain"},
            summary="domain and general perplexity and bits per byte, before and after",
        ),
    ]


def cost_stages(config: PipelineConfig) -> list[StageSpec]:
    """What adaptation cost (`dapt.stages.cost`): safety and retention of both bases and of every variant of an
    instruction or preference task (each seed, all the data), then the gates on them; with `config.restore`, of
    the restored base too."""

    pipeline_seed, restoring, safety = config.seed, config.restore, config.safety
    # what the answers depend on (each cost stage reads its SafetyConfig section); the gates' thresholds belong to
    # the gates stage alone
    measured = {
        "safety": safety.model_dump(mode="json", include={"max_new_tokens", "judge"}),
        **precision_config(config.pretrain.precision),
    }
    stages = [
        StageSpec(
            "cost-bases",
            "cost",
            cost.run_bases,
            measured,
            {"original": "base", "dapt": "pretrain"},
            summary="safety (chat models) and general-knowledge retention of both bases",
            section=safety,
        )
    ]
    tasks = []
    for task in config.tasks:
        if task.type == "classification":  # a classifier generates nothing
            continue
        runs: dict[str, list[str]] = {"control": [], "dapt": []}
        for seed, fraction in task.runs(pipeline_seed):
            if fraction != 1.0:
                continue
            for variant in runs:
                suffix = run_suffix(seed, fraction, pipeline_seed)
                name = f"cost-{task.name}-{variant}{suffix}"
                stages.append(
                    StageSpec(
                        name,
                        "cost",
                        cost.run_variant,
                        measured | {"variant": variant},
                        {"model": f"adapt-{task.name}-{variant}{suffix}"},
                        summary="safety and general-knowledge retention of the variant",
                        section=safety,
                    )
                )
                runs[variant].append(name)
        if runs["dapt"]:
            tasks.append({"name": task.name, "runs": runs})
    gates = {
        "safety": safety.model_dump(mode="json", include={"max_refusal_drop", "max_over_refusal_rise"}),
        "retention": config.retention.model_dump(mode="json"),
        "tasks": tasks,
    }
    inputs = {"bases": "cost-bases", "lm": "evaluate-lm"}
    if restoring is not None:  # restoring what adaptation cost: a third base, measured like the others
        stages += restore_stages(config, measured, restoring)
        inputs["restored"] = "cost-restored"
    inputs |= {name: name for task in tasks for names in task["runs"].values() for name in names}
    stages.append(StageSpec("gates", "gates", cost.run_gates, gates, inputs, summary="what adaptation cost: the gates"))
    return stages


def restore_stages(config: PipelineConfig, measured: dict[str, Any], restoring: RestoreConfig) -> list[StageSpec]:
    """`restore` (`dapt.stages.restore`: the DAPT base merged with the original, or given the chat vector) and
    `cost-restored` (its safety, retention and held-out perplexity, as the bases')."""

    # evaluate-lm's windows
    held_out = {"seq_len": config.pretrain.seq_len, "document_mask": config.pretrain.document_mask}
    return [
        StageSpec(
            "restore",
            "restore",
            restore.run,
            {"restore": restoring.cache_key()},
            {"base": "pretrain", "original": "base"},
            summary=f"the DAPT base restored by {restoring.method.replace('_', ' ')}",
            section=restoring,
        ),
        StageSpec(
            "cost-restored",
            "cost",
            cost.run_restored,
            measured | held_out,
            {"model": "restore", "original": "base", "tokens": "tokenize", "corpus": "curate"},
            summary="safety, general-knowledge retention and held-out perplexity of the restored base",
            section=config.safety,
        ),
    ]


def precision_config(precision: str) -> dict[str, str]:
    """`pretrain.precision` in the config (so the id) of a stage after pretraining that runs a model: a set precision
    only, so that the ids of runs left at auto stay as they were (auto's choice is in each manifest)."""
    return {} if precision == "auto" else {"precision": precision}


def task_data_stage(task: TaskConfig, pipeline_seed: int) -> StageSpec:
    """The stage that reads a task's examples and splits them into train and test."""

    return StageSpec(
        f"task-{task.name}",
        "task",
        tasks.run,
        {"task": task.examples_key(), "seed": pipeline_seed},
        summary="labelled train/test examples",
        section=task,
    )


def variant_stages(task: TaskConfig, pipeline_seed: int, bases: dict[str, str], precision: str) -> list[StageSpec]:
    """A task's variants and their evaluations, per seed and data fraction, with TAPT first when asked.

    `bases` names the stage (or given artifact) each variant starts from: {"control": ..., "dapt": ...};
    `precision` is the pipeline's `pretrain.precision`, which they all compute in.
    """
    computes_in = precision_config(precision)

    stages: list[StageSpec] = []
    for seed, fraction in task.runs(pipeline_seed):
        for variant, base_stage in bases.items():
            if task.start_from:  # DPO after SFT: start from (and compare with) that task's variant
                base_stage = f"adapt-{task.start_from}-{variant}"
            if task.tapt_steps:  # task-adaptive pretraining first, for both variants alike
                tapt_stage = f"tapt-{task.name}-{variant}"
                if tapt_stage not in {stage.name for stage in stages}:
                    settings = task.tapt()
                    stages.append(
                        StageSpec(
                            tapt_stage,
                            "tapt",
                            tapt.run,
                            {"tapt": settings.cache_key(), "seed": pipeline_seed, **computes_in},
                            {"task": f"task-{task.name}", "base": base_stage},
                            summary="task-adaptive pretraining on the task's training text",
                            section=settings,
                        )
                    )
                base_stage = tapt_stage
            adapted = f"adapt-{task.name}-{variant}{run_suffix(seed, fraction, pipeline_seed)}"
            stages.append(
                StageSpec(
                    adapted,
                    "adapt",
                    adapt.run,
                    {
                        "task": task.variant_key(),
                        "variant": variant,
                        "seed": seed,
                        "data_fraction": fraction,
                        **computes_in,
                    },
                    {"task": f"task-{task.name}", "base": base_stage},
                    summary=f"{task.type} variant from the {'original' if variant == 'control' else 'DAPT'} "
                    f"base (seed {seed}, {fraction:.0%} of the training data)",
                    section=task,
                )
            )
            stages.append(
                StageSpec(
                    adapted.replace("adapt-", "evaluate-", 1),
                    "evaluate_task",
                    evaluate.run_task,
                    {
                        "max_length": task.max_length,
                        "type": task.type,
                        "max_new_tokens": task.max_new_tokens,
                        "beta": task.beta,
                        # only when set, so that the ids of runs without a judge stay as they were
                        **({"judge": task.judge.model_dump(mode="json"), "task_name": task.name} if task.judge else {}),
                        **computes_in,
                    },
                    {"task": f"task-{task.name}", "model": adapted, "reference": base_stage},
                    summary="test-set metrics",
                    section=task,
                )
            )
    return stages


def run_suffix(seed: int, fraction: float, pipeline_seed: int) -> str:
    """'' for the main run (the pipeline's seed, all the data), else e.g. '-s1' or '-f0.25' or '-s1-f0.25'."""
    parts = ([f"s{seed}"] if seed != pipeline_seed else []) + ([f"f{fraction:g}"] if fraction != 1.0 else [])
    return "".join(f"-{part}" for part in parts)


PLAN_STAGE = "plan"  # the folder of `dapt plan`'s artifact in the run folder


def with_planned_replay(config: PipelineConfig, run_dir: Path) -> PipelineConfig:
    """`pretrain.replay_fraction: plan` replaced by the replay fraction `dapt plan` recommended in this run folder
    (the stage's cache key then holds the number, as if it had been written in the YAML)."""
    if config.pretrain.replay_fraction != "plan":
        return config
    planned = read_artifact(run_dir / PLAN_STAGE)
    recommended = planned.metrics.get("recommendation") if planned is not None else None
    if not recommended:
        found = "has no finished plan" if planned is None else "has a plan with no recommendation (see its plan.md)"
        raise ConfigError(
            f"pretrain.replay_fraction: plan, but {run_dir / PLAN_STAGE} {found}; run `dapt plan PIPELINE.yaml` "
            "first (same run folder: --out), or give pretrain.replay_fraction a number"
        )
    replay = recommended["replay_fraction"]
    say(f"dapt: pretrain.replay_fraction {replay:g}, as planned in {run_dir / PLAN_STAGE / 'plan.md'}")
    return config.model_copy(update={"pretrain": config.pretrain.model_copy(update={"replay_fraction": replay})})


def _stale_reason(existing: Artifact | None, stage_id: str, inputs: dict[str, Artifact]) -> str | None:
    """None when `existing` can be reused, else why not."""
    if existing is None:
        return "not built yet"
    if existing.id != stage_id:
        return "config or inputs changed"
    for role, artifact in inputs.items():
        recorded = existing.manifest["inputs"].get(role, {})
        if recorded.get("content_hash") != artifact.content_hash:
            return f"input {artifact.manifest['name']} was rebuilt with different content"
    return None


def run_pipeline(config: PipelineConfig, run_dir: Path, *, until: str | None = None) -> dict[str, Artifact]:
    """Run every stage (or up to and including `until`), skipping finished ones. Returns the artifacts."""
    config = with_planned_replay(config, run_dir)
    stages = plan(config)
    if until is not None:
        stages = _upstream_of(stages, until)
    return run_stages(stages, config, run_dir)


def run_stages(
    stages: list[StageSpec], config: PipelineConfig, run_dir: Path, given: dict[str, Artifact] | None = None
) -> dict[str, Artifact]:
    """Run planned stages in order; a stage whose artifact is finished and current is skipped.

    `given`: finished artifacts from elsewhere (e.g. the bases `dapt adapt` branches from) that stages may name
    as inputs; like any input, their files are hashed again before a stage builds on them.

    Launched over several processes (torchrun / accelerate launch), a distributed stage runs on every process,
    each training on its share of the global batch; any other stage runs on the main process alone while the
    others wait. Only the main process writes folders and manifests; the others read them after a barrier.
    """
    from dapt.train import distributed, zero

    several = distributed.launched_world_size() > 1
    if several:
        distributed.join()
    main = distributed.is_main_process()
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
    artifacts: dict[str, Artifact] = dict(given or {})
    say(f"dapt: run {config.name!r} in {run_dir} ({len(stages)} stages)")
    for number, spec in enumerate(stages, start=1):
        header = f"[{number}/{len(stages)}] {spec.name}"
        if several and not spec.distributed:
            if main:
                with distributed.alone():
                    artifacts[spec.name] = _run_stage(spec, header, artifacts, config, run_dir)
            distributed.wait_for_everyone()
            if not main:
                artifacts[spec.name] = _finished(run_dir / spec.name)
        elif not spec.distributed and zero.launched_with_deepspeed():
            with distributed.alone():  # one process launched with DeepSpeed: only the pretrain stage trains with it
                artifacts[spec.name] = _run_stage(spec, header, artifacts, config, run_dir)
        else:
            artifacts[spec.name] = _run_stage(spec, header, artifacts, config, run_dir, several=several)
        if spec.kind == "base":  # a GGUF file's or a hub model's positions are known from here on
            model = artifacts[spec.name].path / "model"
            positions = model_positions(model / "config.json")
            if positions is not None:
                check_positions(config, positions, f"{spec.name}/model/config.json")
        if spec.kind == "tokenize":  # before pretraining or evaluation would meet a split shorter than a window
            check_split_lengths(config, artifacts[spec.name])
    return artifacts


def _finished(folder: Path) -> Artifact:
    """The artifact the main process has just finished (read by the other processes)."""
    artifact = read_artifact(folder)
    if artifact is None:
        raise DataError(f"{folder}: the main process reported this stage finished, but it has no manifest")
    return artifact


def _run_stage(
    spec: StageSpec,
    header: str,
    artifacts: dict[str, Artifact],
    config: PipelineConfig,
    run_dir: Path,
    *,
    several: bool = False,
) -> Artifact:
    """Run one stage unless its finished artifact is current. With `several`, every process calls this.

    The artifact is built in .artifacts/<stage>-<id>, and the stage's name points at it from the start (the
    stage writes through it, so progress shows under runs/<run>/<stage>); the artifact the name pointed at
    before stays where it is (see dapt.run_folder)."""
    from dapt.train.distributed import is_main_process, wait_for_everyone

    main = is_main_process()
    inputs = {role: artifacts[source] for role, source in spec.inputs.items()}
    stage_id = stage_artifact_id(spec, inputs)
    name = run_dir / spec.name
    folder = stage_folder(run_dir, spec.name, stage_id)
    # the stage's name deleted (`rm -r runs/x/pretrain`) while its artifact is kept: build it again
    deleted = not name.exists() and not name.is_symlink() and folder.exists()
    existing = None if deleted else read_artifact(folder)
    reason = f"{name} was deleted" if deleted else _stale_reason(existing, stage_id, inputs)
    renamed = folder != name and not (name.is_symlink() and name.resolve() == folder.resolve())
    wait_for_everyone()  # every process has decided from the same files before the main one changes them
    if reason is None:
        assert existing is not None
        if main:
            _say_kept(make_current(run_dir, spec.name, folder))
        if renamed:
            wait_for_everyone()  # the others read it under its name
        say(f"{header}: cached, skipped (finished {existing.manifest['timings']['finished']}, id {stage_id})")
        return Artifact(path=name, manifest=existing.manifest)
    if main:
        verify_models_unchanged(inputs)
        set_aside_first = deleted or existing is not None  # kept: nothing finished is deleted
        _start_attempt(spec, header, run_dir, folder, set_aside_first, stage_id, inputs, reason)
    wait_for_everyone()
    with disk_full_reported(name, _then(spec, name), _space_needed(spec, inputs)):
        artifact = build_artifact(spec, name, inputs, config, write=main)
    if artifact is None:
        wait_for_everyone()  # until the main process has written the manifest
        return _finished(name)
    say(f"{header}: done in {artifact.manifest['timings']['seconds']:.1f}s")
    if several:
        wait_for_everyone()
    return artifact


def stage_artifact_id(spec: StageSpec, inputs: dict[str, Artifact]) -> str:
    """The id of what `spec` builds from `inputs`: its kind, config and the inputs' ids (see dapt.artifacts)."""
    return artifact_id(spec.kind, spec.config, {role: a.id for role, a in inputs.items()})


def build_artifact(
    spec: StageSpec,
    out: Path,
    inputs: dict[str, Artifact],
    config: PipelineConfig | None = None,
    *,
    write: bool = True,
) -> Artifact | None:
    """Run one stage into `out` and finish it with its manifest, written last: the one place dapt writes a manifest.

    The runner calls it for every pipeline stage, once `out` is prepared (see `_run_stage`); `dapt curate PATH...`
    and `dapt evaluate --harness` call it for the one stage they run (`config`: None, no pipeline). Without `write`
    (a process other than the main one of a distributed stage), the stage runs and nothing is written: None.
    """
    if write:
        (out / MANIFEST_NAME).unlink(missing_ok=True)  # unfinished from here until the new manifest is written
    started = datetime.now(timezone.utc)
    clock = time.perf_counter()
    metrics = spec.run(StageContext(spec.name, out, spec.config, inputs, config, spec.section))
    seconds = time.perf_counter() - clock
    if not write:
        return None
    return write_manifest(
        out,
        kind=spec.kind,
        name=spec.name,
        id=stage_artifact_id(spec, inputs),
        config=spec.config,
        inputs=inputs,
        metrics=metrics,
        timings={
            "started": started.isoformat(timespec="seconds"),
            "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "seconds": round(seconds, 2),
        },
    )


def _start_attempt(
    spec: StageSpec,
    header: str,
    run_dir: Path,
    folder: Path,
    set_aside_first: bool,
    stage_id: str,
    inputs: dict[str, Artifact],
    reason: str,
) -> None:
    """Make `folder` the stage's attempt (on the main process): resume it, or start it over when it is an
    unfinished attempt of ours, or start it anew; then point the stage's name at it. With `set_aside_first`, what
    `folder` holds is moved aside into .artifacts/ first: a finished artifact built from inputs that have since
    changed content, or the artifact of a stage whose name was deleted to build it again."""
    attempt = {
        "id": stage_id,
        "schema": SCHEMA_VERSION,
        "config": spec.config,
        "inputs": {role: a.id for role, a in inputs.items()},
    }
    kept = set_aside(run_dir, folder, f"{spec.name}-{stage_id}") if set_aside_first else None
    if kept is None and folder.exists():
        interrupted = read_attempt(folder)
        if interrupted is None:
            raise ConfigError(
                f"{folder}: a folder that dapt did not make (no manifest.json, no {ATTEMPT_NAME} marker) where "
                f"stage {spec.name!r} builds its artifact; dapt deletes only what it made. Move it away."
            )
        if spec.resumable and interrupted["id"] == stage_id:
            say(f"{header}: resuming an interrupted run — {spec.summary}")
            _say_kept(make_current(run_dir, spec.name, folder), attempt)
            return
        remove(run_dir, folder)  # an unfinished attempt of ours that cannot resume: start it over
    say(f"{header}: running — {spec.summary} ({reason})")
    if kept is not None:
        say(f"  the earlier build stays in {kept}")
    needed = _space_needed(spec, inputs)
    warning = disk_warning(needed, run_dir) if needed else None
    if warning:
        say(f"  {warning}")
    folder.mkdir(parents=True)
    (folder / ATTEMPT_NAME).write_text(json.dumps(attempt) + "\n")  # marks the folder ours; lets it resume
    _say_kept(make_current(run_dir, spec.name, folder), attempt)


def _say_kept(previous: Path | None, attempt: dict[str, Any] | None = None) -> None:
    """Say where the artifact a stage's name pointed at before now is (kept, for `dapt lineage` and `dapt gc`),
    and, for an interrupted run with checkpoints, what differs and how to resume it."""
    if previous is None:
        return
    interrupted = read_attempt(previous) if read_artifact(previous) is None else None
    if interrupted is None or attempt is None:
        say(f"  the earlier build stays in {previous}")
        return
    note = _interrupted_note(previous, interrupted, attempt)
    say(f"  the earlier, unfinished attempt stays in {previous}" + (f": {note}" if note else ""))


def _space_needed(spec: StageSpec, inputs: dict[str, Artifact]) -> float | None:
    """MB of disk the stage needs, when it can be estimated (pretraining: its checkpoints)."""
    if spec.kind != "pretrain" or "base" not in inputs or "pretrain" not in spec.config:
        return None
    return checkpoint_space_mb(spec.config["pretrain"], inputs["base"].path / "model")


def _then(spec: StageSpec, folder: Path) -> str:
    """What running the same command again does for a stage stopped in `folder` (for the disk-full message)."""
    if not spec.resumable:
        return f"run {spec.name} again (it starts over)"
    newest = _checkpoint_steps(folder)
    if newest:
        return f"resume {spec.name} from {newest[-1]}"
    if spec.kind == "pretrain":
        return f"run {spec.name} again (no checkpoint was written yet: it starts from step 0)"
    return f"resume {spec.name} from its finished parts"


def _differences(before: Any, after: Any, key: str = "") -> list[str]:
    """'key: old → new' for every leaf that differs between two nested configs."""
    if isinstance(before, dict) and isinstance(after, dict):
        return [
            line
            for name in sorted(set(before) | set(after), key=str)
            for line in _differences(before.get(name), after.get(name), f"{key}.{name}" if key else str(name))
        ]
    return [] if before == after else [f"{key}: {json.dumps(before)} → {json.dumps(after)}"]


def _checkpoint_steps(folder: Path) -> list[str]:
    """The resumable checkpoints of a training stage's folder, oldest first (e.g. ['step-000040', ...])."""
    # `.step-N.replaced`: a checkpoint set aside by a re-save cut short, put back on resume
    found = (folder / "checkpoints").glob("*step-*")
    return sorted(
        path.name.strip(".").removesuffix(".replaced")
        for path in found
        if path.is_dir() and not path.name.endswith(".partial")  # a save cut short holds nothing to resume
    )


def _interrupted_note(folder: Path, interrupted: dict[str, Any], attempt: dict[str, Any]) -> str | None:
    """For an interrupted training run of another configuration (or other inputs) with checkpoints, which may be
    days of work: what differs, and how to resume it. None when it has no checkpoint."""
    steps = _checkpoint_steps(folder)
    if not steps:
        return None
    changed: list[str] = []
    if "config" in interrupted:
        changed = _differences(interrupted["config"], attempt["config"])
        changed += [
            f"input {role} is another artifact (an upstream stage's config or data changed)"
            for role in sorted(set(interrupted["inputs"]) | set(attempt["inputs"]))
            if interrupted["inputs"].get(role) != attempt["inputs"].get(role)
        ]
    if not changed:  # the same config and inputs, another id: another dapt version made it
        changed = [
            f"not the config or inputs as recorded; the dapt version that started it identified stages differently "
            f"(artifact schema {interrupted.get('schema', 'unrecorded')}, now {attempt['schema']})"
        ]
    shown = "; ".join(changed[:8]) + (f"; and {len(changed) - 8} more" if len(changed) > 8 else "")
    return (
        f"it has checkpoints (newest {steps[-1]}) and was started with another configuration or other inputs "
        f"— what differs: {shown}. To resume it, run again with the configuration it was started with; "
        "`dapt gc` deletes it"
    )


# artifacts whose files later stages build on
MODEL_KINDS = ("base", "extend_vocab", "extend_context", "pretrain", "tapt", "adapt", "restore")


def verify_models_unchanged(inputs: dict[str, Artifact]) -> None:
    """A finished base or variant is never modified: check its files' hash before building on it again."""
    for artifact in inputs.values():
        if artifact.kind in MODEL_KINDS and content_hash(artifact.path) != artifact.content_hash:
            raise DataError(
                f"{artifact.path}: the files of finished artifact {artifact.manifest['name']!r} changed after it was "
                "written (its content hash no longer matches its manifest). Restore them, or delete the folder so "
                "that the stage is rebuilt."
            )


def _upstream_of(stages: list[StageSpec], target: str) -> list[StageSpec]:
    by_name = {s.name: s for s in stages}
    matches = [s.name for s in stages if s.name == target or s.kind == target or s.name.startswith(f"{target}-")]
    if not matches:
        names = ", ".join(s.name for s in stages)
        raise ConfigError(f"no stage named {target!r} in this pipeline (stages: {names})")
    needed: set[str] = set()
    pending = list(matches)
    while pending:
        name = pending.pop()
        if name not in needed:
            needed.add(name)
            pending.extend(by_name[name].inputs.values())
    return [s for s in stages if s.name in needed]
