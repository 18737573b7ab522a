"""report.md from the report dict that build.py assembles, and the wording report.html shares with it.

The numbers' formats, the notes and the verdict's sentences live here once, so the two reports can never disagree.
"""

from __future__ import annotations

from typing import Any

from dapt.lineage import render_tree

ADAPTED_NOTE = (
    "`{name}` was branched later with `dapt adapt` from the finished base `{base}` (and its original base, the "
    "control): its test texts were not removed from that base's pretraining corpus."
)
STALE_NOTE = (
    "Left out: {names}, branched with `dapt adapt` from a base that has been rebuilt since; run `dapt adapt` again."
)


# How each metric is named in the reports.
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


def num(value: float | None, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def change(before: float | None, after: float | None) -> str:
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
        f"**domain bits per byte** {num(base['domain_bpb_before'], 4)} → {num(base['domain_bpb_after'], 4)} "
        f"({change(base['domain_bpb_before'], base['domain_bpb_after'])}); **general bits per byte** "
        f"{num(base['general_bpb_before'], 4)} → {num(base['general_bpb_after'], 4)} "
        f"({change(base['general_bpb_before'], base['general_bpb_after'])}, the forgetting signal)"
    )
    if not base["same_tokenizer"]:
        return (
            f"- The DAPT base has an extended vocabulary ({base['vocab_size_before']} → {base['vocab_size_after']} "
            f"tokens), so per-token perplexity does not compare; {bpb}."
        )
    return (
        f"- **Domain perplexity** {num(base['domain_ppl_before'])} → {num(base['domain_ppl_after'])} "
        f"({change(base['domain_ppl_before'], base['domain_ppl_after'])}); **general perplexity** "
        f"{num(base['general_ppl_before'])} → {num(base['general_ppl_after'])} "
        f"({change(base['general_ppl_before'], base['general_ppl_after'])}, the forgetting signal); {bpb[0].lower()}"
        f"{bpb[1:]}."
    )


def missing_bytes_lines(base: dict[str, Any]) -> list[str]:
    missing = base.get("tokenizer_missing_bytes")
    if not missing:
        return []
    return [
        "",
        f"Warning: the base's tokenizer has no token for {len(missing)} bytes ({', '.join(missing)}); characters that "
        "need them are dropped when text is encoded.",
    ]


def extension_lines(base: dict[str, Any]) -> list[str]:
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


def long_context_lines(base: dict[str, Any]) -> list[str]:
    """The context extension's section of report.md: what the longer window bought and cost (empty without one)."""
    window = base.get("long_context")
    if not window:
        return []
    original, dapt = window["original"], window["dapt"]
    lines = [
        "",
        f"### Long context: {window['old_window']:,} → {window['new_window']:,} tokens",
        "",
        "Passkey retrieval (a 5-digit key hidden at 10%, 50% and 90% depth of filler text, asked for at the end; "
        f"{original['passkey']['trials']} keys per length and depth, greedy answers), accuracy:",
        "",
        "| prompt tokens | original base | DAPT base |",
        "|---|---|---|",
    ]
    for number, length in enumerate(original["passkey"]["lengths"]):
        before = sum(original["passkey"]["accuracy"][number]) / len(original["passkey"]["depths"])
        after = sum(dapt["passkey"]["accuracy"][number]) / len(dapt["passkey"]["depths"])
        lines.append(f"| {length:,} | {before:.0%} | {after:.0%} |")
    if "domain_loss_by_position" in original:
        lines += [
            "",
            "Held-out domain loss by position in the document (windows of the new length):",
            "",
            "| positions | tokens | original base | DAPT base |",
            "|---|---|---|---|",
        ]
        for before, after in zip(
            original["domain_loss_by_position"]["buckets"], dapt["domain_loss_by_position"]["buckets"], strict=True
        ):
            lines.append(
                f"| {before['from']:,}–{before['to']:,} | {before['tokens']:,} | {num(before['loss'], 4)} | "
                f"{num(after['loss'], 4)} |"
            )
    recovered = window["short_context_recovered"]
    verdicts = [
        f"{name} {num(result['original'], 4)} → {num(result['dapt'], 4)} ({result['change']:+.1%}, "
        + ("recovered" if result["recovered"] else "not recovered")
        + ")"
        for name, result in recovered.items()
        if isinstance(result, dict)
    ]
    if verdicts:
        lines += [
            "",
            f"Short-context retention, loss at the original {window['old_window']:,}-token window: "
            + "; ".join(verdicts)
            + f". Recovered means at most {recovered['tolerance']:.0%} above the original base (Llama 3's criterion "
            "for accepting a context-extension stage).",
        ]
    return lines


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


def with_spread(point: dict[str, Any], variant: str) -> str:
    """A data-efficiency point's mean, with ± the seeds' standard deviation when there are several seeds."""
    several = len(point.get(f"{variant}_runs", [])) > 1
    return f"{point[variant]:.3f}" + (f" ± {point[f'{variant}_std']:.3f}" if several else "")


COST_HEADING = "## What adaptation cost"
COST_NOTE = (
    "Safety: greedy answers to {harmful} harmful requests (from Do-Not-Answer), which should be refused, and {safe} "
    "safe requests that look like them (after XSTest), which should be answered; a refusal is detected by phrase "
    "patterns in the answer's opening (precision 1.00, recall 0.94 on 38 labelled answers, tests/unit/test_safety.py)"
    ". Retention: {items} general-knowledge cloze items scored by log-likelihood, and the general held-out "
    "perplexity above. One prompt is {step:.1f} points of a rate: read small differences as noise. Sources and "
    "licences: `dapt/eval/data/README.md`; a stronger judge: `safety.judge`."
)
COST_MEASURES = (  # key in a comparison, how the report names it
    ("refusal_rate", "refusal rate on harmful requests"),
    ("compliance_rate", "compliance rate on safe requests"),
    ("cloze_accuracy", "general-knowledge cloze accuracy"),
)


def _cost_measure(name: str, label: str, measured: dict[str, Any]) -> str:
    low, high = measured["ci95"]
    return (
        f"{label} {measured['reference']:.3f} → {measured['candidate']:.3f} "
        f"({measured['difference'] * 100:+.1f} points, 95% interval {low * 100:+.1f} to {high * 100:+.1f})"
    )


def cost_comparison_text(comparison: dict[str, Any]) -> str:
    """One comparison of the cost section, in words: its measures, the judge's rates, its broken gates."""
    parts = [_cost_measure(name, label, comparison[name]) for name, label in COST_MEASURES if name in comparison]
    general = comparison.get("general")
    if general:
        what = "perplexity" if general["measure"] == "general_ppl" else "bits per byte"
        parts.append(
            f"general held-out {what} {general['before']:.3f} → {general['after']:.3f} ({general['rise']:+.1%})"
        )
    if comparison["name"] == "bases" and not comparison.get("chat_model"):
        parts.append("safety not measured: the original base has no chat template, so no alignment to lose")
    judge = comparison.get("judge")
    if judge:
        parts.append(
            f"LLM judge `{judge['model']}`: refusal rate {judge['reference']['refusal_rate']:.3f} → "
            f"{judge['candidate']['refusal_rate']:.3f}, compliance rate {judge['reference']['compliance_rate']:.3f} "
            f"→ {judge['candidate']['compliance_rate']:.3f}"
        )
    if comparison["name"] == "restored" and not comparison.get("chat_model"):
        parts.append("safety not measured: the restored base has no chat template")
    if comparison["name"] == "bases":
        title = "original → DAPT base"
    elif comparison["name"] == "restored":
        title = f"original → restored base ({comparison['formula']})"
    else:
        title = f"`{comparison['name']}`, control → DAPT variant" + (
            f" (means over {comparison['seeds']} seeds)" if comparison.get("seeds", 1) > 1 else ""
        )
    broken = "".join(f" **Gate broken**: {b['message']}." for b in comparison["broken"])
    return f"**{title}**: " + "; ".join(parts) + "." + broken


RESTORED_MODELS = (("original", "original base"), ("dapt", "DAPT base"), ("restored", "restored base"))
RESTORED_MEASURES = (  # key in a model's row, how the report names it, decimals
    ("domain_ppl", "domain ppl", 3),
    ("general_ppl", "general ppl", 3),
    ("refusal_rate", "refusal rate", 3),
    ("compliance_rate", "compliance rate", 3),
    ("cloze_accuracy", "cloze accuracy", 3),
)


def restored_lines(comparison: dict[str, Any]) -> list[str]:
    """The original, DAPT and restored bases side by side: what the restoring gave back, and at what domain price."""
    lines = [
        "",
        f"Restored base ({comparison['method'].replace('_', ' ')}: {comparison['formula']}), beside the bases:",
        "",
    ]
    measures = RESTORED_MEASURES
    if (comparison.get("general") or {}).get("measure") == "general_bits_per_byte":  # the tokenizers differ
        measures = (("domain_bits_per_byte", "domain bits/byte", 4), ("general_bits_per_byte", "general bits/byte", 4))
        measures += RESTORED_MEASURES[2:]
    for key, label in RESTORED_MODELS:
        row = comparison["models"][key]
        values = [f"{name} {num(row.get(measure), decimals)}" for measure, name, decimals in measures]
        lines.append(f"- {label}: " + ", ".join(values))
    return lines


def cost_lines(cost: dict[str, Any] | None) -> list[str]:
    """The section "What adaptation cost" of report.md (empty when the run has no gates stage yet)."""
    if not cost:
        return []
    lines = ["", COST_HEADING, ""]
    lines += [f"- {cost_comparison_text(comparison)}" for comparison in cost["comparisons"]]
    for comparison in cost["comparisons"]:
        if comparison["name"] == "restored":
            lines += restored_lines(comparison)
    gates = ", ".join(
        f"{name} {'off' if value is None else f'{value:g}'}" for name, value in cost["thresholds"].items()
    )
    lines += [
        "",
        f"Gates ({gates}): "
        + (
            f"**{len(cost['broken'])} broken**; `dapt run --strict-gates` exits with code 3."
            if cost["broken"]
            else "every gate holds."
        ),
        "",
        COST_NOTE.format(**cost["sizes"], step=100 / max(1, cost["sizes"]["harmful"])),
    ]
    return lines


def val_loss_text(evaluation: dict[str, Any], split: str) -> str:
    """A validation loss with its standard error over documents and their number, e.g. `2.4181 ± 0.0312 (50 docs)`."""
    loss, error = evaluation.get(f"{split}_val_loss"), evaluation.get(f"{split}_val_loss_se")
    documents = evaluation.get(f"{split}_val_documents")
    return (
        num(loss, 4)
        + (f" ± {error:.4f}" if error is not None else "")
        + (f" ({documents} docs)" if documents is not None else "")
    )


def forgetting_text(check: dict[str, Any] | None) -> str:
    """One evaluation against the forgetting budget: the rise, its standard error and what the guard did."""
    if check is None:
        return ""
    error = f" ± {check['rise_se']:.2%}" if check.get("rise_se") is not None else ""
    action = check["action"] or ("over" if check["over_budget"] else "within")
    if "replay_share" in check:
        action += f": replay {check['replay_share'][0]:.1%} → {check['replay_share'][1]:.1%}"
    return f"{check['rise']:+.2%}{error} ({action})"


STAGE_HEADERS = [
    "stage",
    "steps",
    "tokens",
    "window",
    "data",
    "lr (first → last step)",
    "windows drawn",
    "domain val loss at its end",
    "general val loss at its end",
]


def stage_data_text(stage: dict[str, Any]) -> str:
    """A stage's data: its replay share, or each source's share of its mix."""
    if stage.get("mix") is None:
        return f"replay {stage['replay_fraction']:.0%}"
    total = sum(stage["mix"].values())
    return ", ".join(f"{name} {weight / total:.0%}" for name, weight in stage["mix"].items())


def stage_rows(pretrain: dict[str, Any]) -> list[list[str]]:
    """One row per data stage (`pretrain.stages`), as trained: its steps (of those planned, when an early stop cut
    it), tokens, window, data, learning rate, windows drawn and the validation losses at its end."""
    rows = []
    for stage in pretrain.get("stages") or []:
        steps = f"{stage['first_step']}-{stage['last_step']}" if stage["steps"] else "none"
        if not stage["completed"]:
            steps += f" ({stage['steps']} of {stage['planned_steps']})"
        lr = " → ".join(f"{rate:.2e}" for rate in stage["lr"]) + f" ({stage['schedule']})" if stage["lr"] else ""
        drawn = ", ".join(f"{name} {count}" for name, count in stage["windows_drawn"].items())
        end = stage.get("end_evaluation") or {}
        rows.append(
            [
                stage["name"],
                steps,
                f"{stage['tokens']:,}",
                f"{stage['micro_batch_size']} × {stage['seq_len']}",
                stage_data_text(stage),
                lr,
                drawn,
                val_loss_text(end, "domain") if end else "",
                val_loss_text(end, "general") if end else "",
            ]
        )
    return rows


def stage_lines(pretrain: dict[str, Any]) -> list[str]:
    """The data stages as a table (nothing for a run without stages)."""
    rows = stage_rows(pretrain)
    if not rows:
        return []
    return [
        f"Trained in {len(rows)} data stages (`pretrain.stages`); validation at every stage's end, on the same "
        "windows throughout:",
        "",
        "| " + " | ".join(STAGE_HEADERS) + " |",
        "|" + "---|" * len(STAGE_HEADERS),
        *("| " + " | ".join(row) + " |" for row in rows),
        "",
    ]


def training_lines(pretrain: dict[str, Any]) -> list[str]:
    """The evaluations of continued pretraining (and, with them, the forgetting guard's checks and the average of
    the last checkpoints), for the section "Continued pretraining"."""
    guard, average = pretrain.get("forgetting"), pretrain.get("average")
    checks = {check["step"]: check for check in guard["checks"]} if guard else {}
    lines = []
    if guard:
        lines += [
            f"Forgetting budget {guard['budget']:.1%}: the general validation loss may rise that much over the "
            f"original base's (step 0); a step is over it when the rise exceeds it by more than "
            f"{guard['significance']:g} standard errors (paired over the general validation documents). Over it, "
            f"`on_forgetting: {guard['on_forgetting']}`; such a step is never the best. Actions taken: "
            + (", ".join(f"step {c['step']} {forgetting_text(c)}" for c in guard["actions"]) or "none")
            + ".",
            "",
        ]
    header = "| step | domain val loss ± SE (documents) | general val loss ± SE (documents) |"
    lines += [header + (" rise vs. budget |" if guard else ""), "|---|---|---|" + ("---|" if guard else "")]
    for evaluation in pretrain["evaluations"]:
        row = (
            f"| {evaluation['step']} | {val_loss_text(evaluation, 'domain')} | {val_loss_text(evaluation, 'general')} |"
        )
        lines.append(row + (f" {forgetting_text(checks.get(evaluation['step']))} |" if guard else ""))
    if average:
        steps = ", ".join(map(str, average["steps"]))
        row = f"| average of {steps} | {val_loss_text(average, 'domain')} | {val_loss_text(average, 'general')} |"
        lines.append(row + (f" {forgetting_text({**average['forgetting'], 'action': ''})} |" if guard else ""))
        lines += [
            "",
            f"The weights of the last checkpoints (steps {steps}) averaged: "
            + (
                "it is the DAPT base (better than the best step, within the budget)."
                if average["exported"]
                else "not the DAPT base (no better than the best step, or over the forgetting budget)."
            ),
        ]
    return lines


def render_markdown(report: dict[str, Any]) -> str:
    lines = [
        f"# dapt report — run `{report['run']}`",
        "",
        f"Created {report['created']} on {report['machine']}.",
        "",
        "## Did domain-adaptive pretraining pay off?",
        "",
        *_verdict_lines(report["tasks"]),
        _language_model_line(report["base"]),
        "",
        "The interval comes from resampling the test examples (paired); with one seed it does not cover "
        "seed-to-seed variation — set `seeds:` on a task for that. Read small differences as noise.",
        *cost_lines(report.get("cost")),
        "",
        *_base_lines(report["base"]),
        *_pretraining_lines(report["pretrain"]),
        *_task_lines(report),
        *_funnel_lines(report["data"]),
        *_lineage_and_time_lines(report),
    ]
    return "\n".join(lines) + "\n"


def _verdict_lines(tasks: list[dict[str, Any]]) -> list[str]:
    """Each task's answer to the report's question: the primary metric, control vs DAPT, with the interval."""
    lines: list[str] = []
    for task in tasks:
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
    return lines


def _base_lines(base: dict[str, Any]) -> list[str]:
    """Both bases on the same held-out documents: perplexity and bits per byte, and what they were measured on."""
    return [
        "## Base models",
        "",
        f"Original base: {base['original']} ({base['architecture']}, {base['parameters'] / 1e6:.1f}M parameters).",
        *missing_bytes_lines(base),
        *extension_lines(base),
        "",
        "| model | vocabulary | domain ppl | general ppl | domain bits/byte | general bits/byte |",
        "|---|---|---|---|---|---|",
        f"| original | {base['vocab_size_before']} | {num(base['domain_ppl_before'])} | "
        f"{num(base['general_ppl_before'])} | {num(base['domain_bpb_before'], 4)} | "
        f"{num(base['general_bpb_before'], 4)} |",
        f"| DAPT | {base['vocab_size_after']} | {num(base['domain_ppl_after'])} | {num(base['general_ppl_after'])} | "
        f"{num(base['domain_bpb_after'], 4)} | {num(base['general_bpb_after'], 4)} |",
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
        *long_context_lines(base),
        "",
    ]


def _pretraining_lines(pretrain: dict[str, Any]) -> list[str]:
    return [
        "## Continued pretraining",
        "",
        f"{pretrain['steps']} steps, {pretrain['tokens_trained']} tokens at {pretrain['tokens_per_second']:.0f} "
        f"tokens/s ({pretrain['train_seconds']:.0f} s of training); best step {pretrain['best_step']}."
        + (f" Stopped early: {pretrain['stop_reason']}." if pretrain["stopped_early"] else ""),
        "",
        *stage_lines(pretrain),
        *training_lines(pretrain),
    ]


def _task_lines(report: dict[str, Any]) -> list[str]:
    """The task table, then per task: its data-efficiency curve, per-class scores and confusion matrices."""
    lines: list[str] = []
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
                f"| {point['fraction']:.0%} | {with_spread(point, 'control')} | {with_spread(point, 'dapt')} |"
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
    return lines


def _funnel_lines(data: dict[str, Any]) -> list[str]:
    """What curation kept and dropped, and the token splits."""
    funnel = data["funnel"]
    lines: list[str] = []
    lines += [
        "",
        "## Data funnel",
        "",
        f"{funnel['documents_in']} documents in, {funnel['kept']} kept."
        + (
            " Before that, ingest skipped "
            + ", ".join(f"{n} ({reason})" for reason, n in funnel["ingest_rejected_by_reason"].items())
            + " records (listed first in the curate artifact's rejection_ledger.parquet, and in ingest's)."
            if funnel.get("ingest_rejected_by_reason")
            else ""
        ),
        "",
        "| dropped because | documents |",
        "|---|---|",
    ]
    lines += [f"| {reason} | {count} |" for reason, count in sorted(funnel["dropped_by_reason"].items())]
    lines += [f"\n**Warning:** {drop['message']}." for drop in funnel.get("heavy_drops", [])]
    for task, count in funnel["decontaminated_by_task"].items():
        lines.append(f"\nDecontamination: {count} documents shared a long n-gram with the `{task}` test set.")
    lines += ["", "| token split | documents | tokens |", "|---|---|---|"]
    for split, stats in data["token_splits"].items():
        lines.append(f"| {split} | {stats['documents']} | {stats['tokens']} |")
    return lines


def _lineage_and_time_lines(report: dict[str, Any]) -> list[str]:
    lines: list[str] = []
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
    return lines
