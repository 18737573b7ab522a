"""Training throughput: dapt's continued-pretraining loop vs the Hugging Face Trainer.

Same model (a from-scratch Llama-style model), same packed token windows of real text (the standard
library's docstrings, byte-level tokens), same sequence length, batch, optimizer (AdamW) and precision
(fp32), same machine, same run; the runs alternate (dapt, Trainer, dapt, Trainer, ...) so that drift in
the machine's speed hits both. Tokens/s counts input tokens (batch × seq_len) per second of optimizer
steps, the first steps (warm-up of allocator and kernels) excluded.

dapt is measured twice: with packed documents masked from each other (its default, which costs a
block-diagonal attention mask) and without (the same work as the Trainer does).

Tried for dapt on this CPU (2 cores, shared with other jobs: numbers within ±5% are noise), none kept:
fused AdamW instead of foreach (optimizer + clipping is ~1-2% of a step: 3 ms vs 6 ms of ~245 ms);
torch.compile of the model (5-55 s to compile, then within noise: 8684 vs 8528 tok/s); per-step
overhead (.item() syncs nothing on a CPU; one metrics line and one progress-bar update per step) is
far below the noise of a ~250 ms step, so there is nothing to win there. A Trainer fed
unpacked documents with its language-modelling collator pads only ~3% of each batch here (most
docstrings exceed 256 tokens and are truncated), so padding is not a throughput difference either.

    python bench/train_throughput.py            # ≈ 2-4 minutes on 2 cores
    python bench/train_throughput.py --steps 60 --rounds 3 --hidden 384
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from datetime import date
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainerCallback, TrainingArguments
from transformers.utils import logging as hf_logging

from dapt.data.pydocs import docstring_documents
from dapt.tokenizer.byte_level import byte_level_tokenizer
from dapt.train.loop import LoopSettings, train_loop
from dapt.train.objectives import causal_lm_loss, lm_batch

RESULTS = Path(__file__).parent / "results" / "train_throughput.json"
WARMUP_STEPS = 3


def packed_windows(seq_len: int, count: int) -> torch.Tensor:
    """(count, seq_len + 1) windows of byte tokens of the stdlib's docstrings, documents separated by eos."""
    tokenizer = byte_level_tokenizer()
    tokens: list[int] = []
    for document in docstring_documents("stdlib", source="stdlib", min_chars=200):
        tokens += tokenizer(document["text"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        if len(tokens) > count * seq_len + 1:
            break
    flat = torch.tensor(tokens[: count * seq_len + 1])
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
        max_position_embeddings=2048,
        tie_word_embeddings=True,
    )
    return LlamaForCausalLM(config)


class StepTimes(TrainerCallback):
    """Wall-clock time of each Trainer optimizer step."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.start = 0.0

    def on_step_begin(self, args, state, control, **kwargs):  # noqa: ANN001 - Trainer's callback signature
        self.start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001
        self.times.append(time.perf_counter() - self.start)


def run_dapt(windows: torch.Tensor, args: argparse.Namespace, document_mask: bool) -> float:
    model = make_model(args.hidden, args.layers)
    eos = byte_level_tokenizer().eos_token_id
    position = {"i": 0}
    times: list[float] = []

    def next_batch() -> dict[str, torch.Tensor]:
        start = position["i"] * args.batch % len(windows)
        position["i"] += 1
        times.append(time.perf_counter())
        return lm_batch(windows[start : start + args.batch], eos if document_mask else None)

    settings = LoopSettings(max_steps=args.steps, lr=3e-4, warmup_steps=0, grad_clip=1.0, weight_decay=0.0)
    train_loop(model, next_batch, causal_lm_loss, settings, description="dapt")
    times.append(time.perf_counter())
    step_times = [b - a for a, b in zip(times[:-1], times[1:], strict=True)][WARMUP_STEPS:]
    return args.batch * args.seq_len / statistics.median(step_times)


def run_trainer(windows: torch.Tensor, args: argparse.Namespace, out: Path) -> float:
    model = make_model(args.hidden, args.layers)
    rows = [{"input_ids": w[:-1], "labels": w[:-1]} for w in windows]  # Trainer's models shift labels themselves
    training_args = TrainingArguments(
        output_dir=str(out),
        per_device_train_batch_size=args.batch,
        max_steps=args.steps,
        learning_rate=3e-4,
        lr_scheduler_type="constant",
        max_grad_norm=1.0,
        weight_decay=0.0,
        optim="adamw_torch",
        logging_steps=10_000,
        save_strategy="no",
        report_to=[],
        use_cpu=not torch.cuda.is_available(),
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    timer = StepTimes()
    Trainer(model=model, args=training_args, train_dataset=rows, callbacks=[timer]).train()
    return args.batch * args.seq_len / statistics.median(timer.times[WARMUP_STEPS:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds of each contender")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    hf_logging.set_verbosity_error()
    windows = packed_windows(args.seq_len, args.batch * args.steps)
    parameters = sum(p.numel() for p in make_model(args.hidden, args.layers).parameters())
    results: dict[str, list[float]] = {"dapt": [], "dapt_document_mask": [], "hf_trainer": []}
    for round_number in range(args.rounds):
        results["dapt"].append(run_dapt(windows, args, document_mask=False))
        results["hf_trainer"].append(run_trainer(windows, args, Path("/tmp/dapt-bench-trainer")))
        results["dapt_document_mask"].append(run_dapt(windows, args, document_mask=True))
        print(f"round {round_number + 1}: " + ", ".join(f"{k} {v[-1]:.0f} tok/s" for k, v in results.items()))
    median = {name: statistics.median(values) for name, values in results.items()}
    ratio = median["dapt"] / median["hf_trainer"]
    record = {
        "date": date.today().isoformat(),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, "
        + ("GPU " + torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"),
        "torch": torch.__version__,
        "model_parameters": parameters,
        "settings": vars(args),
        "tokens_per_second": {name: round(value, 1) for name, value in median.items()},
        "runs": results,
        "ratio_dapt_vs_trainer": round(ratio, 3),
        "ratio_dapt_document_mask_vs_trainer": round(median["dapt_document_mask"] / median["hf_trainer"], 3),
    }
    record["headline"] = (
        f"dapt {median['dapt']:.0f} tok/s vs HF Trainer {median['hf_trainer']:.0f} tok/s: **{ratio:.2f}×** "
        f"(with document masking {median['dapt_document_mask']:.0f} tok/s); {parameters / 1e6:.1f}M-param Llama, "
        f"seq {args.seq_len}, batch {args.batch}, fp32"
    )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(record, indent=2) + "\n")
    print(f"\n| contender | tokens/s ({parameters / 1e6:.1f}M params, seq {args.seq_len}, batch {args.batch}) |")
    print("|---|---|")
    for name, value in median.items():
        print(f"| {name} | {value:.0f} |")
    print(
        f"train_throughput: dapt {median['dapt']:.0f} tok/s, HF Trainer {median['hf_trainer']:.0f} tok/s, "
        f"ratio {ratio:.2f} (dapt with document masking {median['dapt_document_mask']:.0f} tok/s)"
    )


if __name__ == "__main__":
    main()
