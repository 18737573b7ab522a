"""report.html: the run report as one self-contained page, with plots.

Everything is inside the file — figures are base64 PNG data URIs, the CSS is inline, there is no
JavaScript and no link to anything outside — so it can be mailed, archived or opened offline.
It is drawn from the same `report` dict as report.json, and the verdict is worded by the same code
as report.md (`render_markdown`), so the two reports can never disagree. Every string that comes
from data (task, source, stage names, drop reasons) is HTML-escaped.
"""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Collection
from typing import Any

from dapt.lineage import render_tree
from dapt.report import plots
from dapt.report.markdown import (
    ADAPTED_NOTE,
    COMPARABILITY_NOTE,
    COST_HEADING,
    METRIC_LABELS,
    PER_CLASS_NOTE,
    STAGE_HEADERS,
    STALE_NOTE,
    UNBOUNDED_METRICS,
    change,
    difference_text,
    extension_lines,
    forgetting_text,
    long_context_lines,
    missing_bytes_lines,
    num,
    per_class_rows,
    render_markdown,
    stage_rows,
    val_loss_text,
    with_spread,
)

VERDICT_HEADING = "## Did domain-adaptive pretraining pay off?"  # the section of report.md the verdict comes from

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; color: #222;
       max-width: 1000px; margin: 2em auto; padding: 0 1em; line-height: 1.45; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; }
h2 { font-size: 1.25em; border-bottom: 1px solid #ddd; padding-bottom: 0.2em; margin-top: 2em; }
h3 { font-size: 1.05em; }
.meta { color: #666; margin-top: 0; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.92em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.7em; text-align: left; vertical-align: top; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
th { background: #f3f3f3; }
tr.total td { font-weight: 600; }
figure { margin: 1em 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { color: #555; font-size: 0.9em; }
pre { background: #f6f8fa; padding: 0.8em 1em; overflow-x: auto; font-size: 0.9em; }
code { background: #f3f3f3; padding: 0 0.2em; }
nav ol { columns: 2; }
"""

SECTIONS = [  # (id, heading) in page order; the verdict's heading is report.md's
    ("verdict", VERDICT_HEADING.removeprefix("## ")),
    ("adaptation-cost", COST_HEADING.removeprefix("## ")),
    ("loss-curves", "Continued pretraining: loss curves"),
    ("perplexity", "Perplexity and bits per byte, before and after"),
    ("data-funnel", "Data funnel"),
    ("tasks", "Tasks: control vs DAPT"),
    ("lineage", "Lineage"),
    ("cost", "Cost"),
]


def _e(value: Any) -> str:
    """HTML-escape anything that came from data."""
    return html.escape(str(value), quote=True)


def _inline_markdown(text: str) -> str:
    """Escape, then render the two inline forms report.md uses: **bold** and `code`."""
    escaped = _e(text)
    escaped = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", escaped)
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", escaped)


def _markdown_section(markdown: str, heading: str) -> str:
    """One section of report.md (bullet lists and paragraphs) as HTML."""
    if heading + "\n" not in markdown:
        raise ValueError(f"report.md has no section {heading!r}")
    body = markdown.split(heading + "\n", 1)[1].split("\n## ", 1)[0]
    blocks = []
    for block in (b.strip() for b in body.split("\n\n")):
        lines = block.splitlines()
        if not lines:
            continue
        if all(line.startswith("- ") for line in lines):
            items = "".join(f"<li>{_inline_markdown(line[2:])}</li>" for line in lines)
            blocks.append(f"<ul>{items}</ul>")
        else:
            blocks.append(f"<p>{_inline_markdown(' '.join(lines))}</p>")
    return "\n".join(blocks)


def _image(png: bytes, alt: str, caption: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    width, height = (round(side * plots.DPI) for side in plots.FIGURE_SIZE)
    return (
        f'<figure><img src="data:image/png;base64,{data}" alt="{_e(alt)}" width="{width}" height="{height}">'
        f"<figcaption>{caption}</figcaption></figure>"
    )


def _table(header: list[str], rows: list[list[str]], numeric: Collection[int] = (), total: bool = False) -> str:
    """A table from cells that are already HTML (escape data before it gets here); `numeric` columns align right."""

    def cells(values: list[str], tag: str) -> str:
        return "".join(f"<{tag}{' class=num' if i in numeric else ''}>{v}</{tag}>" for i, v in enumerate(values))

    body = [
        f"<tr{' class=total' if total and i == len(rows) - 1 else ''}>{cells(r, 'td')}</tr>" for i, r in enumerate(rows)
    ]
    return f"<table><thead><tr>{cells(header, 'th')}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _points(value: float) -> str:
    return f"{value * 100:+.1f}"


def _section(section_id: str, body: str) -> str:
    heading = dict(SECTIONS)[section_id]
    return f'<section id="{section_id}">\n<h2>{_e(heading)}</h2>\n{body}\n</section>'


# -- the sections ---------------------------------------------------------------------------------------


def _verdict(report: dict[str, Any]) -> str:
    return _markdown_section(render_markdown(report), VERDICT_HEADING)


def _adaptation_cost(report: dict[str, Any]) -> str:
    """The same words as report.md's section (safety, retention, the gates)."""
    if not report.get("cost"):
        return "<p>Not measured yet: the run has no finished gates stage.</p>"
    return _markdown_section(render_markdown(report), COST_HEADING)


def _loss_curves(report: dict[str, Any]) -> str:
    pretrain = report["pretrain"]
    curve = pretrain.get("train_curve") or {"step": [], "loss": []}
    summary = (
        f"<p>{pretrain['steps']} optimizer steps, {pretrain['tokens_trained']:,} tokens; best step "
        f"{pretrain['best_step']} by the domain validation loss — that checkpoint is the DAPT base."
        + (f" Stopped early: {_e(pretrain['stop_reason'])}." if pretrain["stopped_early"] else "")
        + "</p>"
    )
    figure = _image(
        plots.loss_curves(
            curve,
            pretrain["evaluations"],
            pretrain["best_step"],
            [stage["last_step"] for stage in (pretrain.get("stages") or [])[:-1] if stage["steps"]],
        ),
        "training and validation loss per step",
        "Training loss at every optimizer step (on the domain + replay mix) and held-out validation loss at each "
        "evaluation; step 0 is the original base. The dashed line marks the best step"
        + ("; dotted lines, the ends of the data stages." if pretrain.get("stages") else "."),
    )
    guard, average = pretrain.get("forgetting"), pretrain.get("average")
    checks = {check["step"]: check for check in guard["checks"]} if guard else {}
    rows = [
        [str(e["step"]), val_loss_text(e, "domain"), val_loss_text(e, "general")]
        + ([forgetting_text(checks.get(e["step"]))] if guard else [])
        + ["best" if e["step"] == pretrain["best_step"] else ""]
        for e in pretrain["evaluations"]
    ]
    if average:
        rows.append(
            [f"average of {', '.join(map(str, average['steps']))}"]
            + [val_loss_text(average, "domain"), val_loss_text(average, "general")]
            + ([forgetting_text({**average["forgetting"], "action": ""})] if guard else [])
            + ["DAPT base" if average["exported"] else ""]
        )
    headers = ["step", "domain val loss ± SE (documents)", "general val loss ± SE (documents)"]
    table = _table(headers + (["rise vs. forgetting budget"] if guard else []) + [""], rows, numeric={0})
    budget = (
        f"<p>Forgetting budget {guard['budget']:.1%} (on_forgetting: {_e(guard['on_forgetting'])}); a step is over "
        f"it when the rise of the general validation loss exceeds it by more than {guard['significance']:g} "
        "standard errors, and is then never the best.</p>"
        if guard
        else ""
    )
    stages = stage_rows(pretrain)
    staged = (
        f"<p>Trained in {len(stages)} data stages (pretrain.stages); validation at every stage's end, on the same "
        "windows throughout.</p>" + _table(STAGE_HEADERS, [[_e(cell) for cell in row] for row in stages], numeric={2})
        if stages
        else ""
    )
    return "\n".join([summary, budget, staged, figure, table])


def _heldout_sources(report: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(label, key in report['base'], key in test_tokens) per held-out text: the domain and the general one."""
    base, sources = report["base"], report["data"]["sources"]

    def named(role: str) -> str:
        names = [name for name, source in sources.items() if source["role"] == role]
        return f" ({', '.join(names)})" if names else ""

    return [
        ("domain" + named("domain"), "domain_ppl", "domain"),
        ("general" + named(base["general_heldout_from"]), "general_ppl", "general"),
    ]


def _perplexity(report: dict[str, Any]) -> str:
    base = report["base"]
    rows, bpb_rows, labels, before, after = [], [], [], [], []
    # with different tokenizers only bits per byte compares the bases, so that is what the plot shows
    plotted = "ppl" if base.get("same_tokenizer", True) else "bpb"
    for label, key, tokens_key in _heldout_sources(report):
        old, new = base[f"{key}_before"], base[f"{key}_after"]
        rows.append(
            [
                _e(label),
                _e(base["test_tokens"].get(tokens_key, 0)),
                num(old),
                num(new),
                change(old, new),
            ]
        )
        old_bpb, new_bpb = base.get(f"{tokens_key}_bpb_before"), base.get(f"{tokens_key}_bpb_after")
        bpb_rows.append(
            [
                _e(label),
                _e(base.get("test_bytes", {}).get(tokens_key, 0)),
                num(old_bpb, 4),
                num(new_bpb, 4),
                change(old_bpb, new_bpb),
            ]
        )
        shown = (old, new) if plotted == "ppl" else (old_bpb, new_bpb)
        if None not in shown:
            labels.append(label)
            before.append(shown[0])
            after.append(shown[1])
    parts = []
    if labels:
        parts.append(
            _image(
                plots.perplexity_bars(labels, before, after, measure=plotted),
                f"test {'perplexity' if plotted == 'ppl' else 'bits per byte'} of the original and the DAPT base",
                f"{'Perplexity' if plotted == 'ppl' else 'Bits per byte'} on held-out test documents, which neither "
                "training nor early stopping saw. A rise on general text is the forgetting signal.",
            )
        )
    parts.append(
        _table(["held-out text", "test tokens", "original ppl", "DAPT ppl", "change"], rows, numeric={1, 2, 3, 4})
    )
    parts.append(
        _table(
            ["held-out text", "test bytes", "original bits/byte", "DAPT bits/byte", "change"],
            bpb_rows,
            numeric={1, 2, 3, 4},
        )
    )
    parts.append(
        f"<p>{_e(COMPARABILITY_NOTE)}"
        + (
            f" Here they differ: the DAPT base has an extended vocabulary ({base['vocab_size_before']:,} → "
            f"{base['vocab_size_after']:,} tokens), so compare the bases by bits per byte.</p>"
            if not base.get("same_tokenizer", True)
            else " Here both bases use the same tokenizer.</p>"
        )
    )
    parts.append(
        f"<p>Original base: {_e(base['original'])} ({_e(base['architecture'])}, "
        f"{base['parameters'] / 1e6:.2f}M parameters). General text held out from the "
        f"<code>{_e(base['general_heldout_from'])}</code> source"
        + (
            " — the replay source, so it mostly shows how well the replay was learned.</p>"
            if base["general_heldout_from"] == "replay"
            else ", not the replay source.</p>"
        )
    )
    # the same paragraphs as report.md: the vocabulary extension, a tokenizer that drops bytes
    parts += [
        f"<p>{_e(line.replace('`', ''))}</p>" for line in (*extension_lines(base), *missing_bytes_lines(base)) if line
    ]
    if base.get("long_context"):
        parts.append(_long_context(base["long_context"]))
    return "\n".join(parts)


def _long_context(window: dict[str, Any]) -> str:
    """A context extension's passkey table, loss-by-position plot and short-context retention (report.md's
    tables, and the plot)."""
    parts = [f"<h3>Long context: {window['old_window']:,} → {window['new_window']:,} tokens</h3>"]
    original, dapt = window["original"], window["dapt"]
    if "domain_loss_by_position" in original:
        parts.append(
            _image(
                plots.loss_by_position(
                    original["domain_loss_by_position"]["buckets"],
                    dapt["domain_loss_by_position"]["buckets"],
                    window["old_window"],
                ),
                "held-out domain loss by position in the document, original and DAPT base",
                "Held-out domain loss by position in the document: past the old window (dashed), a model that uses "
                "the longer context keeps predicting better, or at least no worse.",
            )
        )
    depths = original["passkey"]["depths"]
    rows = [
        [f"{length:,}"]
        + [f"{accuracy:.0%}" for accuracy in original["passkey"]["accuracy"][number]]
        + [f"{accuracy:.0%}" for accuracy in dapt["passkey"]["accuracy"][number]]
        for number, length in enumerate(original["passkey"]["lengths"])
    ]
    header = ["prompt tokens"] + [f"original, depth {d:.0%}" for d in depths] + [f"DAPT, depth {d:.0%}" for d in depths]
    parts.append(
        f"<p>Passkey retrieval: a 5-digit key hidden in filler text, asked for at the end "
        f"({original['passkey']['trials']} keys per cell, greedy answers).</p>"
    )
    parts.append(_table(header, rows, numeric=set(range(1, len(header)))))
    retention = [line for line in long_context_lines({"long_context": window}) if line.startswith("Short-context")]
    parts += [f"<p>{_e(line)}</p>" for line in retention]
    return "\n".join(parts)


def _data_funnel(report: dict[str, Any]) -> str:
    funnel, data = report["data"]["funnel"], report["data"]
    documents_in = funnel["documents_in"]

    def share(count: int) -> str:
        return f"{count / documents_in:.1%}" if documents_in else "—"

    dropped = sorted(funnel["dropped_by_reason"].items(), key=lambda item: (-item[1], item[0]))
    rows = [["documents in", str(documents_in), share(documents_in)]]
    rows += [[f"dropped: {_e(reason)}", str(count), share(count)] for reason, count in dropped]
    rows.append(["kept", str(funnel["kept"]), share(funnel["kept"])])
    parts = [
        _image(
            plots.data_funnel(documents_in, funnel["kept"], funnel["dropped_by_reason"]),
            "documents in, dropped by reason, kept",
            "Every dropped document is in the curate artifact's <code>rejection_ledger.parquet</code> with its reason.",
        ),
        _table(["", "documents", "share"], rows, numeric={1, 2}),
    ]
    parts += [f"<p><strong>Warning:</strong> {_e(drop['message'])}.</p>" for drop in funnel.get("heavy_drops", [])]
    decontaminated = funnel.get("decontaminated_by_task", {})
    if decontaminated:
        parts.append("<h3>Decontamination per task</h3>")
        parts.append(
            "<p>Documents sharing a long n-gram with a task's test set are removed, so pretraining never sees the "
            "test texts.</p>"
        )
        parts.append(
            _table(
                ["task", "documents removed"],
                [[_e(task), str(count)] for task, count in decontaminated.items()],
                numeric={1},
            )
        )
    parts.append("<h3>Sources and token splits</h3>")
    parts.append(
        _table(
            ["source", "role", "documents", "characters"],
            [
                [_e(name), _e(source["role"]), str(source["documents"]), f"{source['chars']:,}"]
                for name, source in data["sources"].items()
            ],
            numeric={2, 3},
        )
    )
    parts.append(
        _table(
            ["token split", "documents", "tokens"],
            [
                [_e(split), str(stats["documents"]), f"{stats['tokens']:,}"]
                for split, stats in data["token_splits"].items()
            ],
            numeric={1, 2},
        )
    )
    return "\n".join(parts)


def _tasks(report: dict[str, Any]) -> str:
    tasks = report["tasks"]
    if not tasks:
        return "<p>This pipeline has no tasks.</p>"
    parts = [_task_differences_figure(tasks), _task_table(tasks), _task_note(tasks)]
    for task in tasks:
        if "data_efficiency" in task:
            parts += _data_efficiency(task)
    for task in tasks:
        if task.get("per_class"):
            parts += _per_class(task)
    for task in tasks:
        if task.get("adapted_from"):
            parts.append(
                f"<p>{_inline_markdown(ADAPTED_NOTE.format(name=task['name'], base=task['adapted_from']))}</p>"
            )
    if report.get("stale_adapted_tasks"):
        parts.append(f"<p>{_inline_markdown(STALE_NOTE.format(names=', '.join(report['stale_adapted_tasks'])))}</p>")
    return "\n".join(parts)


def _task_table(tasks: list[dict[str, Any]]) -> str:
    """Both metrics of every task, control vs DAPT, with the primary metric's interval."""
    rows = []
    for task in tasks:
        control, dapt, difference = task["control"], task["dapt"], task["difference"]
        p, q = task.get("primary", "accuracy"), task.get("secondary", "macro_f1")
        low, high = difference[f"{p}_ci95"]
        recipe = task["recipe"] + (f" (last {task['top_blocks']} blocks + head)" if task.get("top_blocks") else "")
        rows.append(
            [
                _e(task["name"]),
                _e(recipe),
                f"{task['train_examples']} / {task['test_examples']}",
                f"{METRIC_LABELS[p]}: {control[p]:.3f}",
                f"{dapt[p]:.3f}",
                _points(difference[p]),
                f"{_points(low)} to {_points(high)}",
                f"{METRIC_LABELS[q]}: {control[q]:.3f}",
                f"{dapt[q]:.3f}",
                _e(difference_text(q, difference[q])) if q in UNBOUNDED_METRICS else _points(difference[q]),
            ]
        )
    header = [
        "task",
        "recipe",
        "train / test",
        "control",
        "DAPT",
        "difference (points)",
        "95% interval",
        "control (2nd metric)",
        "DAPT (2nd metric)",
        "difference (points)",
    ]
    return _table(header, rows, numeric=set(range(2, 10)))


def _task_differences_figure(tasks: list[dict[str, Any]]) -> str:
    return _image(
        plots.task_differences(
            [t["name"] for t in tasks],
            [t["difference"][t.get("primary", "accuracy")] for t in tasks],
            [t["difference"][f"{t.get('primary', 'accuracy')}_ci95"] for t in tasks],
        ),
        "score difference per task with its 95% interval",
        "Accuracy of the variant adapted from the DAPT base minus that of the control adapted from the original "
        "base. The error bar is the 95% paired-bootstrap interval over test examples: a bar whose interval "
        "crosses zero is no clear difference (grey); blue is a clear gain, red a clear loss.",
    )


def _task_note(tasks: list[dict[str, Any]]) -> str:
    seeds = max(len(t.get("seeds", [0])) for t in tasks)
    return (
        "<p>Both variants of a task use the same recipe, data, budget and seeds; only their base differs. "
        + (
            f"Accuracies are means over {seeds} seeds; the interval resamples test examples."
            if seeds > 1
            else "One seed: the interval does not cover seed-to-seed variation (set <code>seeds:</code> on a task)."
        )
        + "</p>"
    )


def _data_efficiency(task: dict[str, Any]) -> list[str]:
    """A task's score by share of the training data: the plot and its table."""
    parts: list[str] = []
    primary = task.get("primary", "accuracy")
    label = METRIC_LABELS[primary]
    curve = [
        [f"{p['fraction']:.0%}", with_spread(p, "control"), with_spread(p, "dapt")] for p in task["data_efficiency"]
    ]
    parts.append(f"<h3>Data efficiency: {_e(task['name'])}</h3>")
    matched = task.get("dapt_matches_control_full_data_at")
    parts.append(
        _image(
            plots.data_efficiency(task["data_efficiency"], label, task["control"][primary], task["name"]),
            f"{label} by share of the training data, control and DAPT",
            f"{_e(label)} of each variant trained on a share of the training data (mean over seeds; the band "
            "is ± one standard deviation, dots are single seeds). The dashed line is the control's score "
            "with all the data: "
            + (
                f"the DAPT variant reaches it with {matched:.0%} of the data."
                if matched is not None
                else "the DAPT variant does not reach it with less data."
            ),
        )
    )
    parts.append(_table(["share of training data", f"control {label}", f"DAPT {label}"], curve, numeric={1, 2}))
    return parts


def _per_class(task: dict[str, Any]) -> list[str]:
    """A classification task's precision, recall and F1 per class, and both variants' confusion matrices."""
    parts: list[str] = []
    parts.append(f"<h3>Per class: {_e(task['name'])}</h3>")
    parts.append(f"<p>{_e(PER_CLASS_NOTE[0].upper() + PER_CLASS_NOTE[1:])}.</p>")
    rows = [
        [_e(label), str(dapt["support"])]
        + [f"{scores[k]:.3f}" for scores in (control, dapt) for k in ("precision", "recall", "f1")]
        for label, control, dapt in per_class_rows(task)
    ]
    header = ["class", "test examples"] + [
        f"{variant} {k}" for variant in ("control", "DAPT") for k in ("precision", "recall", "F1")
    ]
    parts.append(_table(header, rows, numeric=set(range(1, 8))))
    for variant, title in (("control", "control"), ("dapt", "DAPT")):
        matrix = task["confusion_matrix"][variant]
        parts.append(f"<p>Confusion matrix, {title}: rows are the true class, columns the predicted one.</p>")
        parts.append(
            _table(
                ["true ↓ predicted →", *(_e(label) for label in task["labels"])],
                [[_e(label), *(str(n) for n in row)] for label, row in zip(task["labels"], matrix, strict=True)],
                numeric=set(range(1, len(task["labels"]) + 1)),
            )
        )
    return parts


def _lineage(report: dict[str, Any]) -> str:
    tree = "\n".join(render_tree(report["lineage"]))
    return f"<p>Artifact ids; every variant points at the base it was adapted from.</p>\n<pre>{_e(tree)}</pre>"


def _cost(report: dict[str, Any]) -> str:
    pretrain, timings = report["pretrain"], report["timings"]
    total = sum(timings.values())

    def share(seconds: float) -> str:
        return f"{seconds / total:.0%}" if total else "—"

    rows = [[_e(stage), f"{seconds:.1f}", share(seconds)] for stage, seconds in timings.items()]
    rows.append(["total", f"{total:.1f}", share(total)])
    summary = (
        f"<p>Continued pretraining: {pretrain['tokens_trained']:,} tokens in {pretrain['steps']} steps, "
        f"{pretrain['tokens_per_second']:,.0f} tokens/s ({pretrain['train_seconds']:.1f} s of training, "
        f"evaluation excluded). Machine: {_e(report['machine'])}.</p>"
    )
    note = (
        "<p>Stage times are from each artifact's manifest; a stage reused from cache shows the time it first took.</p>"
    )
    return "\n".join([summary, _table(["stage", "seconds", "share"], rows, numeric={1, 2}, total=True), note])


def render_html(report: dict[str, Any]) -> str:
    """The whole page, from the report dict that build_report writes as report.json."""
    bodies = {
        "verdict": _verdict(report),
        "adaptation-cost": _adaptation_cost(report),
        "loss-curves": _loss_curves(report),
        "perplexity": _perplexity(report),
        "data-funnel": _data_funnel(report),
        "tasks": _tasks(report),
        "lineage": _lineage(report),
        "cost": _cost(report),
    }
    contents = "".join(f'<li><a href="#{section_id}">{_e(heading)}</a></li>' for section_id, heading in SECTIONS)
    sections = "\n".join(_section(section_id, bodies[section_id]) for section_id, _ in SECTIONS)
    title = f"dapt report — run {_e(report['run'])}"
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{title}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n"
        f"<h1>{title}</h1>\n"
        f'<p class="meta">Created {_e(report["created"])} on {_e(report["machine"])}. '
        "The same numbers are in report.json; the same verdict in report.md.</p>\n"
        f"<nav><ol>{contents}</ol></nav>\n{sections}\n</body>\n</html>\n"
    )
