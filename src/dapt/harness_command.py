"""`dapt evaluate --harness TASKS --model FOLDER`: the command that scores a checkpoint with lm-evaluation-harness.

The evaluation itself is `dapt.eval.harness`; this module checks the model (a finished artifact is hashed again,
as a stage would), runs it and says where the results went: a `harness-<name>/` artifact in the run folder for a
dapt artifact, `lm_eval_results.json` inside any other model folder, or `--out FILE`.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from dapt.artifacts import atomic_write_text
from dapt.eval.harness import (
    evaluate_on_harness,
    harness_task_names,
    load_lm_eval,
    model_location,
    refuse_classifier,
    task_manager,
    write_harness_artifact,
)
from dapt.pipeline import say, verify_models_unchanged


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
    started = datetime.now(timezone.utc)
    results, seconds = evaluate_on_harness(
        simple_evaluate,
        folder,
        task_names,
        manager,
        num_fewshot=num_fewshot,
        limit=limit,
        batch_size=batch_size,
        device=device,
    )
    if out is not None:
        atomic_write_text(out, json.dumps(results, indent=2, default=str) + "\n")
        where = out
    elif artifact is not None:
        where = write_harness_artifact(artifact, results, include_path=include_path, started=started, seconds=seconds)
    else:
        where = folder / "lm_eval_results.json"
        atomic_write_text(where, json.dumps(results, indent=2, default=str) + "\n")
    for task, values in results["results"].items():
        shown = ", ".join(f"{k.split(',')[0]} {v:.4f}" for k, v in values.items() if "stderr" not in k)
        print(f"{task}: {shown}")
    say(f"dapt evaluate: results in {where} ({seconds:.1f}s)")
    return results
