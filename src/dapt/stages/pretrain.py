"""pretrain: continued pretraining of the base on domain text, with a share of general replay.

Recipe:
1. load the original base (the `base` artifact) and the token shards;
2. stream packed windows: domain with weight 1 - replay_fraction, replay with replay_fraction;
3. measure domain and general validation loss before training (the original base's numbers) and
   every `eval_every` steps; save a checkpoint at each evaluation, keep the last K and the best;
4. stop early when the domain validation loss stops improving;
5. the best checkpoint becomes the DAPT base (`model/`), a new versioned base whose manifest points
   at the original. If no step beat the original, the DAPT base is the original, and the manifest says so.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import torch

from dapt.config import PretrainConfig
from dapt.data.shards import TokenShard, eval_windows, mixed_windows
from dapt.model.load import load_causal_lm, parameter_count
from dapt.pipeline import StageContext
from dapt.train.loop import LoopSettings, train_loop
from dapt.train.objectives import causal_lm_loss, mean_lm_loss, perplexity


def link_or_copy_folder(source: Path, target: Path) -> None:
    """Hard-link the files of `source` into `target` (no extra disk for multi-GB weights), copy if impossible."""
    target.mkdir(parents=True)
    for file in source.iterdir():
        try:
            os.link(file, target / file.name)
        except OSError:
            shutil.copy2(file, target / file.name)


def run(context: StageContext) -> dict[str, Any]:
    config = PretrainConfig.model_validate(context.config["pretrain"])
    seed = context.config["seed"]
    torch.manual_seed(seed)
    base_folder = context.inputs["base"].path / "model"
    model, tokenizer = load_causal_lm(base_folder)
    shard_root = context.inputs["tokens"].path / "shards"
    shards = {p.name: TokenShard(p) for p in shard_root.iterdir() if p.is_dir()}

    # -- data: domain + replay mixture, fixed held-out windows ------------------------------------------
    weights = {"domain_train": 1.0 - config.replay_fraction, "replay_train": config.replay_fraction}
    if "replay_train" not in shards and config.replay_fraction > 0:
        context.log("no replay text: training on domain text only (replay_fraction ignored)")
        weights = {"domain_train": 1.0}
    stream = mixed_windows({k: shards[k] for k in weights if k in shards}, weights, config.seq_len, seed)
    drawn = {name: 0 for name in weights}

    def next_batch() -> torch.Tensor:
        rows = []
        for _ in range(config.micro_batch_size):
            name, window = next(stream)
            drawn[name] += 1
            rows.append(window)
        return torch.stack(rows)  # (micro_batch_size, seq_len + 1)

    budget = context.inputs["tokens"].manifest["config"]["tokenize"]["eval_tokens"]
    held_out = {
        f"{split.removesuffix('_val')}_val_loss": eval_windows(shards[split], config.seq_len, max_tokens=budget)
        for split in ("domain_val", "general_val")
        if split in shards
    }

    def evaluate() -> dict[str, float]:
        return {name: mean_lm_loss(model, windows) for name, windows in held_out.items()}

    # -- checkpoints: one per evaluation after step 0; keep the last K plus the best ----------------------
    checkpoints = context.out / "checkpoints"
    saved: list[int] = []
    best_step = 0

    def on_evaluation(step: int, metrics: dict[str, float], is_best: bool) -> None:
        nonlocal best_step
        if is_best:
            best_step = step
        if step == 0:
            return  # step 0 is the original base, already saved by the base stage
        partial = checkpoints / f".step-{step:06d}.partial"
        model.save_pretrained(partial, safe_serialization=True)
        tokenizer.save_pretrained(partial)
        partial.rename(checkpoints / f"step-{step:06d}")  # atomic: a checkpoint folder is complete or absent
        saved.append(step)
        for old in saved[: -config.keep_checkpoints]:
            if old != best_step and (checkpoints / f"step-{old:06d}").exists():
                shutil.rmtree(checkpoints / f"step-{old:06d}")

    monitor = config.early_stopping.monitor
    if monitor not in held_out:
        monitor = "domain_val_loss"
    settings = LoopSettings(
        max_steps=config.max_steps,
        lr=config.lr,
        warmup_steps=config.warmup_steps,
        min_lr_ratio=config.min_lr_ratio,
        weight_decay=config.weight_decay,
        grad_clip=config.grad_clip,
        grad_accum_steps=config.grad_accum_steps,
        eval_every=config.eval_every,
        monitor=monitor,
        patience=config.early_stopping.patience,
        min_delta=config.early_stopping.min_delta,
    )
    context.log(
        f"{parameter_count(model) / 1e6:.1f}M parameters; {config.max_steps} steps at most of "
        f"{config.micro_batch_size * config.grad_accum_steps} × {config.seq_len} tokens; "
        f"replay {config.replay_fraction:.0%}"
    )
    result = train_loop(
        model,
        next_batch,
        lambda m, batch: causal_lm_loss(m, batch),
        settings,
        evaluate=evaluate,
        on_evaluation=on_evaluation,
        metrics_file=context.out / "metrics.jsonl",
        description="pretrain",
    )

    # -- the DAPT base: the best checkpoint (or the original, if nothing beat it) -------------------------
    if best_step == 0:
        context.log("no step improved the domain validation loss: the DAPT base is the original base")
        link_or_copy_folder(base_folder, context.out / "model")
    else:
        link_or_copy_folder(checkpoints / f"step-{best_step:06d}", context.out / "model")
    initial, best = result.evaluations[0], next(e for e in result.evaluations if e["step"] == best_step)
    context.log(f"best step {best_step}: " + ", ".join(f"{k} {initial[k]:.4f} → {best[k]:.4f}" for k in held_out))
    return {
        "steps": result.steps,
        "tokens_trained": result.units,
        "tokens_per_second": round(result.units_per_second, 1),
        "train_seconds": round(result.seconds - result.eval_seconds, 1),
        "best_step": best_step,
        "stopped_early": result.stopped_early,
        "stop_reason": result.stop_reason,
        "windows_drawn": drawn,
        "initial": {**initial, **{k.replace("_loss", "_ppl"): perplexity(initial[k]) for k in held_out}},
        "best": {**best, **{k.replace("_loss", "_ppl"): perplexity(best[k]) for k in held_out}},
        "evaluations": result.evaluations,
        "final_train_loss": result.final_train_loss,
        "parameters": parameter_count(model),
        "original_base": context.inputs["base"].id,
    }
