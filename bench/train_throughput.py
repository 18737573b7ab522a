"""Training throughput: dapt's continued-pretraining loop vs the Hugging Face Trainer.

Same model (a from-scratch Llama-style model), same text (the demo's corpus: SciPy's docstrings and the
standard library's, at least 200 characters each, as the demo ingests them; byte-level tokens, so the tiny
model's cost is its body, not a 50k-row LM head), same sequence length, rows per step, optimizer (AdamW) and
precision (fp32, and bf16 for the `_bf16` rows), same machine, same run; the contenders alternate round by
round so that drift in the machine's speed hits all of them. Tokens/s counts real tokens (padding excluded) per
second of optimizer steps, the first steps (warm-up of allocator and kernels) excluded.

Contenders:
- dapt: packed windows with packed documents kept apart (dapt's default; on CPUs attention runs document by
  document, dapt/model/packed_attention.py, instead of transformers' block-diagonal mask);
- dapt_no_mask: packed windows, one causal sequence each (the same work as trainer_packed);
- dapt_compiled: dapt with `pretrain.compile` (torch.compile; the compile itself falls in the warm-up steps);
- trainer_packed: the Trainer on the same packed windows (what `run_clm.py`'s group_texts does);
- trainer_padded: the Trainer on the documents, truncated to seq_len and padded per batch by its
  language-modelling collator (DataCollatorForLanguageModeling, mlm=False), the recipe of most tutorials;
- trainer_grouped: the same with `train_sampling_strategy="group_by_length"`, the Trainer's own answer to padding;
- dapt_bf16: dapt with `precision: bf16` (autocast from fp32 master weights: what `auto` picks on a CPU that
  computes bf16 natively, dapt/train/precision.py); the rows above are all fp32, set explicitly;
- trainer_packed_bf16: the Trainer with `bf16=True` on the same packed windows (the honest comparison for dapt_bf16:
  the Trainer at the same precision).

So the ratio against trainer_packed (and dapt_bf16's against trainer_packed_bf16) is the loop's own speed (the step
is the model's compute: parity is expected), and the ratios against the padded Trainers are what packing is worth on
this corpus at that sequence length. The padding share grows with the sequence length: docstrings are short (median
~800 bytes).

dapt's AdamW is fused (for this model, optimizer + clipping are ~1-2% of a step; for a 0.4B model in host memory
fused is 10x foreach, bench/host_adamw.py). Tried for dapt on this CPU (2 cores: numbers within ±5% are noise),
none kept: glibc malloc tuning (no page faults after it, 2-3% faster, within noise); per-step overhead (.item() syncs
nothing on a CPU; one metrics line and one progress-bar update per step) is far below the noise of a step.

    python bench/train_throughput.py            # ≈ 7-10 minutes on 2 cores
    python bench/train_throughput.py --seq-lens 512 --steps 30 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path

import torch
from transformers import (
    DataCollatorForLanguageModeling,
    LlamaConfig,
    LlamaForCausalLM,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)
from transformers.utils import logging as hf_logging

from dapt.data.pydocs import docstring_documents
from dapt.model.byte_level import byte_level_tokenizer
from dapt.train.loop import LoopSettings, train_loop
from dapt.train.objectives import causal_lm_loss, lm_batch
from dapt.train.precision import cpu_computes_bf16

RESULTS = Path(__file__).parent / "results" / "train_throughput.json"
WARMUP_STEPS = 3
CONTENDERS = (
    "dapt",
    "dapt_no_mask",
    "dapt_compiled",
    "trainer_packed",
    "trainer_padded",
    "trainer_grouped",
    "dapt_bf16",
    "trainer_packed_bf16",
)


def corpus_documents(seed: int = 0) -> list[list[int]]:
    """The demo corpus's documents as byte tokens, each ending in end-of-text, in a seeded random order."""
    tokenizer = byte_level_tokenizer()
    texts = [
        d["text"]
        for package in ("scipy", "stdlib")
        for d in docstring_documents(package, source=package, min_chars=200)
    ]
    random.Random(seed).shuffle(texts)
    return [tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] for text in texts]


def packed_windows(documents: list[list[int]], seq_len: int) -> torch.Tensor:
    """The documents joined into one stream and cut into (count, seq_len + 1) windows, as dapt's shards are."""
    flat = torch.tensor([token for document in documents for token in document])
    count = (len(flat) - 1) // seq_len
    return torch.stack([flat[i * seq_len : i * seq_len + seq_len + 1] for i in range(count)])


def make_model(hidden: int, layers: int, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=258,
        hidden_size=hidden,
        intermediate_size=hidden * 8 // 3 // 32 * 32,
        num_hidden_layers=layers,
        num_attention_heads=hidden // 64,
        num_key_value_heads=max(1, hidden // 128),
        max_position_embeddings=4096,
        tie_word_embeddings=True,
    )
    return LlamaForCausalLM(config)


def tokens_per_second(step_seconds: list[float], step_tokens: list[int]) -> float:
    """Real tokens over seconds of the steps after the warm-up ones."""
    return sum(step_tokens[WARMUP_STEPS:]) / sum(step_seconds[WARMUP_STEPS:])


def run_dapt(
    windows: torch.Tensor,
    args: argparse.Namespace,
    batch: int,
    document_mask: bool,
    compile_model: bool = False,
    precision: str = "fp32",
) -> float:
    model = make_model(args.hidden, args.layers)
    eos = byte_level_tokenizer().eos_token_id
    position = {"i": 0}
    times: list[float] = []

    def next_batch() -> dict[str, torch.Tensor]:
        start = position["i"] * batch % (len(windows) - batch)
        position["i"] += 1
        times.append(time.perf_counter())
        return lm_batch(windows[start : start + batch], eos if document_mask else None)

    settings = LoopSettings(
        max_steps=args.steps,
        lr=3e-4,
        warmup_steps=0,
        grad_clip=1.0,
        weight_decay=0.0,
        compile=compile_model,
        precision=precision,  # set, not auto: auto would pick bf16 on a CPU that computes it natively
    )
    train_loop(model, next_batch, causal_lm_loss, settings, description="dapt")
    times.append(time.perf_counter())
    seconds = [b - a for a, b in zip(times[:-1], times[1:], strict=True)]
    return tokens_per_second(seconds, [batch * windows.shape[1] - batch] * len(seconds))


class StepTimes(TrainerCallback):
    """Wall-clock time of each Trainer optimizer step."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.start = 0.0

    def on_step_begin(self, args, state, control, **kwargs):  # noqa: ANN001 - Trainer's callback signature
        self.start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001
        self.times.append(time.perf_counter() - self.start)


def run_trainer(
    rows: list[dict], collate: Callable, args: argparse.Namespace, batch: int, grouped: bool, bf16: bool = False
) -> float:
    """The Trainer on `rows`; real tokens per step are counted as its collator builds each batch."""
    model = make_model(args.hidden, args.layers)
    real_tokens: list[int] = []

    def counting_collate(examples: list[dict]) -> dict[str, torch.Tensor]:
        collated = collate(examples)
        real_tokens.append(int(collated["attention_mask"].sum()))
        return collated

    training_args = TrainingArguments(
        output_dir="/tmp/dapt-bench-trainer",
        per_device_train_batch_size=batch,
        max_steps=args.steps,
        learning_rate=3e-4,
        lr_scheduler_type="constant",
        max_grad_norm=1.0,
        weight_decay=0.0,
        # optim left at the Trainer's default: adamw_torch_fused with torch >= 2.8, as dapt's
        logging_steps=10_000,
        save_strategy="no",
        report_to=[],
        use_cpu=not torch.cuda.is_available(),
        dataloader_num_workers=0,
        disable_tqdm=True,
        train_sampling_strategy="group_by_length" if grouped else "random",
        bf16=bf16,  # autocast from fp32 weights, as dapt's bf16
        seed=0,
    )
    timer = StepTimes()
    Trainer(
        model=model, args=training_args, train_dataset=rows, data_collator=counting_collate, callbacks=[timer]
    ).train()
    # the data loader may fetch a batch ahead of the step that uses it: step i trained on batch i
    return tokens_per_second(timer.times, real_tokens[: len(timer.times)])


def measure(seq_len: int, documents: list[list[int]], args: argparse.Namespace) -> dict:
    batch = args.batch_tokens // seq_len
    windows = packed_windows(documents, seq_len)
    tokenizer = byte_level_tokenizer()
    lm_collator = DataCollatorForLanguageModeling(tokenizer, mlm=False)
    packed_rows = [
        {"input_ids": w[:-1], "labels": w[:-1], "attention_mask": torch.ones(seq_len, dtype=torch.long)}
        for w in windows
    ]
    document_rows = [{"input_ids": d[:seq_len]} for d in documents]

    def packed_collate(examples: list[dict]) -> dict[str, torch.Tensor]:
        return {key: torch.stack([e[key] for e in examples]) for key in examples[0]}

    runs: dict[str, Callable[[], float]] = {
        "dapt": lambda: run_dapt(windows, args, batch, document_mask=True),
        "dapt_no_mask": lambda: run_dapt(windows, args, batch, document_mask=False),
        "dapt_compiled": lambda: run_dapt(windows, args, batch, document_mask=True, compile_model=True),
        "trainer_packed": lambda: run_trainer(packed_rows, packed_collate, args, batch, grouped=False),
        "trainer_padded": lambda: run_trainer(document_rows, lm_collator, args, batch, grouped=False),
        "trainer_grouped": lambda: run_trainer(document_rows, lm_collator, args, batch, grouped=True),
        "dapt_bf16": lambda: run_dapt(windows, args, batch, document_mask=True, precision="bf16"),
        "trainer_packed_bf16": lambda: run_trainer(packed_rows, packed_collate, args, batch, grouped=False, bf16=True),
    }
    results: dict[str, list[float]] = {name: [] for name in CONTENDERS}
    for round_number in range(args.rounds):
        for name in CONTENDERS:
            results[name].append(runs[name]())
        print(f"seq {seq_len}, round {round_number + 1}: " + ", ".join(f"{k} {v[-1]:.0f}" for k, v in results.items()))
    median = {name: statistics.median(values) for name, values in results.items()}
    truncated = sum(max(0, len(d) - seq_len) for d in documents) / sum(len(d) for d in documents)
    return {
        "seq_len": seq_len,
        "rows_per_step": batch,
        "tokens_per_second": {name: round(value, 1) for name, value in median.items()},
        "runs": results,
        "ratio_dapt_vs": {name: round(median["dapt"] / median[name], 3) for name in CONTENDERS if name != "dapt"},
        # bf16 (autocast) against dapt's fp32, and against the Trainer in bf16 on the same windows
        "ratio_dapt_bf16_vs": {
            name: round(median["dapt_bf16"] / median[name], 3) for name in ("dapt", "trainer_packed_bf16")
        },
        "trainer_padded_loses_to_truncation": round(truncated, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds of each contender")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--seq-lens", default="256,1024", help="comma-separated sequence lengths")
    parser.add_argument("--batch-tokens", type=int, default=4096, help="rows per step = this / seq_len")
    args = parser.parse_args()
    hf_logging.set_verbosity_error()
    documents = corpus_documents()
    parameters = sum(p.numel() for p in make_model(args.hidden, args.layers).parameters())
    load_before = os.getloadavg()[0]  # the machine may be shared: its load is part of the numbers' context
    settings = [measure(int(seq_len), documents, args) for seq_len in args.seq_lens.split(",")]
    record = {
        "date": date.today().isoformat(),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, "
        + ("GPU " + torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU")
        + (" with native bf16" if cpu_computes_bf16()[0] and not torch.cuda.is_available() else ""),
        "torch": torch.__version__,
        "load_average": [round(load_before, 1), round(os.getloadavg()[0], 1)],  # 1-minute, at start and end
        "model_parameters": parameters,
        "documents": len(documents),
        "settings": vars(args),
        "by_seq_len": settings,
    }
    record["headline"] = (
        "; ".join(
            f"seq {s['seq_len']}: dapt {s['tokens_per_second']['dapt']:.0f} tok/s = "
            f"**{s['ratio_dapt_vs']['trainer_padded']:.2f}×** the Trainer on padded documents, "
            f"{s['ratio_dapt_vs']['trainer_grouped']:.2f}× with group_by_length, "
            f"{s['ratio_dapt_vs']['trainer_packed']:.2f}× the Trainer on the same packed windows; in bf16 "
            f"{s['tokens_per_second']['dapt_bf16']:.0f} tok/s = {s['ratio_dapt_bf16_vs']['dapt']:.2f}× dapt's fp32, "
            f"{s['ratio_dapt_bf16_vs']['trainer_packed_bf16']:.2f}× the Trainer with bf16=True"
            for s in settings
        )
        + f" ({parameters / 1e6:.1f}M-param Llama, {args.batch_tokens} tokens per step; fp32 unless said)"
    )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(record, indent=2) + "\n")
    for s in settings:
        print(f"\n| contender (seq {s['seq_len']}, {s['rows_per_step']} rows/step) | real tokens/s | dapt ÷ it |")
        print("|---|---|---|")
        for name, value in s["tokens_per_second"].items():
            print(f"| {name} | {value:.0f} | {s['ratio_dapt_vs'].get(name, 1.0):.2f} |")
        print(
            f"dapt_bf16 ÷ dapt (fp32) {s['ratio_dapt_bf16_vs']['dapt']:.2f}, ÷ trainer_packed_bf16 "
            f"{s['ratio_dapt_bf16_vs']['trainer_packed_bf16']:.2f}"
        )
    print("\ntrain_throughput: " + record["headline"])


if __name__ == "__main__":
    main()
