"""`dapt plan PIPELINE.yaml`: predict continued pretraining before paying for it, and pick the replay fraction.

1. pilots: a few short pretraining runs, one per replay fraction, sized from `--budget` (a share of the full run's
   tokens, all pilots together), built by the pipeline runner as ordinary artifacts (`plan-pretrain-r0.25-s8`: cached,
   resumable, kept by `dapt gc` like any stage) on the same tokenized corpus and base as the full run, with the same
   batch, learning rate and schedule shape; each evaluates the domain and general validation loss several times;
2. the law (`dapt.eval.replay_law`) fitted to every evaluation of every pilot, per split;
3. the prediction of the full run's final losses (the config's `pretrain.max_steps` and schedule) for any replay
   fraction between the pilots', with a 90% interval from a residual bootstrap;
4. the recommendation: the replay fraction, and the steps up to the full run's, with the lowest predicted domain loss
   whose predicted general loss stays within `--forgetting-budget` of the base's (measured before the first step);
5. `plan/plan.json`, `plan/plan.md` and `plan/plan.png` in the run folder, as the `plan` artifact;
   `pretrain.replay_fraction: plan` makes `dapt run` train with the recommended fraction.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dapt.artifacts import Artifact
from dapt.config import PipelineConfig, load_config
from dapt.errors import ConfigError
from dapt.eval.replay_law import Evaluation, LawFit, fit_law, recommend
from dapt.pipeline import PLAN_STAGE, StageContext, StageSpec, plan, run_stages, say
from dapt.train.schedule import warmup_cosine_factor, warmup_stable_decay_factor

DEFAULT_REPLAYS = (0.05, 0.25, 0.5)  # Ibrahim et al. 2024: 5% replay for a weak shift, 25% for a strong one
PILOT_EVALUATIONS = 4  # evaluations per pilot after the first step (plus the one before it): a curve, not a point
MIN_PILOT_STEPS = 8  # the fewest steps a pilot may have: 4 evaluations 2 steps apart
REPLAY_GRID = 0.01  # the recommendation's replay fractions are this far apart
STEP_SHARES = (0.25, 0.5, 0.75, 1.0)  # run lengths the recommendation weighs, as shares of the full run's steps


def parse_share(text: str, option: str, zero: bool = False) -> float:
    """'5%' or '0.05' → 0.05 (above 0, or also 0 with `zero`)."""
    try:
        value = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        raise ConfigError(f"{option} {text!r}: give a share such as 5% or 0.05") from None
    if not (value > 0 or (zero and value == 0)):
        raise ConfigError(f"{option} {text!r}: must be {'0 or more' if zero else 'above 0'}")
    return value


def lr_factors(pretrain: dict[str, Any], steps: int) -> tuple[float, ...]:
    """The learning-rate multiplier of every step of a pretraining run of `steps` steps (as the loop schedules it)."""
    warmup, low = pretrain["warmup_steps"], pretrain["min_lr_ratio"]
    if pretrain["schedule"] == "wsd":
        return tuple(
            warmup_stable_decay_factor(t, warmup, steps, low, pretrain["decay_fraction"]) for t in range(steps)
        )
    return tuple(warmup_cosine_factor(t, warmup, steps, low) for t in range(steps))


def pilot_size(config: PipelineConfig, budget: float, replays: Sequence[float]) -> tuple[int, int]:
    """(steps, eval_every) of each pilot: `budget` of the full run's steps shared by the pilots."""
    full = config.pretrain.max_steps
    steps = int(budget * full / len(replays))
    if steps < MIN_PILOT_STEPS:
        needed = MIN_PILOT_STEPS * len(replays) / full
        raise ConfigError(
            f"--budget {budget:.0%} of pretrain.max_steps {full} gives {steps} steps to each of {len(replays)} pilots; "
            f"a pilot needs at least {MIN_PILOT_STEPS} steps (a curve of {PILOT_EVALUATIONS} evaluations): give "
            f"--budget {needed:.0%} or more, or fewer --replay fractions"
        )
    return steps, max(1, steps // PILOT_EVALUATIONS)


def pilot_config(config: PipelineConfig, replay: float, steps: int, eval_every: int) -> PipelineConfig:
    """The pipeline with its pretraining cut down to a pilot: another replay fraction and step count, frequent
    evaluations, no early stop (the whole curve is the point)."""
    pretrain = config.pretrain.model_copy(
        update={
            "replay_fraction": replay,
            "max_steps": steps,
            "eval_every": eval_every,
            "early_stopping": config.pretrain.early_stopping.model_copy(update={"patience": steps + 1}),
        }
    )
    return config.model_copy(update={"pretrain": pretrain})


def pilot_name(replay: float, steps: int) -> str:
    return f"plan-pretrain-r{replay:g}-s{steps}"


def planned_stages(
    config: PipelineConfig, replays: Sequence[float], steps: int, eval_every: int, forgetting_budget: float
) -> list[StageSpec]:
    """The stages the pilots need (cached with the pipeline's own), the pilots, and the plan that fits them."""
    stages: dict[str, StageSpec] = {}
    pilots = []
    for replay in replays:
        specs = plan(pilot_config(config, replay, steps, eval_every))
        by_name = {spec.name: spec for spec in specs}
        pretrain = next(spec for spec in specs if spec.kind == "pretrain")
        needed, pending = set(), list(pretrain.inputs.values())
        while pending:  # everything upstream of pretraining
            name = pending.pop()
            if name not in needed:
                needed.add(name)
                pending.extend(by_name[name].inputs.values())
        stages.update({spec.name: spec for spec in specs if spec.name in needed})
        pretrain.name = pilot_name(replay, steps)
        pretrain.summary = f"pilot for dapt plan: replay {replay:g}, {steps} steps"
        pilots.append(pretrain)
    target = config.pretrain.model_dump(mode="json")
    settings = {
        "replays": list(replays),
        "forgetting_budget": forgetting_budget,
        # what the prediction is for: the full run's length and schedule
        "target": {k: target[k] for k in ("max_steps", "warmup_steps", "schedule", "min_lr_ratio", "decay_fraction")},
    }
    fit = StageSpec(
        PLAN_STAGE,
        "plan",
        write_plan,
        {"plan": settings},
        {f"pilot:{pilot.name}": pilot.name for pilot in pilots},
        summary="fit the continued-pretraining law to the pilots; predict the full run; recommend a replay fraction",
    )
    return [*stages.values(), *pilots, fit]


def pilot_evaluations(pilot: Artifact) -> list[Evaluation]:
    """Every evaluation of a finished pilot, with its replay fraction and learning-rate schedule."""
    pretrain = pilot.manifest["config"]["pretrain"]
    factors = lr_factors(pretrain, pretrain["max_steps"])
    return [
        Evaluation(pretrain["replay_fraction"], e["step"], factors, e["domain_val_loss"], e["general_val_loss"])
        for e in pilot.metrics["evaluations"]
    ]


def write_plan(context: StageContext) -> dict[str, Any]:
    """The `plan` stage: fit, predict, recommend; writes plan.json, plan.md and plan.png."""
    settings = context.config["plan"]
    pilots = list(context.inputs.values())
    points = [point for pilot in pilots for point in pilot_evaluations(pilot)]
    fit = fit_law(points)
    target = settings["target"]
    full_steps = target["max_steps"]
    replays = settings["replays"]
    low, high = min(replays), max(replays)
    grid = [round(r, 4) for r in np.arange(low, high + REPLAY_GRID / 2, REPLAY_GRID)]
    lengths = sorted({max(1, round(share * full_steps)) for share in STEP_SHARES})
    schedules = {steps: lr_factors(target, steps) for steps in lengths}
    budget = settings["forgetting_budget"]
    best, _ = recommend(fit, grid, schedules, budget)
    full = schedules[full_steps]
    shown = sorted({*[round(r, 2) for r in np.arange(low, high + 1e-9, 0.05)], *replays})
    predictions = [prediction(fit, replay, full) for replay in shown]
    pilot_tokens = sum(pilot.metrics["tokens_trained"] for pilot in pilots)
    tokens_per_step = pilot_tokens / sum(pilot.metrics["steps"] for pilot in pilots)
    record: dict[str, Any] = {
        "law": "L_d = L_d0 - A ((1-r) S1)^alpha;  L_g = L_g0 + F ((1-r) S1)^beta - G (r S1)^beta",
        "parameters": fit.parameters(),
        "residuals": {
            "domain_rms": float(np.sqrt(np.mean(fit.domain_residuals**2))),
            "general_rms": float(np.sqrt(np.mean(fit.general_residuals**2))),
            "points": len(fit.domain_residuals),
        },
        "pilots": [
            {
                "name": pilot.manifest["name"],
                "replay_fraction": pilot.manifest["config"]["pretrain"]["replay_fraction"],
                "steps": pilot.metrics["steps"],
                "tokens": pilot.metrics["tokens_trained"],
                "evaluations": pilot.metrics["evaluations"],
            }
            for pilot in pilots
        ],
        "pilot_tokens": pilot_tokens,
        "full_run": {"steps": full_steps, "tokens": round(full_steps * tokens_per_step)},
        "pilot_share": pilot_tokens / (full_steps * tokens_per_step),
        "base": {"domain_val_loss": fit.domain_start, "general_val_loss": fit.general_start},
        "forgetting_budget": budget,
        "general_ceiling": fit.general_start * (1 + budget),
        "predictions": predictions,
        "recommendation": None
        if best is None
        else {
            "replay_fraction": best.replay,
            "steps": best.steps,
            "tokens": round(best.steps * tokens_per_step),
            **prediction(fit, best.replay, schedules[best.steps]),
        },
    }
    (context.out / "plan.json").write_text(json.dumps(record, indent=2) + "\n")
    (context.out / "plan.png").write_bytes(plan_figure(fit, points, record, full))
    (context.out / "plan.md").write_text(plan_markdown(record))
    if best is None:
        context.log(f"no replay fraction in {low:g}-{high:g} keeps the general loss within {budget:.0%}; see plan.md")
    else:
        chosen = record["recommendation"]
        context.log(
            f"recommended: replay {best.replay:g}, {best.steps} steps → domain {chosen['domain_val_loss']:.3f}, "
            f"general {chosen['general_val_loss']:.3f} (ceiling {record['general_ceiling']:.3f})"
        )
    return record


def prediction(fit: LawFit, replay: float, factors: Sequence[float]) -> dict[str, Any]:
    """The predicted final losses of a run with this replay fraction and schedule, with 90% intervals."""
    point, interval = fit.predict(replay, factors), fit.interval(replay, factors)
    return {
        "replay_fraction": replay,
        "domain_val_loss": point["domain"],
        "domain_interval": list(interval["domain"]),
        "general_val_loss": point["general"],
        "general_interval": list(interval["general"]),
    }


def plan_figure(fit: LawFit, points: Sequence[Evaluation], record: dict[str, Any], full: Sequence[float]) -> bytes:
    """Left: the pilots' evaluations and the fitted curves; right: the full run's predicted final losses by replay
    fraction, with their intervals, the forgetting ceiling and the recommendation."""
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(11, 4.2))
    FigureCanvasAgg(figure)
    curves, final = figure.subplots(1, 2)
    for index, replay in enumerate(sorted({p.replay for p in points})):
        mine = sorted((p for p in points if p.replay == replay), key=lambda p: p.step)
        color = f"C{index}"
        steps = [p.step for p in mine]
        curves.plot(steps, [p.domain_loss for p in mine], "o", color=color, label=f"domain, replay {replay:g}")
        curves.plot(steps, [p.general_loss for p in mine], "s", color=color, mfc="none", label=f"general, {replay:g}")
        dense = range(0, max(steps) + 1)
        fitted = [fit.predict(replay, mine[0].lr_factors, step) for step in dense]
        curves.plot(dense, [f["domain"] for f in fitted], "-", color=color, lw=1)
        curves.plot(dense, [f["general"] for f in fitted], "--", color=color, lw=1)
    curves.set(xlabel="pilot step", ylabel="validation loss (nats)", title="pilots and the fitted law")
    curves.legend(fontsize=7)
    rows = record["predictions"]
    replays = [row["replay_fraction"] for row in rows]
    for split, color in (("domain", "C0"), ("general", "C3")):
        final.plot(replays, [row[f"{split}_val_loss"] for row in rows], "-o", color=color, label=f"{split}, predicted")
        final.fill_between(
            replays,
            [row[f"{split}_interval"][0] for row in rows],
            [row[f"{split}_interval"][1] for row in rows],
            color=color,
            alpha=0.2,
        )
    final.axhline(record["general_ceiling"], color="C3", ls=":", label="general ceiling (forgetting budget)")
    chosen = record["recommendation"]
    if chosen is not None:
        final.axvline(chosen["replay_fraction"], color="k", ls="--", lw=1, label="recommended")
    final.set(
        xlabel="replay fraction",
        ylabel="final validation loss (nats)",
        title=f"full run ({record['full_run']['steps']} steps), 90% intervals",
    )
    final.legend(fontsize=7)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    return buffer.getvalue()


def plan_markdown(record: dict[str, Any]) -> str:
    """plan.md: what was run, the fit, the predictions and the recommendation, for people."""
    parameters = record["parameters"]
    lines = [
        "# dapt plan",
        "",
        f"Pilots: {len(record['pilots'])} runs, {record['pilot_tokens']:,} tokens in all = "
        f"{record['pilot_share']:.0%} of the full run ({record['full_run']['steps']} steps, "
        f"{record['full_run']['tokens']:,} tokens).",
        "",
        "| pilot | replay | steps | tokens | evaluations |",
        "|---|---|---|---|---|",
        *(
            f"| {p['name']} | {p['replay_fraction']:g} | {p['steps']} | {p['tokens']:,} | {len(p['evaluations'])} |"
            for p in record["pilots"]
        ),
        "",
        "## The law",
        "",
        f"`{record['law']}`",
        "",
        "S1: steps so far at the peak learning rate (the sum of the schedule's multipliers); r: the replay "
        "fraction. L_d0 and L_g0: the base's losses before the first step (see `dapt.eval.replay_law` for where the "
        "form comes from).",
        "",
        "| split | fitted parameters |",
        "|---|---|",
        *(
            f"| {split} | " + ", ".join(f"{name} {value:.4g}" for name, value in values.items()) + " |"
            for split, values in parameters.items()
        ),
        "",
        f"Residuals over {record['residuals']['points']} evaluations: domain RMS "
        f"{record['residuals']['domain_rms']:.4f}, general RMS {record['residuals']['general_rms']:.4f} nats.",
        "",
        "## Predicted final losses of the full run (90% intervals)",
        "",
        "| replay | domain | general |",
        "|---|---|---|",
        *(
            f"| {row['replay_fraction']:g} | {row['domain_val_loss']:.3f} "
            f"({row['domain_interval'][0]:.3f}-{row['domain_interval'][1]:.3f}) | {row['general_val_loss']:.3f} "
            f"({row['general_interval'][0]:.3f}-{row['general_interval'][1]:.3f}) |"
            for row in record["predictions"]
        ),
        "",
        "## Recommendation",
        "",
        f"Forgetting budget {record['forgetting_budget']:.1%}: the general loss at most "
        f"{record['general_ceiling']:.3f} (the base's {record['base']['general_val_loss']:.3f}).",
        "",
    ]
    chosen = record["recommendation"]
    if chosen is None:
        lines.append(
            "No replay fraction between the pilots' keeps the predicted general loss within the budget: raise "
            "--forgetting-budget, or plan again with larger --replay fractions."
        )
    else:
        lines.append(
            f"**replay_fraction {chosen['replay_fraction']:g}, {chosen['steps']} steps ({chosen['tokens']:,} "
            f"tokens)**: predicted domain loss {chosen['domain_val_loss']:.3f} "
            f"({chosen['domain_interval'][0]:.3f}-{chosen['domain_interval'][1]:.3f}), general "
            f"{chosen['general_val_loss']:.3f} ({chosen['general_interval'][0]:.3f}-"
            f"{chosen['general_interval'][1]:.3f}). `pretrain.replay_fraction: plan` trains with it."
        )
    lines += ["", "![pilots, fit and predictions](plan.png)", ""]
    return "\n".join(lines)


def run_plan(
    pipeline_path: Path,
    out: Path | None,
    overrides: list[str],
    *,
    budget: str = "10%",
    forgetting_budget: str = "2%",
    replays: str | None = None,
) -> int:
    """`dapt plan`: the pilots, the fit, the plan; prints the recommendation."""
    from dapt.preflight import check_before_running
    from dapt.run_folder import locked

    config = load_config(pipeline_path, overrides)
    if config.pretrain.mix is not None:
        raise ConfigError(
            "dapt plan chooses pretrain.replay_fraction, and this pipeline sets pretrain.mix (every source's share): "
            "remove mix to plan the replay fraction"
        )
    if config.pretrain.stages is not None:
        raise ConfigError(
            "dapt plan predicts a run of one stage (pretrain.max_steps, one schedule), and this pipeline sets "
            "pretrain.stages; plan a run without them (--set pretrain.stages=null --set pretrain.max_steps=N), "
            "then give each stage its replay_fraction"
        )
    roles = {source.role for source in config.sources}
    if "replay" not in roles:
        raise ConfigError("dapt plan varies the share of replay text, and no source has role: replay; add one")
    chosen = DEFAULT_REPLAYS if replays is None else tuple(parse_share(r, "--replay") for r in replays.split(","))
    if len(set(chosen)) < 2 or max(chosen) >= 1:
        raise ConfigError(f"--replay {replays}: give two or more different fractions below 1, e.g. 0.05,0.25,0.5")
    steps, eval_every = pilot_size(config, parse_share(budget, "--budget"), chosen)
    check_before_running(config)
    run_dir = (out or Path("runs") / config.name).resolve()
    allowed_rise = parse_share(forgetting_budget, "--forgetting-budget", zero=True)
    stages = planned_stages(config, sorted(set(chosen)), steps, eval_every, allowed_rise)
    with locked(run_dir, "--out" if out is not None else f"run folder (from name: {config.name})"):
        artifacts = run_stages(stages, config, run_dir)
    planned = artifacts[PLAN_STAGE]
    say(f"dapt: plan in {planned.path / 'plan.md'}")
    chosen_run = planned.metrics["recommendation"]
    if chosen_run is None:
        print("no recommendation: no replay fraction keeps the general loss within the forgetting budget")
    else:
        print(
            f"recommended: pretrain.replay_fraction {chosen_run['replay_fraction']:g}, {chosen_run['steps']} steps; "
            f"predicted domain loss {chosen_run['domain_val_loss']:.3f}, general {chosen_run['general_val_loss']:.3f}"
        )
    return 0
