"""`dapt evaluate --harness TASKS --model FOLDER`: the command that scores a checkpoint with lm-evaluation-harness.

The evaluation itself is `dapt.eval.harness`; this module checks the model (a finished artifact is hashed again,
as a stage would), runs it and says where the results went: a `harness-<name>/` artifact in the run folder for a
dapt artifact (results.json and its manifest, built like any stage by the runner's `build_artifact`),
`lm_eval_results.json` inside any other model folder, or `--out FILE`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from dapt.artifacts import Artifact, atomic_write_text
from dapt.eval.harness import (
    evaluate_on_harness,
    harness_task_names,
    load_lm_eval,
    model_location,
    refuse_classifier,
    task_manager,
)
from dapt.pipeline import StageSpec, build_artifact, say, verify_models_unchanged
from dapt.run_folder import run_folder_of
from dapt.stages.context import StageContext

RESULTS_NAME = "results.json"  # in a harness-<name>/ artifact


def run_harness(
    tasks: str,
    model: Path,
    *,
    include_path: Path | None = None,
    num_fewshot: int | None = None,
    limit: float | None = None,
    batch_size: int = 8,
    device: str | None = None,
    out: Path | None = None,
) -> dict[str, Any]:
    """Evaluate the model folder on the harness tasks; write and return {"results": {task: {metric: value}}, ...}."""
    simple_evaluate = load_lm_eval()
    folder, artifact = model_location(model)
    refuse_classifier(folder, model)
    if artifact is not None:
        verify_models_unchanged({"model": artifact})  # a finished model is evaluated as it was written
    task_names = harness_task_names(tasks)
    manager = task_manager(task_names, include_path)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    say(f"dapt evaluate: lm-eval {', '.join(task_names)} on {folder} ({device})")

    def evaluate() -> dict[str, Any]:
        return evaluate_on_harness(
            simple_evaluate,
            folder,
            task_names,
            manager,
            num_fewshot=num_fewshot,
            limit=limit,
            batch_size=batch_size,
            device=device,
        )[0]

    if out is None and artifact is not None:
        harness = build_harness_artifact(
            artifact, task_names, num_fewshot=num_fewshot, limit=limit, include_path=include_path, evaluate=evaluate
        )
        results, where = json.loads((harness.path / RESULTS_NAME).read_text()), harness.path / RESULTS_NAME
    else:
        results = evaluate()
        where = out if out is not None else folder / "lm_eval_results.json"
        atomic_write_text(where, json.dumps(results, indent=2, default=str) + "\n")
    for task, values in results["results"].items():
        shown = ", ".join(f"{k.split(',')[0]} {v:.4f}" for k, v in values.items() if "stderr" not in k)
        print(f"{task}: {shown}")
    say(f"dapt evaluate: results in {where} ({results['seconds']:.1f}s)")
    return results


def build_harness_artifact(
    model: Artifact,
    tasks: list[str],
    *,
    num_fewshot: int | None,
    limit: float | None,
    include_path: Path | None,
    evaluate: Callable[[], dict[str, Any]],
) -> Artifact:
    """Build `harness-<name>/` in the model artifact's run folder, a stage like any other (the runner's
    `build_artifact`): results.json (what `evaluate` returns), then the manifest (inputs: the model; metrics:
    {task: {metric,filter: value}})."""
    name = f"harness-{model.manifest['name']}"
    target = run_folder_of(model.path) / name  # the run folder, also when given a path in .artifacts/
    target.mkdir(exist_ok=True)

    def run(context: StageContext) -> dict[str, Any]:
        results = evaluate()
        atomic_write_text(context.out / RESULTS_NAME, json.dumps(results, indent=2, default=str) + "\n")
        return results["results"]

    config = {"tasks": tasks, "num_fewshot": num_fewshot, "limit": limit, "include_path": str(include_path)}
    spec = StageSpec(name, "harness", run, config, {"model": model.manifest["name"]}, summary="lm-eval scores")
    harness = build_artifact(spec, target, {"model": model})
    assert harness is not None
    return harness
