"""The run report: `report.json` for tools, `report.md` for people.

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

from dapt.artifacts import Artifact, atomic_write_text, read_artifact
from dapt.config import PipelineConfig, TaskConfig
from dapt.lineage import lineage, render_tree
from dapt.pipeline import plan, run_suffix, task_runs

BOOTSTRAP_SAMPLES = 2000
ADAPTED_NOTE = (
    "`{name}` was branched later with `dapt adapt` from the finished base `{base}` (and its original base, the "
    "control): its test texts were not removed from that base's pretraining corpus."
)
STALE_NOTE = (
    "Left out: {names}, branched with `dapt adapt` from a base that has been rebuilt since; run `dapt adapt` again."
)


def paired_bootstrap(control_correct: np.ndarray, dapt_correct: np.ndarray, seed: int = 0) -> tuple[float, float]:
    """95% interval of the mean-score difference (dapt − control), resampling test examples with replacement."""
    rng = np.random.default_rng(seed)
    samples = rng.integers(0, len(control_correct), size=(BOOTSTRAP_SAMPLES, len(control_correct)))
    differences = dapt_correct[samples].mean(axis=1) - control_correct[samples].mean(axis=1)
    low, high = np.percentile(differences, [2.5, 97.5])
    return float(low), float(high)


# The metric that decides the verdict, and a second one shown beside it, per task type.
TASK_METRICS = {
    "classification": ("accuracy", "macro_f1"),
    "instruction": ("rouge_l", "token_f1"),
    "preference": ("preference_accuracy", "reward_margin"),
}
METRIC_LABELS = {
    "accuracy": "accuracy",
    "macro_f1": "macro-F1",
    "rouge_l": "ROUGE-L",
    "token_f1": "token F1",
    "preference_accuracy": "preference accuracy",
    "reward_margin": "mean reward margin",
}
UNBOUNDED_METRICS = {"reward_margin"}  # not a share in [0, 1]: differences are shown as they are, not in points


def difference_text(metric: str, value: float) -> str:
    return f"{value:+.4f}" if metric in UNBOUNDED_METRICS else f"{value * 100:+.1f} points"


def _example_scores(artifact: Artifact) -> np.ndarray:
    """Per test example: 1/0 correct (classification) or its score (instruction: ROUGE-L), in test order."""
    table = pq.read_table(artifact.path / "predictions.parquet")
    if "score" in table.column_names:
        return np.asarray(table.column("score").to_pylist(), dtype=np.float64)
    return np.asarray(table.column("label").to_pylist()) == np.asarray(table.column("predicted").to_pylist())


def _task_entry(task: TaskConfig, pipeline_seed: int, artifacts: dict[str, Artifact]) -> dict[str, Any]:
    """Control vs DAPT for one task: means over seeds on all the data, the paired interval, the data-efficiency
    curve. A run that has not finished is left out (and listed under `missing_runs`)."""
    runs = task_runs(task.model_dump(), pipeline_seed)
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
    from dapt.adapt_command import adapted_tasks

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
    """Assemble report.json and report.md from the run's manifests; returns the report's content."""
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
        },
        "data": {
            "funnel": {
                "documents_in": curate["docs_in"],
                "kept": curate["docs_kept"],
                "dropped_by_reason": curate["dropped_by_reason"],
                "decontaminated_by_task": curate.get("decontaminated_by_task", {}),
                # records that never became documents (malformed line, binary file, ...): the ingest ledger
                "ingest_rejected_by_reason": artifacts["ingest"].metrics.get("rejected_by_reason", {}),
            },
            "sources": artifacts["ingest"].metrics["by_source"],
            "token_splits": tokenize["splits"],
        },
        "tasks": [_task_entry(task, config.seed, artifacts) for task in config.tasks] + adapted,
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
    from dapt.report.html import render_html  # here, not at the top: html.py imports this module

    atomic_write_text(run_dir / "report.html", render_html(report))
    return report


def _num(value: float | None, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _change(before: float | None, after: float | None) -> str:
    if before is None or after is None:
        return "—"
    return f"{(after - before) / before:+.1%}"


def _seeds_note(task: dict[str, Any]) -> str:
    runs = task["control"].get("runs", 1)
    if runs < 2:
        return ""
    primary = task["primary"]
    return (
        f" (means of {runs} seeds; {METRIC_LABELS[primary]} std {task['control'][f'{primary}_std']:.3f} control, "
        f"{task['dapt'][f'{primary}_std']:.3f} DAPT)"
    )


COMPARABILITY_NOTE = (
    "Bits per byte is a base's loss on the same held-out text as the other base's, in bits per UTF-8 byte of "
    "that text: it does not depend on how the text is cut into tokens. Per-token perplexity is only comparable "
    "when the tokenizers match: a tokenizer with longer tokens makes fewer, harder predictions for the same text."
)


def _language_model_line(base: dict[str, Any]) -> str:
    """The headline on held-out text: bits per byte first when the tokenizers differ, else perplexity."""
    bpb = (
        f"**domain bits per byte** {_num(base['domain_bpb_before'], 4)} → {_num(base['domain_bpb_after'], 4)} "
        f"({_change(base['domain_bpb_before'], base['domain_bpb_after'])}); **general bits per byte** "
        f"{_num(base['general_bpb_before'], 4)} → {_num(base['general_bpb_after'], 4)} "
        f"({_change(base['general_bpb_before'], base['general_bpb_after'])}, the forgetting signal)"
    )
    if not base["same_tokenizer"]:
        return (
            f"- The DAPT base has an extended vocabulary ({base['vocab_size_before']} → {base['vocab_size_after']} "
            f"tokens), so per-token perplexity does not compare; {bpb}."
        )
    return (
        f"- **Domain perplexity** {_num(base['domain_ppl_before'])} → {_num(base['domain_ppl_after'])} "
        f"({_change(base['domain_ppl_before'], base['domain_ppl_after'])}); **general perplexity** "
        f"{_num(base['general_ppl_before'])} → {_num(base['general_ppl_after'])} "
        f"({_change(base['general_ppl_before'], base['general_ppl_after'])}, the forgetting signal); {bpb[0].lower()}"
        f"{bpb[1:]}."
    )


def _missing_bytes_lines(base: dict[str, Any]) -> list[str]:
    missing = base.get("tokenizer_missing_bytes")
    if not missing:
        return []
    return [
        "",
        f"Warning: the base's tokenizer has no token for {len(missing)} bytes ({', '.join(missing)}); characters that "
        "need them are dropped when text is encoded.",
    ]


def _extension_lines(base: dict[str, Any]) -> list[str]:
    extension = base.get("vocabulary_extension")
    if extension is None:
        return []
    domain = extension["heldout_fertility"].get("domain_val")
    fertility = (
        f"; on held-out domain text, tokens per word {domain['before']['tokens_per_word']:.3f} → "
        f"{domain['after']['tokens_per_word']:.3f}"
        if domain
        else ""
    )
    top = ", ".join(repr(token) for token in extension["top_tokens"][:8])
    return [
        "",
        f"Vocabulary extension (`vocab:`): {extension['added']} domain tokens added to the original base before "
        f"continued pretraining (vocabulary {extension['old_vocab_size']} → {extension['new_vocab_size']}, "
        f"{extension['embedding_rows_after']} embedding rows){fertility}. Top tokens: {top}. The control variants "
        "start from the original base and its tokenizer.",
    ]


PER_CLASS_NOTE = "the main run of each variant: the pipeline's seed, all the training data; P precision, R recall"


def per_class_rows(task: dict[str, Any]) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(class, control's scores, DAPT's scores) for each class of a classification task, in label order."""
    return [(label, task["per_class"]["control"][label], task["per_class"]["dapt"][label]) for label in task["labels"]]


def _prf(scores: dict[str, Any]) -> str:
    return f"{scores['precision']:.3f} / {scores['recall']:.3f} / {scores['f1']:.3f}"


def _judge_text(task: dict[str, Any]) -> str:
    """What the report says about the LLM judge of an instruction task (nothing for other task types)."""
    if task["type"] != "instruction":
        return ""
    judge = task.get("judge")
    if not judge:
        return " No LLM judge was used: these scores compare the answers' words with the reference answers."
    return (
        f" LLM judge `{judge['model']}` (ratings 1-5 against the reference, rescaled to 0-1): "
        f"{judge['control']:.3f} (control) → {judge['dapt']:.3f} (DAPT)."
    )


def _with_spread(point: dict[str, Any], variant: str) -> str:
    """A data-efficiency point's mean, with ± the seeds' standard deviation when there are several seeds."""
    several = len(point.get(f"{variant}_runs", [])) > 1
    return f"{point[variant]:.3f}" + (f" ± {point[f'{variant}_std']:.3f}" if several else "")


def render_markdown(report: dict[str, Any]) -> str:
    base, pretrain, funnel = report["base"], report["pretrain"], report["data"]["funnel"]
    lines = [
        f"# dapt report — run `{report['run']}`",
        "",
        f"Created {report['created']} on {report['machine']}.",
        "",
        "## Did domain-adaptive pretraining pay off?",
        "",
    ]
    for task in report["tasks"]:
        d, p, q = task["difference"], task["primary"], task["secondary"]
        low, high = d[f"{p}_ci95"]
        lines.append(
            f"- **{task['name']}**: {METRIC_LABELS[p]} {task['control'][p]:.3f} (control, original base) → "
            f"{task['dapt'][p]:.3f} (DAPT base), {d[p] * 100:+.1f} points "
            f"(95% bootstrap interval {low * 100:+.1f} to {high * 100:+.1f}); {METRIC_LABELS[q]} "
            f"{task['control'][q]:.3f} → {task['dapt'][q]:.3f}{_seeds_note(task)}. "
            f"Verdict: {task['verdict']}.{_judge_text(task)}"
        )
        if "data_efficiency" in task:
            matched = task["dapt_matches_control_full_data_at"]
            lines.append(
                "  Data efficiency: the DAPT variant "
                + (
                    f"reaches the control's full-data {METRIC_LABELS[p]} with {matched:.0%} of the training data."
                    if matched is not None
                    else f"does not reach the control's full-data {METRIC_LABELS[p]} with less data."
                )
            )
    lines += [
        _language_model_line(base),
        "",
        "The interval comes from resampling the test examples (paired); with one seed it does not cover "
        "seed-to-seed variation — set `seeds:` on a task for that. Read small differences as noise.",
        "",
        "## Base models",
        "",
        f"Original base: {base['original']} ({base['architecture']}, {base['parameters'] / 1e6:.1f}M parameters).",
        *_missing_bytes_lines(base),
        *_extension_lines(base),
        "",
        "| model | vocabulary | domain ppl | general ppl | domain bits/byte | general bits/byte |",
        "|---|---|---|---|---|---|",
        f"| original | {base['vocab_size_before']} | {_num(base['domain_ppl_before'])} | "
        f"{_num(base['general_ppl_before'])} | {_num(base['domain_bpb_before'], 4)} | "
        f"{_num(base['general_bpb_before'], 4)} |",
        f"| DAPT | {base['vocab_size_after']} | {_num(base['domain_ppl_after'])} | {_num(base['general_ppl_after'])} | "
        f"{_num(base['domain_bpb_after'], 4)} | {_num(base['general_bpb_after'], 4)} |",
        "",
        COMPARABILITY_NOTE
        + (
            " Here they differ (the DAPT base has an extended vocabulary): compare the bases by bits per byte."
            if not base["same_tokenizer"]
            else " Here both bases use the same tokenizer, so both measures compare."
        ),
        "",
        f"Measured on the same held-out test documents for both bases ({base['test_documents'].get('domain', 0)} "
        f"domain and {base['test_documents'].get('general', 0)} general documents), each tokenized with the base's "
        f"own tokenizer: perplexity on at most the first {base['test_tokens'].get('domain', 0)} domain and "
        f"{base['test_tokens'].get('general', 0)} general tokens of each, bits per byte on the first "
        f"{base['test_bytes'].get('domain', 0)} domain and "
        f"{base['test_bytes'].get('general', 0)} general bytes; general text held out from "
        f"the `{base['general_heldout_from']}` source"
        + (
            " — the replay source, so it mostly shows how well the replay was learned."
            if base["general_heldout_from"] == "replay"
            else ", not the replay source."
        ),
        "",
        "## Continued pretraining",
        "",
        f"{pretrain['steps']} steps, {pretrain['tokens_trained']} tokens at {pretrain['tokens_per_second']:.0f} "
        f"tokens/s ({pretrain['train_seconds']:.0f} s of training); best step {pretrain['best_step']}."
        + (f" Stopped early: {pretrain['stop_reason']}." if pretrain["stopped_early"] else ""),
        "",
        "| step | domain val loss | general val loss |",
        "|---|---|---|",
    ]
    for evaluation in pretrain["evaluations"]:
        lines.append(
            f"| {evaluation['step']} | {_num(evaluation.get('domain_val_loss'), 4)} | "
            f"{_num(evaluation.get('general_val_loss'), 4)} |"
        )
    lines += [
        "",
        "## Tasks",
        "",
        "| task | recipe | train / test | metric | control | DAPT | difference |",
        "|---|---|---|---|---|---|---|",
    ]
    for task in report["tasks"]:
        recipe = task["recipe"] + (f" (last {task['top_blocks']} blocks + head)" if task["top_blocks"] else "")
        for metric in (task["primary"], task["secondary"]):
            lines.append(
                f"| {task['name']} | {recipe} | {task['train_examples']} / {task['test_examples']} | "
                f"{METRIC_LABELS[metric]} | {task['control'][metric]:.3f} | {task['dapt'][metric]:.3f} | "
                f"{difference_text(metric, task['difference'][metric])} |"
            )
    lines += ["", "Both variants of a task use the same recipe, data, budget and seeds; only their base differs."]
    for task in report["tasks"]:
        if "data_efficiency" in task:
            lines += [
                "",
                f"Data efficiency of `{task['name']}` "
                f"({METRIC_LABELS[task['primary']]} by share of the training data):",
                "",
                "| share of training data | control | DAPT |",
                "|---|---|---|",
            ]
            lines += [
                f"| {point['fraction']:.0%} | {_with_spread(point, 'control')} | {_with_spread(point, 'dapt')} |"
                for point in task["data_efficiency"]
            ]
        if task.get("missing_runs"):
            lines += ["", f"Not finished, left out: {', '.join(task['missing_runs'])}."]
        if task.get("per_class"):
            lines += ["", f"Per class, `{task['name']}` ({PER_CLASS_NOTE}):", ""]
            lines += ["| class | test examples | control P / R / F1 | DAPT P / R / F1 |", "|---|---|---|---|"]
            for label, control, dapt in per_class_rows(task):
                lines.append(f"| {label} | {dapt['support']} | {_prf(control)} | {_prf(dapt)} |")
            for variant in ("control", "dapt"):
                lines += ["", f"Confusion matrix, {variant} (rows: true class, columns: predicted):", ""]
                lines += ["| true ↓ predicted → | " + " | ".join(task["labels"]) + " |"]
                lines += ["|---" * (len(task["labels"]) + 1) + "|"]
                for label, row in zip(task["labels"], task["confusion_matrix"][variant], strict=True):
                    lines.append(f"| {label} | " + " | ".join(str(n) for n in row) + " |")
        if task.get("adapted_from"):
            lines += ["", ADAPTED_NOTE.format(name=task["name"], base=task["adapted_from"])]
    if report.get("stale_adapted_tasks"):
        lines += ["", STALE_NOTE.format(names=", ".join(report["stale_adapted_tasks"]))]
    lines += [
        "",
        "## Data funnel",
        "",
        f"{funnel['documents_in']} documents in, {funnel['kept']} kept."
        + (
            " Before that, ingest skipped "
            + ", ".join(f"{n} ({reason})" for reason, n in funnel["ingest_rejected_by_reason"].items())
            + " records (see ingest/rejection_ledger.parquet)."
            if funnel.get("ingest_rejected_by_reason")
            else ""
        ),
        "",
        "| dropped because | documents |",
        "|---|---|",
    ]
    lines += [f"| {reason} | {count} |" for reason, count in sorted(funnel["dropped_by_reason"].items())]
    for task, count in funnel["decontaminated_by_task"].items():
        lines.append(f"\nDecontamination: {count} documents shared a long n-gram with the `{task}` test set.")
    lines += ["", "| token split | documents | tokens |", "|---|---|---|"]
    for split, stats in report["data"]["token_splits"].items():
        lines.append(f"| {split} | {stats['documents']} | {stats['tokens']} |")
    lines += [
        "",
        "## Lineage",
        "",
        "```",
        *render_tree(report["lineage"]),
        "```",
        "",
        "## Time per stage",
        "",
        "| stage | seconds |",
        "|---|---|",
    ]
    lines += [f"| {name} | {seconds:.1f} |" for name, seconds in report["timings"].items()]
    return "\n".join(lines) + "\n"
