"""Lineage: which model came from which, read from the manifests of a run folder.

Original base → (with vocabulary extension: the extended base →) adapted (DAPT) base(s), with the corpus
and tokens they saw → task variants, with their task metrics. A model's parent is the artifact it names
as its `base` input; a variant's metrics come from the evaluation artifacts that name it as their `model`
input. Results of `dapt evaluate --harness` on a model artifact (`harness-<name>/`, kind "harness") hang under
that model as a leaf with their headline scores. Earlier builds kept in the run folder's .artifacts/ (a stage
re-run with a changed config) are in the tree too, marked `current: false`, with their path. Nothing but
manifests is read, so this is instant even for multi-GB checkpoints.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dapt.adapted_record import external_models
from dapt.artifacts import Artifact
from dapt.errors import ConfigError
from dapt.pipeline import MODEL_KINDS
from dapt.run_folder import Found, run_artifacts

# the metrics shown next to a variant, whichever its task type has
HEADLINE_METRICS = ("accuracy", "macro_f1", "rouge_l", "token_f1", "preference_accuracy", "reward_margin")


def read_run(run_dir: Path) -> list[Found]:
    """Every finished artifact of the run folder: the current ones in stage-name order, the earlier builds kept in
    .artifacts/, and, first, the bases in another run folder that its adapted tasks came from."""
    if not run_dir.is_dir():
        raise ConfigError(f"run folder {str(run_dir)!r} not found (looked in {run_dir.resolve()})")
    found = run_artifacts(run_dir)
    ids = {item.artifact.id for item in found}
    # bases in another run folder that `dapt adapt` branched this folder's tasks from
    return [Found(a, True) for a in external_models(run_dir) if a.id not in ids] + found


def harness_scores(artifact: Artifact) -> dict[str, dict[str, float]]:
    """{task: {metric: value}} of a harness artifact: the tasks asked for (a group's subtasks left out, unless
    none of the asked names is in the results), the metrics without their stderr and the ",none" filter."""
    results = artifact.metrics
    asked = [task for task in artifact.manifest.get("config", {}).get("tasks", []) if task in results]
    scores = {}
    for task in asked or list(results):
        scores[task] = {
            metric.removesuffix(",none"): value
            for metric, value in results[task].items()
            if "_stderr" not in metric and isinstance(value, int | float)
        }
    return scores


def _describe_harness(scores: dict[str, dict[str, float]]) -> str:
    shown = [
        f"{task} " + ", ".join(f"{metric} {value:.4f}" for metric, value in list(metrics.items())[:2])
        for task, metrics in list(scores.items())[:4]
    ]
    more = f"; +{len(scores) - 4} more tasks" if len(scores) > 4 else ""
    return "lm-eval harness — " + ("; ".join(shown) or "no scores") + more


def _describe(artifact: Artifact, evaluations: dict[str, Artifact], by_id: dict[str, Artifact]) -> str:
    metrics = artifact.metrics
    if artifact.kind == "base":
        return f"original base — {metrics['origin']}, {metrics['parameters'] / 1e6:.1f}M parameters"
    if artifact.kind == "extend_vocab":
        domain = metrics["fertility"].get("domain_val")
        fertility = (
            f", held-out domain tokens per word {domain['before']['tokens_per_word']:.3f} → "
            f"{domain['after']['tokens_per_word']:.3f}"
            if domain
            else ""
        )
        return (
            f"extended base — {metrics['added']:,} domain tokens added, vocabulary {metrics['old_vocab_size']:,} → "
            f"{metrics['new_vocab_size']:,}{fertility}"
        )
    if artifact.kind == "extend_context":
        window = metrics["context"]
        rope = window["rope_after"]
        return (
            f"longer-window base — context {window['old_window']:,} → {window['new_window']:,} tokens "
            f"(rope {rope.get('rope_type', 'default')}, factor {rope.get('factor', 1):g})"
        )
    if artifact.kind == "pretrain":
        tokens_input = by_id.get(artifact.manifest["inputs"].get("tokens", {}).get("id", ""))
        corpus = ""
        if tokens_input is not None:
            domain = tokens_input.metrics["splits"].get("domain_train", {})
            corpus = (
                f" from a corpus of {domain.get('tokens', 0):,} domain tokens "
                f"({domain.get('documents', 0):,} documents)"
            )
        best = metrics.get("best", {})
        change = f", domain val ppl {best['domain_val_ppl']:.2f}" if "domain_val_ppl" in best else ""
        return (
            f"DAPT base — {metrics.get('method', 'full')} continued pretraining on {metrics['tokens_trained']:,} "
            f"tokens{corpus}, best step {metrics['best_step']}{change}"
        )
    if artifact.kind == "restore":
        return f"restored base — {metrics['method'].replace('_', ' ')}: {metrics['formula']}"
    if artifact.kind == "tapt":
        return (
            f"task-adaptive pretraining on {metrics['task_windows']} windows of the task's training text, "
            f"{metrics['tokens_trained']:,} tokens"
        )
    evaluation = evaluations.get(artifact.id)
    scores = "not evaluated yet"
    if evaluation is not None:
        shown = [name for name in HEADLINE_METRICS if name in evaluation.metrics][:2]
        scores = ", ".join(f"{name.replace('_', ' ')} {evaluation.metrics[name]:.3f}" for name in shown)
    task = artifact.manifest["config"]["task"]["name"]
    return f"{task} variant ({metrics['recipe']}, {metrics['variant']}) — {scores}"


def lineage(run_dir: Path) -> list[dict[str, Any]]:
    """The lineage forest of a run: nested {name, kind, id, description, children}, roots = original bases;
    harness results are leaves of kind "harness" under the model they scored, with `scores` {task: {metric: value}}."""
    found = read_run(run_dir)
    artifacts = [item.artifact for item in found]
    current = {item.artifact.id for item in found if item.current}
    by_id: dict[str, Artifact] = {}
    evaluations: dict[str, Artifact] = {}  # by the id of the model they evaluated
    for a in artifacts:  # the current ones first: an id both current and kept aside is the current one
        by_id.setdefault(a.id, a)
        if a.kind == "evaluate_task" and "model" in a.manifest["inputs"]:
            evaluations.setdefault(a.manifest["inputs"]["model"]["id"], a)
    harness_runs = [a for a in artifacts if a.kind == "harness" and "model" in a.manifest["inputs"]]
    # the gates of the current `gates` stage (dapt.stages.cost) that a model broke, by the model's id
    broken_gates: dict[str, list[str]] = {}
    for gates in (a for a in artifacts if a.kind == "gates" and a.id in current):
        for broken in gates.metrics.get("broken", []):
            broken_gates.setdefault(broken["candidate_id"], []).append(broken["message"])
    nodes = {
        a.id: {
            "name": a.manifest["name"],
            "kind": a.kind,
            "id": a.id,
            "description": _describe(a, evaluations, by_id)
            + "".join(f" — GATE BROKEN: {message}" for message in broken_gates.get(a.id, [])),
            "gates_broken": broken_gates.get(a.id, []),
            "current": a.id in current,
            "path": str(a.path),
            "children": [],
        }
        for a in by_id.values()
        if a.kind in MODEL_KINDS
    }
    for run in harness_runs:
        model = nodes.get(run.manifest["inputs"]["model"]["id"])
        if model is None:
            continue  # the model it scored is not in this run folder, or was rebuilt since (a new id)
        scores = harness_scores(run)
        model["children"].append(
            {
                "name": run.manifest["name"],
                "kind": run.kind,
                "id": run.id,
                "description": _describe_harness(scores),
                "scores": scores,
                "children": [],
            }
        )
    roots = []
    for artifact in by_id.values():
        if artifact.kind not in MODEL_KINDS:
            continue
        parent = artifact.manifest["inputs"].get("base", {}).get("id")
        if parent in nodes:
            nodes[parent]["children"].append(nodes[artifact.id])
        else:
            roots.append(nodes[artifact.id])
    # under each node: the harness scores of the node itself, then the extended or DAPT base, then the variants;
    # the current build of a stage before its earlier ones
    order = {"harness": 0, "extend_vocab": 1, "extend_context": 1, "pretrain": 1, "restore": 1}
    for node in nodes.values():
        node["children"].sort(
            key=lambda child: (order.get(child["kind"], 2), child["name"], not child.get("current", True))
        )
    return roots


def render_tree(roots: list[dict[str, Any]]) -> list[str]:
    """Text lines of the tree, with box-drawing branches."""
    lines: list[str] = []

    def walk(node: dict[str, Any], prefix: str, is_last: bool, is_root: bool) -> None:
        branch = "" if is_root else ("└── " if is_last else "├── ")
        earlier = "" if node.get("current", True) else f"  (earlier build, kept in {node['path']})"
        lines.append(f"{prefix}{branch}{node['name']}  [{node['id']}]  {node['description']}{earlier}")
        child_prefix = prefix if is_root else prefix + ("    " if is_last else "│   ")
        for index, child in enumerate(node["children"]):
            walk(child, child_prefix, index == len(node["children"]) - 1, False)

    for root in roots:
        walk(root, "", True, True)
    return lines
