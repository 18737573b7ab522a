"""The report's figures, drawn with matplotlib and returned as PNG bytes for embedding.

Each function takes plain numbers from report.json and returns one small PNG (6 × 3.5 in at 100 dpi,
20–60 kB), so a report with every figure stays far below 1 MB. Figures are built on `Figure` +
the Agg canvas directly, not through `pyplot`: no global state, no GUI backend, safe to call from
any thread or a headless machine.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

FIGURE_SIZE = (6.0, 3.5)  # inches
DPI = 100
# the same meaning in every figure: grey = the original base / neutral, blue = the DAPT base / domain text,
# orange = general text, green = kept, red = dropped / a clear loss
GREY, BLUE, ORANGE, GREEN, RED = "#8c8c8c", "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728"


def _short(label: str, limit: int = 32) -> str:
    """Tick labels are cut so a long name cannot squeeze the plot away; the page's tables show it whole."""
    return label if len(label) <= limit else label[: limit - 1] + "…"


def _figure() -> tuple[Figure, Any]:
    figure = Figure(figsize=FIGURE_SIZE, dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure, figure.add_subplot()


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    # no "Software" text chunk: it carries matplotlib's URL, and the report references nothing outside itself
    figure.savefig(buffer, format="png", dpi=DPI, metadata={"Software": None})
    return buffer.getvalue()


def loss_curves(
    train_curve: dict[str, list[float]],
    evaluations: list[dict[str, Any]],
    best_step: int,
    stage_ends: Sequence[int] = (),
) -> bytes:
    """Training loss per optimizer step, domain / general validation loss per evaluation, the best step marked (and
    the steps that end a data stage, dotted).

    `train_curve` is `{"step": [...], "loss": [...]}`; `evaluations` are `{"step", "domain_val_loss",
    "general_val_loss"}` records (either loss may be missing).
    """
    figure, axes = _figure()
    if train_curve.get("step"):
        axes.plot(train_curve["step"], train_curve["loss"], color=GREY, linewidth=1, alpha=0.8, label="training loss")
    for key, label, colour, marker in (
        ("domain_val_loss", "domain validation loss", BLUE, "o"),
        ("general_val_loss", "general validation loss", ORANGE, "s"),
    ):
        points = [(e["step"], e[key]) for e in evaluations if e.get(key) is not None]
        if points:
            steps, losses = zip(*points, strict=True)
            axes.plot(steps, losses, color=colour, marker=marker, markersize=5, linewidth=1.5, label=label)
    axes.axvline(best_step, color="black", linestyle="--", linewidth=1, label=f"best step ({best_step})")
    for number, step in enumerate(stage_ends):
        axes.axvline(step, color=GREY, linestyle=":", linewidth=1, label="end of a data stage" if number == 0 else None)
    axes.set_xlabel("optimizer step")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))  # no step 2.5 on a short run
    axes.set_ylabel("loss (nats / token)")
    axes.set_title("Continued pretraining")
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small")
    return _png(figure)


def perplexity_bars(
    sources: Sequence[str], before: Sequence[float], after: Sequence[float], measure: str = "ppl"
) -> bytes:
    """Grouped bars: test perplexity (measure "ppl") or bits per byte ("bpb") of the original and the DAPT base on
    each held-out source."""
    figure, axes = _figure()
    width = 0.38
    positions = range(len(sources))
    for offset, values, colour, label in (
        (-width / 2, before, GREY, "original base"),
        (width / 2, after, BLUE, "DAPT base"),
    ):
        bars = axes.bar([p + offset for p in positions], values, width, color=colour, label=label)
        axes.bar_label(bars, fmt="%.1f" if measure == "ppl" else "%.3f", fontsize="small", padding=2)
    axes.set_xticks(list(positions), [_short(source) for source in sources])
    what = "perplexity" if measure == "ppl" else "bits per byte"
    axes.set_ylabel(f"test {what} (lower is better)")
    axes.set_title(f"{what.capitalize()} before and after continued pretraining")
    axes.margins(y=0.15)
    axes.grid(axis="y", alpha=0.3)
    axes.legend(fontsize="small")
    return _png(figure)


def data_funnel(documents_in: int, kept: int, dropped_by_reason: dict[str, int]) -> bytes:
    """Horizontal bars, top to bottom: documents in, each drop reason (largest first), documents kept."""
    dropped = sorted(dropped_by_reason.items(), key=lambda item: (-item[1], item[0]))
    labels = ["documents in", *(_short(f"dropped: {reason}") for reason, _ in dropped), "kept"]
    counts = [documents_in, *(count for _, count in dropped), kept]
    colours = [GREY, *([RED] * len(dropped)), GREEN]
    figure, axes = _figure()
    bars = axes.barh(range(len(labels)), counts, color=colours)
    axes.bar_label(bars, fontsize="small", padding=2)
    axes.set_yticks(range(len(labels)), labels)
    axes.invert_yaxis()  # read top to bottom, like a funnel
    axes.set_xlabel("documents")
    # a title over the figure, not the axes: long reason labels push the axes right, and its title would be cut
    figure.suptitle("Curation: documents in, dropped by reason, kept")
    axes.margins(x=0.12)
    axes.grid(axis="x", alpha=0.3)
    return _png(figure)


def task_differences(names: Sequence[str], differences: Sequence[float], intervals: Sequence[Sequence[float]]) -> bytes:
    """Accuracy difference DAPT − control per task, in points, with its 95% bootstrap interval as error bar."""
    points = [d * 100 for d in differences]
    lows, highs = [low * 100 for low, _ in intervals], [high * 100 for _, high in intervals]
    # a percentile interval need not contain the point estimate; clamp so error bars are never negative
    below = [max(0.0, p - low) for p, low in zip(points, lows, strict=True)]
    above = [max(0.0, high - p) for p, high in zip(points, highs, strict=True)]
    figure, axes = _figure()
    positions = range(len(names))
    # coloured by what the interval says, not by the sign alone: grey is "no clear difference"
    colours = [BLUE if low > 0 else RED if high < 0 else GREY for low, high in zip(lows, highs, strict=True)]
    axes.barh(positions, points, color=colours, height=0.5, xerr=[below, above], capsize=6, error_kw={"linewidth": 1.2})
    axes.axvline(0, color="black", linewidth=1)
    axes.set_yticks(list(positions), [_short(name) for name in names])
    axes.set_ylim(len(names), -1)  # first task on top; a lone task gets a bar, not a wall
    axes.set_xlabel("score difference, DAPT − control (points)")
    figure.suptitle("Task score (accuracy / ROUGE-L): DAPT base minus original base, with 95% interval")
    limit = max([1.0, *(abs(v) for v in (*points, *lows, *highs))])
    axes.set_xlim(-limit * 1.15, limit * 1.15)  # symmetric, so the side of zero is obvious at a glance
    axes.grid(axis="x", alpha=0.3)
    return _png(figure)


def data_efficiency(
    points: Sequence[dict[str, Any]], metric_label: str, target: float | None = None, task_name: str = ""
) -> bytes:
    """Score against the share of training data, for the control (grey) and the DAPT variant (blue).

    `points` are report.json's data-efficiency records: {"fraction", "control", "dapt"} means over seeds, with
    "<variant>_std" drawn as a band of ± one standard deviation and "<variant>_runs" (each seed) as dots.
    `target`: the control's full-data score, as a dashed line — where the blue curve crosses it, the DAPT
    base needs only that share of the data.
    """
    figure, axes = _figure()
    shares = [p["fraction"] * 100 for p in points]
    for variant, colour, label, marker in (
        ("control", GREY, "control (original base)", "s"),
        ("dapt", BLUE, "DAPT base", "o"),
    ):
        means = [p[variant] for p in points]
        spread = [p.get(f"{variant}_std", 0.0) for p in points]
        axes.plot(shares, means, color=colour, marker=marker, linewidth=1.8, label=label)
        axes.fill_between(
            shares,
            [m - s for m, s in zip(means, spread, strict=True)],
            [m + s for m, s in zip(means, spread, strict=True)],
            color=colour,
            alpha=0.18,
            linewidth=0,
        )
        for share, point in zip(shares, points, strict=True):
            runs = point.get(f"{variant}_runs", [])
            if len(runs) > 1:
                axes.scatter([share] * len(runs), runs, color=colour, s=10, alpha=0.6, zorder=3)
    if target is not None:
        axes.axhline(target, color="black", linestyle="--", linewidth=1, label="control, all the data")
    axes.set_xlabel("share of the training data (%)")
    axes.set_ylabel(metric_label)
    axes.set_xlim(0, 105)
    axes.set_title(_short(f"Data efficiency: {task_name}", 60) if task_name else "Data efficiency")
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small")
    return _png(figure)


def loss_by_position(before: Sequence[dict[str, Any]], after: Sequence[dict[str, Any]], old_window: int) -> bytes:
    """Mean held-out loss per bucket of positions in the document (`{"from", "to", "loss"}` each, loss None when no
    token fell in it) for the original (grey) and the DAPT base (blue), the old window's end dashed."""
    figure, axes = _figure()
    for buckets, colour, label in ((before, GREY, "original base"), (after, BLUE, "DAPT base")):
        points = [((b["from"] + b["to"]) / 2, b["loss"]) for b in buckets if b["loss"] is not None]
        if points:
            positions, losses = zip(*points, strict=True)
            axes.plot(positions, losses, color=colour, marker="o", markersize=5, linewidth=1.5, label=label)
    axes.axvline(old_window, color="black", linestyle="--", linewidth=1, label=f"old window ({old_window:,})")
    axes.set_xscale("log", base=2)
    axes.set_xlabel("position in the document (tokens)")
    axes.set_ylabel("loss (nats / token)")
    axes.set_title("Held-out domain loss by position")
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small")
    return _png(figure)
