"""The run report: `report.json` for tools, `report.md` and `report.html` for people.

It reads the finished artifacts' manifests afterwards — no stage has to remember to call it — and it
states the result as it came out: if the adaptation did not help, the report says so.
"""

from __future__ import annotations

import json
import platform
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from dapt.adapted_record import adapted_tasks
from dapt.artifacts import Artifact, atomic_write_text, read_artifact
from dapt.config import PipelineConfig, TaskConfig
from dapt.eval.metrics import paired_bootstrap
from dapt.lineage import lineage
from dapt.pipeline import plan, run_suffix
from dapt.report.html import render_html
from dapt.report.markdown import COST_HEADING, METRIC_LABELS, render_markdown

# The metric that decides the verdict, and a second one shown beside it, per task type.
TASK_METRICS = {
    "classification": ("accuracy", "macro_f1"),
    "instruction": ("rouge_l", "token_f1"),
    "preference": ("preference_accuracy", "reward_margin"),
}


def _example_scores(artifact: Artifact) -> np.ndarray:
    """Per test example: 1/0 correct (classification) or its score (instruction: ROUGE-L), in test order."""
    table = pq.read_table(artifact.path / "predictions.parquet")
    if "score" in table.column_names:
        return np.asarray(table.column("score").to_pylist(), dtype=np.float64)
    return np.asarray(table.column("label").to_pylist()) == np.asarray(table.column("predicted").to_pylist())


def _task_entry(task: TaskConfig, pipeline_seed: int, artifacts: dict[str, Artifact]) -> dict[str, Any]:
    """Control vs DAPT for one task: means over seeds on all the data, the paired interval, the data-efficiency
    curve. A run that has not finished is left out (and listed under `missing_runs`)."""
    runs = task.runs(pipeline_seed)
    results: dict[tuple[str, float], list[Artifact]] = {}
    missing = []
    for seed, fraction in runs:
        for variant in ("control", "dapt"):
            name = f"evaluate-{task.name}-{variant}{run_suffix(seed, fraction, pipeline_seed)}"
            if name in artifacts:
                results.setdefault((variant, fraction), []).append(artifacts[name])
            else:
                missing.append(name)
    full = {variant: results.get((variant, 1.0), []) for variant in ("control", "dapt")}
    adapted = artifacts[f"adapt-{task.name}-dapt"].metrics

    primary, secondary = TASK_METRICS[task.type]

    def summary(evaluations: list[Artifact]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for metric in (primary, secondary):
            values = np.array([e.metrics[metric] for e in evaluations])
            out[metric] = float(values.mean())
            out[f"{metric}_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
        out["runs"] = len(evaluations)
        return out

    entry: dict[str, Any] = {
        "name": task.name,
        "type": task.type,
        "primary": primary,
        "secondary": secondary,
        "recipe": adapted["recipe"],
        "top_blocks": adapted.get("top_blocks"),
        "train_examples": adapted["train_examples"],
        "test_examples": full["dapt"][0].metrics["examples"],
        "seeds": task.seeds or [pipeline_seed],
        "control": summary(full["control"]),
        "dapt": summary(full["dapt"]),
    }
    entry["difference"] = {k: entry["dapt"][k] - entry["control"][k] for k in (primary, secondary)}
    # per test example, the mean score over seeds; resampled in pairs (the same examples for both variants)
    control_scores = np.mean([_example_scores(e) for e in full["control"]], axis=0)
    dapt_scores = np.mean([_example_scores(e) for e in full["dapt"]], axis=0)
    low, high = paired_bootstrap(control_scores, dapt_scores)
    entry["difference"][f"{primary}_ci95"] = [low, high]
    label = METRIC_LABELS[primary]
    if low > 0:
        entry["verdict"] = f"the DAPT base helped: its variant's {label} is higher, beyond the 95% interval of chance"
    elif high < 0:
        entry["verdict"] = f"the DAPT base hurt: its variant's {label} is lower, beyond the 95% interval of chance"
    else:
        entry["verdict"] = f"no clear difference: the {label} gap is within the 95% interval of chance on this test set"
    if task.type == "instruction":
        # the optional LLM judge: its mean score per variant (over seeds), or None when no judge was used
        judged = [e.metrics.get("judge") for variant in ("control", "dapt") for e in full[variant]]
        entry["judge"] = None
        if judged and all(judged):
            entry["judge"] = {
                "model": judged[0]["model"],
                "url": judged[0]["url"],
                **{v: float(np.mean([e.metrics["judge_score"] for e in full[v]])) for v in ("control", "dapt")},
            }
    if task.type == "classification":
        # per class and the confusion matrix, of the main run (the pipeline's seed, all the data) of each variant
        main = {v: artifacts.get(f"evaluate-{task.name}-{v}") for v in ("control", "dapt")}
        if all(e is not None and "per_class" in e.metrics for e in main.values()):
            entry["per_class"] = {v: e.metrics["per_class"] for v, e in main.items()}
            entry["confusion_matrix"] = {v: e.metrics["confusion_matrix"] for v, e in main.items()}
            entry["labels"] = main["dapt"].metrics["labels"]
    fractions = sorted({fraction for _, fraction in runs})
    if len(fractions) > 1:
        curve = []
        for fraction in fractions:
            if not (results.get(("control", fraction)) and results.get(("dapt", fraction))):
                continue
            point: dict[str, Any] = {"fraction": fraction}
            for variant in ("control", "dapt"):
                scores = summary(results[(variant, fraction)])
                # the mean over seeds, its standard deviation (0 with one seed) and each seed's score
                point[variant] = scores[primary]
                point[f"{variant}_std"] = scores[f"{primary}_std"]
                point[f"{variant}_runs"] = [e.metrics[primary] for e in results[(variant, fraction)]]
            curve.append(point)
        entry["data_efficiency"] = curve
        target = entry["control"][primary]
        entry["dapt_matches_control_full_data_at"] = next(
            (point["fraction"] for point in curve if point["dapt"] >= target), None
        )
    if missing:
        entry["missing_runs"] = missing
    return entry


def _adapted_task_entries(config: PipelineConfig, run_dir: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """Report entries of the tasks `dapt adapt` branched into this run folder (finished ones), and the stale ones."""
    found, stale = adapted_tasks(run_dir, config.seed, config.pretrain.precision)
    entries = []
    own = {task.name for task in config.tasks}
    for task, record, task_artifacts in found:
        if task.name in own or f"adapt-{task.name}-dapt" not in task_artifacts:
            continue  # the pipeline's own task of that name wins; an unfinished branch is not reported
        entry = _task_entry(task, config.seed, task_artifacts)
        entry["adapted_from"] = record["dapt_base"]["path"]
        entries.append(entry)
    return entries, stale


def build_report(config: PipelineConfig, run_dir: Path, artifacts: dict[str, Artifact] | None = None) -> dict[str, Any]:
    """Assemble report.json, report.md and report.html from the run's manifests; returns the report's content."""
    if artifacts is None:
        found = {spec.name: read_artifact(run_dir / spec.name) for spec in plan(config)}
        artifacts = {name: a for name, a in found.items() if a is not None}
    base, pretrain, lm = (
        artifacts["base"].metrics,
        artifacts["pretrain"].metrics,
        artifacts["evaluate-lm"].metrics,
    )
    curate = artifacts["curate"].metrics
    # the tokenization the DAPT base was trained on (`tokenize-extended` with vocabulary extension)
    tokenize = artifacts.get(artifacts["pretrain"].manifest["inputs"]["tokens"]["name"], artifacts["tokenize"]).metrics
    extension = artifacts["extend-vocab"].metrics if "extend-vocab" in artifacts else None
    adapted, stale = _adapted_task_entries(config, run_dir)
    report: dict[str, Any] = {
        "run": config.name,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {platform.system()}, Python {platform.python_version()}",
        "base": {
            "original": base["origin"],
            "architecture": base["architecture"],
            "parameters": base["parameters"],
            "domain_ppl_before": lm["original"].get("domain_ppl"),
            "domain_ppl_after": lm["dapt"].get("domain_ppl"),
            "general_ppl_before": lm["original"].get("general_ppl"),
            "general_ppl_after": lm["dapt"].get("general_ppl"),
            "test_tokens": lm["test_tokens"],
            # bits per UTF-8 byte of the same held-out text for both bases: comparable when the tokenizers differ
            "domain_bpb_before": lm["original"].get("domain_bits_per_byte"),
            "domain_bpb_after": lm["dapt"].get("domain_bits_per_byte"),
            "general_bpb_before": lm["original"].get("general_bits_per_byte"),
            "general_bpb_after": lm["dapt"].get("general_bits_per_byte"),
            "same_tokenizer": lm.get("same_tokenizer", True),
            "vocab_size_before": lm["original"].get("vocab_size", base["vocab_size"]),
            "vocab_size_after": lm["dapt"].get("vocab_size", base["vocab_size"]),
            "test_documents": lm.get("test_documents", {}),
            "test_bytes": lm.get("test_bytes", {}),
            "general_heldout_from": tokenize["general_heldout_from"],
            "tokenizer_missing_bytes": base.get("tokenizer_missing_bytes"),
            # with pretrain.context: passkey retrieval, loss by position and loss at the old window, both bases
            "long_context": lm.get("long_context"),
            "vocabulary_extension": None
            if extension is None
            else {
                "added": extension["added"],
                "old_vocab_size": extension["old_vocab_size"],
                "new_vocab_size": extension["new_vocab_size"],
                "embedding_rows_after": extension["embedding_rows_after"],
                "heldout_fertility": extension["fertility"],
                "top_tokens": extension["top_tokens"],
            },
        },
        "pretrain": {
            key: pretrain[key]
            for key in (
                "steps",
                "tokens_trained",
                "tokens_per_second",
                "train_seconds",
                "best_step",
                "stopped_early",
                "stop_reason",
                "evaluations",
            )
        }
        # the forgetting guard's checks, the averaged checkpoints and the data stages (None when off or made by an
        # older dapt)
        | {key: pretrain.get(key) for key in ("forgetting", "average", "stages")},
        "data": {
            "funnel": {
                "documents_in": curate["docs_in"],
                "kept": curate["docs_kept"],
                "dropped_by_reason": curate["dropped_by_reason"],
                "decontaminated_by_task": curate.get("decontaminated_by_task", {}),
                "heavy_drops": curate.get("heavy_drops", []),  # a rule that dropped much of one source, and its setting
                # records that never became documents (malformed line, binary file, ...): the ingest ledger
                "ingest_rejected_by_reason": artifacts["ingest"].metrics.get("rejected_by_reason", {}),
            },
            "sources": artifacts["ingest"].metrics["by_source"],
            "token_splits": tokenize["splits"],
        },
        "tasks": [_task_entry(task, config.seed, artifacts) for task in config.tasks] + adapted,
        # what adaptation cost: safety and retention comparisons, the gates (None before the gates stage ran)
        "cost": artifacts["gates"].metrics if "gates" in artifacts else None,
        "lineage": lineage(run_dir),
        "timings": {name: a.manifest["timings"]["seconds"] for name, a in artifacts.items()},
    }
    if stale:
        report["stale_adapted_tasks"] = stale
    # the training loss per optimizer step, for report.html's loss curves (evaluation records have no "loss")
    metrics_file = artifacts["pretrain"].path / "metrics.jsonl"
    records = [json.loads(line) for line in metrics_file.read_text().splitlines()] if metrics_file.is_file() else []
    steps = [r for r in records if "loss" in r]
    report["pretrain"]["train_curve"] = {"step": [r["step"] for r in steps], "loss": [r["loss"] for r in steps]}
    atomic_write_text(run_dir / "report.json", json.dumps(report, indent=2) + "\n")
    atomic_write_text(run_dir / "report.md", render_markdown(report))
    atomic_write_text(run_dir / "report.html", render_html(report))
    return report


def print_headline(report: dict[str, Any], run_dir: Path) -> None:
    """The report's headline on the terminal: where it is, the perplexities and each task's verdict."""
    base = report["base"]
    print(f"\nReport: {run_dir / 'report.html'} (also report.md, report.json)")
    if base.get("same_tokenizer", True):
        print(
            f"Domain perplexity  {base['domain_ppl_before']:.3f} → {base['domain_ppl_after']:.3f}   "
            f"general perplexity {base['general_ppl_before']:.3f} → {base['general_ppl_after']:.3f}"
        )
    else:  # per-token perplexities of different tokenizers do not compare
        print(
            f"Domain bits/byte  {base['domain_bpb_before']:.4f} → {base['domain_bpb_after']:.4f}   "
            f"general bits/byte {base['general_bpb_before']:.4f} → {base['general_bpb_after']:.4f}   "
            f"(extended vocabulary: {base['vocab_size_before']} → {base['vocab_size_after']} tokens)"
        )
    for task in report["tasks"]:
        control, dapt, p, q = task["control"], task["dapt"], task["primary"], task["secondary"]
        print(
            f"{task['name']}: {p} control {control[p]:.3f} vs DAPT {dapt[p]:.3f} "
            f"({task['difference'][p] * 100:+.1f} points); {q} {control[q]:.3f} vs {dapt[q]:.3f}"
        )
        print(f"  verdict: {task['verdict']}")
    cost = report.get("cost")
    if cost:
        print(
            "What adaptation cost: "
            + (f"{len(cost['broken'])} gate(s) broken" if cost["broken"] else "every gate holds")
            + f" (see report.md, {COST_HEADING.removeprefix('## ')})"
        )
        for broken in cost["broken"]:
            print(f"  {broken['comparison']}: {broken['message']}")
