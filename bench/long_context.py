"""Long windows on a CPU: one training step's speed and peak memory at 1k-8k tokens, with and without dapt's chunked
cross-entropy (`pretrain.max_logits_mb`, dapt/model/chunked_loss.py) and activation checkpointing
(`base.gradient_checkpointing`).

The model has SmolLM2-135M's shape (30 layers, hidden 576, 9 query / 3 key-value heads, a 49,152-entry vocabulary,
tied embeddings) with random weights: speed and memory do not depend on the weights, and nothing is downloaded. One
window per step, one document per window (plain causal attention through SDPA), AdamW (fused) included, in the
precision `auto` picks on this machine (bf16 autocast where the CPU computes bf16 natively, else fp32; printed).
Each configuration runs in a fresh process, so its peak resident memory (ru_maxrss) is its own: model, gradients,
optimizer moments, activations and logits together. The logits of an 8k window over this vocabulary are 1.6 GB in
fp32, before their bf16 copy, their softmax and their gradient.

Contenders, at each length:
- whole: the loss over the window's full logits (what transformers' own `labels=` loss and `max_logits_mb: 0` do);
- chunked: dapt's loss, 256 MB of logits at a time (the default);
- checkpointed: whole logits, activations recomputed in backward (transformers' gradient checkpointing);
- chunked+checkpointed: both.

    python bench/long_context.py                       # 1k, 2k, 4k, 8k: about 15-25 minutes on 2 idle cores
    python bench/long_context.py --lengths 1024 2048 --steps 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from dapt.train.objectives import MAX_LOGITS_BYTES, causal_lm_loss, lm_batch
from dapt.train.precision import choose_precision

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "long_context.json"
VOCAB = 49_152
CONTENDERS = {  # name: (max_logits_bytes, gradient checkpointing)
    "whole": (0, False),
    "chunked": (MAX_LOGITS_BYTES, False),
    "checkpointed": (0, True),
    "chunked+checkpointed": (MAX_LOGITS_BYTES, True),
}


def smollm2_shaped() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        max_position_embeddings=8192,
        rope_theta=100_000.0,
        tie_word_embeddings=True,
        attn_implementation="sdpa",
    )
    return LlamaForCausalLM(config)


def one(length: int, contender: str, steps: int) -> dict:
    """Train `steps` steps of one window of `length` tokens; the last step's time and this process's peak RSS."""
    max_logits_bytes, checkpointed = CONTENDERS[contender]
    model = smollm2_shaped()
    if checkpointed:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    precision = choose_precision("auto")
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision.precision == "bf16")
    generator = torch.Generator().manual_seed(length)
    seconds, losses = [], []
    for _ in range(steps):
        window = torch.randint(0, VOCAB, (1, length + 1), generator=generator)
        start = time.perf_counter()
        with autocast:
            loss, _ = causal_lm_loss(model, lm_batch(window, eos_id=None), max_logits_bytes=max_logits_bytes)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        seconds.append(time.perf_counter() - start)
        losses.append(float(loss.detach()))
    return {
        "length": length,
        "contender": contender,
        "precision": precision.precision,
        "step_seconds": round(seconds[-1], 2),
        "tokens_per_second": round(length / seconds[-1], 1),
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        "losses": [round(x, 4) for x in losses],
    }


def run_all(lengths: list[int], steps: int) -> list[dict]:
    rows = []
    for length in lengths:
        for contender in CONTENDERS:
            command = [sys.executable, __file__, "--one", str(length), contender, "--steps", str(steps)]
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode != 0:
                rows.append({"length": length, "contender": contender, "error": done.stderr.strip()[-400:]})
            else:
                rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), flush=True)
    return rows


def headline(rows: list[dict], load: tuple[float, float]) -> str:
    by = {(r["length"], r["contender"]): r for r in rows if "error" not in r}
    longest = max(r["length"] for r in rows)
    parts = []
    whole, chunked = by.get((longest, "whole")), by.get((longest, "chunked"))
    if whole and chunked:
        parts.append(
            f"{longest} tokens, one step of a SmolLM2-135M-shaped model: chunked loss peak RSS "
            f"{chunked['peak_rss_gb']} GB vs {whole['peak_rss_gb']} GB with whole logits "
            f"(**{whole['peak_rss_gb'] - chunked['peak_rss_gb']:.1f} GB saved**), speed "
            f"{chunked['tokens_per_second'] / whole['tokens_per_second']:.2f}× whole"
        )
    both, checkpointed = by.get((longest, "chunked+checkpointed")), by.get((longest, "checkpointed"))
    if both and checkpointed:
        parts.append(
            f"with activation checkpointing {both['peak_rss_gb']} GB vs {checkpointed['peak_rss_gb']} GB "
            f"({both['tokens_per_second'] / checkpointed['tokens_per_second']:.2f}× its speed)"
        )
    precision = next((r["precision"] for r in rows if "precision" in r), "?")
    busy = f"; load average {load[0]}-{load[1]}: speeds within noise" if max(load) > 1.5 else ""
    return "long_context: " + "; ".join(parts) + f" ({precision}{busy})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 2048, 4096, 8192])
    parser.add_argument("--steps", type=int, default=2, help="steps per configuration; the last one is timed")
    parser.add_argument("--one", nargs=2, metavar=("LENGTH", "CONTENDER"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    if args.one:
        print(json.dumps(one(int(args.one[0]), args.one[1], args.steps)))
        return
    load_before = os.getloadavg()[0]
    rows = run_all(args.lengths, args.steps)
    load = (round(load_before, 1), round(os.getloadavg()[0], 1))
    record = {
        "date": date.today().isoformat(),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, CPU",
        "torch": torch.__version__,
        "steps": args.steps,
        "load_average": load,  # other work on the machine: speeds are comparable only at a low load
        "rows": rows,
        "headline": headline(rows, load),
    }
    RESULTS.write_text(json.dumps(record, indent=2) + "\n")
    print(record["headline"])


if __name__ == "__main__":
    main()
