"""How well `dapt plan` predicts a continued-pretraining run it has not seen: the prediction error of the final domain
and general validation loss of a held-out full run, from pilots of at most 10% of its tokens.

The model: a from-scratch Llama-style preset (byte-level tokens) first pretrained on general text (the standard
library's docstrings; the Python language reference is the general validation split), then adapted: continued
pretraining on SciPy's docstrings with the standard library's replayed, the demo's domain and replay. Both steps go
through the pipeline runner (`base.model` of the second is the first's pretrained model), so the pilots are exactly
what `dapt plan` runs: one per replay fraction (0.05, 0.25, 0.5), 10% of the full run's steps in all, each evaluated
4 times; the plan's law is fitted to them and predicts the full run's final losses at replay 0.2, a fraction no pilot
used. Then the full run is trained (its own schedule, no early stop) and its last evaluation is the truth.

What a user would do instead, with the same pilots: take the last loss of the pilot with the nearest replay fraction
(`nearest pilot`): the rows show how much the law's extrapolation over the run's 30x more steps is worth.

    python bench/plan_accuracy.py                     # ≈ 3-5 minutes on 2 cores
    python bench/plan_accuracy.py --full-steps 480    # a 2x longer held-out run (pilots scale with it)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import yaml

from dapt.config import load_config
from dapt.pipeline import PLAN_STAGE, run_pipeline, run_stages
from dapt.plan_command import pilot_size, planned_stages

ROOT = Path(__file__).resolve().parents[1]
PRESET = {"hidden_size": 96, "num_layers": 3, "num_heads": 4, "num_kv_heads": 2, "intermediate_size": 256}
SEQ_LEN, MICRO_BATCH = 64, 8
HELD_OUT_REPLAY = 0.2
PILOT_REPLAYS = (0.05, 0.25, 0.5)


def pretraining(steps: int, **schedule: float) -> dict:
    """A pretrain section of `steps` steps, never stopped early (the last evaluation is what the plan predicts)."""
    return {
        "seq_len": SEQ_LEN,
        "micro_batch_size": MICRO_BATCH,
        "max_steps": steps,
        **schedule,
        "early_stopping": {"patience": 100},
    }


def general_pipeline(folder: Path, steps: int) -> Path:
    """Pretrain the preset from scratch on general text: the stdlib's docstrings."""
    config = {
        "name": "general",
        "seed": 0,
        "base": {"preset": PRESET},
        "sources": [
            {"name": "stdlib-docstrings", "role": "domain", "kind": "python_docstrings", "package": "stdlib"},
            {"name": "python-reference", "role": "general_eval", "kind": "pydoc_topics"},
        ],
        "tokenize": {"eval_tokens": 4096},
        "pretrain": pretraining(steps, lr=3.0e-3, warmup_steps=10, eval_every=steps),
    }
    path = folder / "general.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def adapt_pipeline(folder: Path, base: Path, steps: int) -> Path:
    """Continued pretraining of the general model on SciPy's docstrings, replaying the stdlib's."""
    config = {
        "name": "adapt",
        "seed": 0,
        "base": {"model": str(base)},
        "sources": [
            {"name": "scipy-docstrings", "role": "domain", "kind": "python_docstrings", "package": "scipy"},
            {"name": "stdlib-docstrings", "role": "replay", "kind": "python_docstrings", "package": "stdlib"},
            {"name": "python-reference", "role": "general_eval", "kind": "pydoc_topics"},
        ],
        "tokenize": {"eval_tokens": 4096},
        "pretrain": {
            **pretraining(steps, lr=1.0e-3, warmup_steps=4, eval_every=max(1, steps // 6)),
            "replay_fraction": HELD_OUT_REPLAY,
        },
    }
    path = folder / "adapt.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--general-steps", type=int, default=300, help="from-scratch pretraining on general text")
    parser.add_argument("--full-steps", type=int, default=240, help="the held-out continued-pretraining run")
    parser.add_argument("--budget", type=float, default=0.10, help="the pilots' share of the full run's steps")
    parser.add_argument("--keep", type=Path, help="run in this folder and keep it (default: a temporary one)")
    args = parser.parse_args()

    clock = time.perf_counter()
    with tempfile.TemporaryDirectory() as temporary:
        folder = args.keep or Path(temporary)
        folder.mkdir(parents=True, exist_ok=True)
        general = load_config(general_pipeline(folder, args.general_steps))
        run_pipeline(general, folder / "general", until="pretrain")
        base = (folder / "general" / "pretrain" / "model").resolve()
        adapt = load_config(adapt_pipeline(folder, base, args.full_steps))
        steps, eval_every = pilot_size(adapt, args.budget, PILOT_REPLAYS)
        planning = time.perf_counter()
        artifacts = run_stages(planned_stages(adapt, PILOT_REPLAYS, steps, eval_every, 0.02), adapt, folder / "adapt")
        planning = time.perf_counter() - planning
        plan = artifacts[PLAN_STAGE].metrics
        predicted = next(row for row in plan["predictions"] if row["replay_fraction"] == HELD_OUT_REPLAY)
        pilots = plan["pilots"]
        nearest = min(pilots, key=lambda pilot: abs(pilot["replay_fraction"] - HELD_OUT_REPLAY))
        full = run_pipeline(adapt, folder / "adapt", until="pretrain")["pretrain"].metrics
        truth = full["evaluations"][-1]
    seconds = time.perf_counter() - clock

    splits = ("domain", "general")
    errors = {split: predicted[f"{split}_val_loss"] - truth[f"{split}_val_loss"] for split in splits}
    naive = {split: nearest["evaluations"][-1][f"{split}_val_loss"] - truth[f"{split}_val_loss"] for split in splits}
    inside = {
        split: predicted[f"{split}_interval"][0] <= truth[f"{split}_val_loss"] <= predicted[f"{split}_interval"][1]
        for split in splits
    }
    worst = max(abs(error) for error in errors.values())
    print(f"{'':22} {'domain':>8} {'general':>8}")
    print(f"{'base (step 0)':22} {plan['base']['domain_val_loss']:8.3f} {plan['base']['general_val_loss']:8.3f}")
    print(f"{'full run, measured':22} {truth['domain_val_loss']:8.3f} {truth['general_val_loss']:8.3f}")
    print(f"{'plan, predicted':22} {predicted['domain_val_loss']:8.3f} {predicted['general_val_loss']:8.3f}")
    print(f"{'plan error':22} {errors['domain']:+8.3f} {errors['general']:+8.3f}")
    print(f"{'nearest pilot error':22} {naive['domain']:+8.3f} {naive['general']:+8.3f}")
    share = plan["pilot_share"]
    headline = (
        f"plan_accuracy: pilots of {share:.0%} of a {args.full_steps}-step run predict its final loss at replay "
        f"{HELD_OUT_REPLAY:g}: domain {errors['domain']:+.3f}, general {errors['general']:+.3f} nats (nearest pilot: "
        f"{naive['domain']:+.3f}, {naive['general']:+.3f}); error {worst:.3f}"
    )
    record = {
        "date": date.today().isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}",
        "load_average": os.getloadavg()[0],
        "seconds": round(seconds, 1),
        "plan_seconds": round(planning, 1),
        "settings": {
            "preset": PRESET,
            "seq_len": SEQ_LEN,
            "micro_batch_size": MICRO_BATCH,
            "general_steps": args.general_steps,
            "full_steps": args.full_steps,
            "pilot_steps": steps,
            "pilot_replays": list(PILOT_REPLAYS),
            "held_out_replay": HELD_OUT_REPLAY,
        },
        "pilot_share": share,
        "base": plan["base"],
        "measured": {f"{split}_val_loss": truth[f"{split}_val_loss"] for split in splits},
        "predicted": predicted,
        "error": errors,
        "within_interval": inside,
        "nearest_pilot_error": naive,
        "fit": {"parameters": plan["parameters"], "residuals": plan["residuals"]},
        "full_run_evaluations": full["evaluations"],
        "headline": headline,
    }
    out = ROOT / "bench" / "results" / "plan_accuracy.json"
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"({seconds:.0f} s; {out.relative_to(ROOT)})", file=sys.stderr)
    print(headline)


if __name__ == "__main__":
    main()
