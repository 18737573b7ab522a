"""EleutherAI's lm-evaluation-harness on a checkpoint: what `dapt evaluate --harness` runs (`dapt.harness_command`).

Runs lm-eval (the optional extra `dapt-lm[harness]`) through its Python API — `simple_evaluate` with the
`hf` model on the folder, and a `TaskManager` that also reads task YAMLs from `--include-path` — so a
base or variant is scored on the same benchmarks, with the same prompts and metrics, as published models.

Where the results go is the command's business (`dapt.harness_command`): for a dapt artifact, a new artifact
next to it, `harness-<name>/`, never inside the model's own artifact, whose files are hashed and must not change.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

from dapt.artifacts import read_artifact
from dapt.errors import ConfigError


def model_location(model: Path) -> tuple[Path, Any]:
    """(the HF model folder, the dapt artifact holding it or None)."""
    if not model.is_dir():
        raise ConfigError(f"--model {model}: not a folder (looked in {model.resolve()})")
    for artifact_folder, folder in ((model, model / "model"), (model.parent, model)):
        artifact = read_artifact(artifact_folder)
        if artifact is not None and (folder / "config.json").is_file():
            return folder, artifact
    if not (model / "config.json").is_file():
        raise ConfigError(f"--model {model}: no config.json there; give a Hugging Face model folder or a dapt artifact")
    return model, None


def task_manager(task_names: list[str], include_path: Path | None) -> Any:
    """A TaskManager that knows the tasks; lm-eval's ~15k built-in task configs are only indexed when needed."""
    from lm_eval.tasks import TaskManager

    if include_path is not None:
        if not include_path.is_dir():
            raise ConfigError(f"--include-path {include_path}: not a folder of task YAMLs")
        local = TaskManager(include_path=str(include_path.resolve()), include_defaults=False)
        if set(task_names) <= set(local.match_tasks(task_names)):
            return local  # all found in the user's folder: no need to index the built-in ones (~15 s)
    manager = TaskManager(include_path=str(include_path.resolve()) if include_path else None)
    unknown = [name for name in task_names if not manager.match_tasks([name])]
    if unknown:
        where = f" (nor in {include_path})" if include_path else ""
        raise ConfigError(
            f"--harness: unknown lm-eval task(s) {', '.join(unknown)}{where}; `lm_eval ls tasks` lists the built-in "
            "ones, and --include-path adds a folder of your own task YAMLs"
        )
    return manager


def load_lm_eval() -> Callable[..., dict[str, Any]]:
    """lm-eval's `simple_evaluate`; a ConfigError naming the extra to install when lm-eval is missing."""
    try:
        from lm_eval import simple_evaluate  # an optional extra, imported only when the harness is asked for
    except ImportError:
        raise ConfigError(
            "--harness needs EleutherAI's lm-evaluation-harness: pip install 'dapt-lm[harness]' (or lm-eval)"
        ) from None
    return simple_evaluate


def refuse_classifier(folder: Path, model: Path) -> None:
    """A ConfigError when the folder holds a classifier: the harness scores language models."""
    architectures = json.loads((folder / "config.json").read_text()).get("architectures") or []
    if any(name.endswith(("ForSequenceClassification", "ForTokenClassification")) for name in architectures):
        raise ConfigError(
            f"--model {model}: a classifier ({architectures[0]}); the harness evaluates language models — give a "
            "base (e.g. runs/<name>/pretrain) or an instruction variant, and score classifiers with `dapt evaluate "
            "PIPELINE.yaml`"
        )


def harness_task_names(tasks: str) -> list[str]:
    """The comma-separated task names of --harness; a ConfigError when there are none."""
    task_names = [name.strip() for name in tasks.split(",") if name.strip()]
    if not task_names:
        raise ConfigError("--harness: give one or more lm-eval task names, comma-separated (e.g. hellaswag,arc_easy)")
    return task_names


def evaluate_on_harness(
    simple_evaluate: Callable[..., dict[str, Any]],
    folder: Path,
    task_names: list[str],
    manager: Any,
    *,
    num_fewshot: int | None,
    limit: float | None,
    batch_size: int,
    device: str,
) -> tuple[dict[str, Any], float]:
    """Score the model folder on the tasks with lm-eval's `hf` model: (the results dict that is written, seconds)."""
    clock = time.perf_counter()
    output = simple_evaluate(
        model="hf",
        model_args={"pretrained": str(folder.resolve()), "dtype": "float32" if device == "cpu" else "auto"},
        tasks=task_names,
        num_fewshot=num_fewshot,
        limit=limit,
        batch_size=batch_size,
        device=device,
        task_manager=manager,
        log_samples=False,
    )
    seconds = time.perf_counter() - clock
    results = {
        "model": str(folder.resolve()),
        "tasks": task_names,
        "lm_eval_version": metadata.version("lm-eval"),
        "num_fewshot": num_fewshot,
        "limit": limit,
        # {task: {"acc,none": 0.5, "acc_stderr,none": ...}}: lm-eval's own metric names (metric,filter)
        "results": {
            task: {
                k: v for k, v in values.items() if "," in k and isinstance(v, int | float) and not isinstance(v, bool)
            }
            for task, values in output["results"].items()
        },
        "n_samples": output.get("n-samples", {}),
        "seconds": round(seconds, 1),
    }
    return results, seconds
