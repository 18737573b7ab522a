"""tapt: task-adaptive pretraining — continue pretraining on the task's own (unlabelled) training text.

Gururangan et al. 2020 ("Don't Stop Pretraining") found it cheap and complementary to domain-adaptive
pretraining. When a task sets `tapt_steps`, both of its variants get it, with the same budget and seed:
original base → TAPT → fine-tune (the control) and DAPT base → TAPT → fine-tune. Only the training
split's text is used, never the test split's.
"""

from __future__ import annotations

from typing import Any

import torch

from dapt.config import TaptConfig
from dapt.model.load import load_causal_lm, parameter_count, save_model_folder
from dapt.stages.context import StageContext
from dapt.stages.tasks import example_text, read_examples
from dapt.train.loop import LoopSettings, train_loop
from dapt.train.objectives import causal_lm_loss, lm_batch


def packed_windows(token_lists: list[list[int]], seq_len: int) -> torch.Tensor:
    """(windows, seq_len + 1): the documents concatenated and cut into packed windows."""
    flat = torch.tensor([token for tokens in token_lists for token in tokens])
    count = (len(flat) - 1) // seq_len
    if count == 0:
        raise ValueError(f"the task's training text is {len(flat)} tokens: less than one window of {seq_len}")
    return torch.stack([flat[i * seq_len : i * seq_len + seq_len + 1] for i in range(count)])


def run(context: StageContext) -> dict[str, Any]:
    settings, seed = context.section_of(TaptConfig), context.config["seed"]
    torch.manual_seed(seed)
    model, tokenizer = load_causal_lm(context.inputs["base"].path / "model")
    texts = [example_text(e) for e in read_examples(context.inputs["task"].path / "train.parquet")]
    encoded = tokenizer(texts, add_special_tokens=False)["input_ids"]
    windows = packed_windows([ids + [tokenizer.eos_token_id] for ids in encoded], settings.seq_len)
    order = torch.randperm(len(windows), generator=torch.Generator().manual_seed(seed))
    position = {"step": 0}

    def next_batch() -> dict[str, torch.Tensor]:
        start = position["step"] * settings.micro_batch_size
        position["step"] += 1
        index = order[[(start + i) % len(windows) for i in range(settings.micro_batch_size)]]
        return lm_batch(windows[index], tokenizer.eos_token_id)

    context.log(
        f"{len(windows)} windows of {settings.seq_len} tokens from {len(texts)} training texts; {settings.steps} steps"
    )
    result = train_loop(
        model,
        next_batch,
        causal_lm_loss,
        LoopSettings(
            max_steps=settings.steps,
            lr=settings.lr,
            warmup_steps=min(2, settings.steps),
            precision=context.config.get("precision", "auto"),  # the pipeline's, when not auto
        ),
        metrics_file=context.out / "metrics.jsonl",
        description=f"tapt {context.name}",
    )
    save_model_folder(model, tokenizer, context.out / "model")
    return {
        "method": "tapt",
        "tokens_trained": result.units,
        "steps": result.steps,
        "best_step": result.steps,
        "final_train_loss": result.final_train_loss,
        "parameters": parameter_count(model),
        "task_windows": len(windows),
        "processes": result.processes,
        "sharding": result.sharding,
        **result.precision.record(),
    }
