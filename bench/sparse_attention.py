"""Sliding-window attention on a CPU: one training step of a sliding-window model at 2k-8k tokens, with dapt's
block-sparse kernel (dapt/model/local_attention.py) against transformers' sdpa path with its dense mask.

The model has SmolLM2-135M's widths (hidden 576, 9 query / 3 key-value heads of 64, MLP 1536, a 49,152-entry
vocabulary, tied embeddings) as a Mistral, the same block with a sliding window (512 tokens by default), and random
weights: speed and memory do not depend on the weights, and nothing is downloaded. Each window packs documents of
300-3,000 tokens (most longer than the window) separated by end-of-text, with dapt's document mask (position ids
restarting per document), so attention is local within each document. Both contenders run the same loss, dapt's
`causal_lm_loss` (chunked above 256 MB of logits), in the precision `auto` picks on this machine, with AdamW (fused):

- dapt: the sliding-window attention computed block by block, each query block against the keys its window reaches
  in its document (O(T·W));
- transformers: the model's own sdpa path, which builds a (1, 1, T, T) sliding-window and document mask and runs the
  masked kernel over every pair (O(T²)); what a user of transformers gets, and what dapt ran before.

Both are exact, so the losses after the same steps agree within float noise. Each configuration runs in a fresh
process, so its peak resident memory (ru_maxrss) is its own; the load average is recorded beside each, as the machine
may be shared.

    python bench/sparse_attention.py                        # 2k, 4k, 8k, 8 of SmolLM2's 30 layers: 6-12 min
    python bench/sparse_attention.py --layers 30 --lengths 8192 --steps 3
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import subprocess
import sys
import time
from datetime import date
from pathlib import Path
from unittest import mock

import torch
from transformers import MistralConfig, MistralForCausalLM

from dapt.train import objectives
from dapt.train.objectives import causal_lm_loss, lm_batch
from dapt.train.precision import choose_precision

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "sparse_attention.json"
VOCAB = 49_152
EOS = 0
CONTENDERS = ("dapt", "transformers")


def smollm2_shaped_mistral(layers: int, window: int) -> MistralForCausalLM:
    torch.manual_seed(0)
    config = MistralConfig(
        vocab_size=VOCAB,
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=layers,
        num_attention_heads=9,
        num_key_value_heads=3,
        head_dim=64,
        max_position_embeddings=8192,
        rope_theta=100_000.0,
        tie_word_embeddings=True,
        sliding_window=window,
        attn_implementation="sdpa",
    )
    return MistralForCausalLM(config)


def packed_window(length: int, generator: torch.Generator) -> torch.Tensor:
    """(1, length + 1) token ids: documents of 300-3,000 tokens, each ended by EOS, cut at the window's end."""
    tokens = torch.randint(1, VOCAB, (1, length + 1), generator=generator)
    end = 0
    while True:
        end += int(torch.randint(300, 3001, (1,), generator=generator))
        if end > length:
            return tokens
        tokens[0, end - 1] = EOS


def one(length: int, contender: str, steps: int, layers: int, window: int) -> dict:
    """Train `steps` steps of one packed window of `length` tokens; the last step's time and this process's peak RSS."""
    model = smollm2_shaped_mistral(layers, window)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    precision = choose_precision("auto")
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision.precision == "bf16")
    # transformers alone: dapt's kernel switched off, so the model's sdpa path builds its dense mask
    kernel = (
        mock.patch.object(objectives, "local_attention", lambda model, input_ids: contextlib.nullcontext())
        if contender == "transformers"
        else contextlib.nullcontext()
    )
    generator = torch.Generator().manual_seed(length)
    seconds, losses = [], []
    with kernel:
        for _ in range(steps):
            batch = lm_batch(packed_window(length, generator), eos_id=EOS)
            start = time.perf_counter()
            with autocast:
                loss, _ = causal_lm_loss(model, batch)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            seconds.append(time.perf_counter() - start)
            losses.append(float(loss.detach()))
    return {
        "length": length,
        "contender": contender,
        "precision": precision.precision,
        "documents": int((batch["input_ids"] == EOS).sum()) + 1,
        "step_seconds": round(seconds[-1], 2),
        "tokens_per_second": round(length / seconds[-1], 1),
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        "losses": [round(x, 5) for x in losses],
        "load_average": [round(x, 1) for x in os.getloadavg()],  # at the end of this configuration
    }


def run_all(lengths: list[int], steps: int, layers: int, window: int) -> list[dict]:
    rows = []
    for length in lengths:
        for contender in CONTENDERS:
            command = [sys.executable, __file__, "--one", str(length), contender]
            command += ["--steps", str(steps), "--layers", str(layers), "--window", str(window)]
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode != 0:
                rows.append({"length": length, "contender": contender, "error": done.stderr.strip()[-400:]})
            else:
                rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), flush=True)
    return rows


def comparisons(rows: list[dict]) -> list[dict]:
    """Per length: dapt's speed and memory as ratios of transformers', and how far their losses differ."""
    by = {(r["length"], r["contender"]): r for r in rows if "error" not in r}
    out = []
    for length in sorted({r["length"] for r in rows}):
        ours, theirs = by.get((length, "dapt")), by.get((length, "transformers"))
        if ours and theirs:
            out.append(
                {
                    "length": length,
                    "speed_ratio": round(ours["tokens_per_second"] / theirs["tokens_per_second"], 2),
                    "peak_rss_saved_gb": round(theirs["peak_rss_gb"] - ours["peak_rss_gb"], 2),
                    "loss_difference": round(
                        max(abs(a - b) for a, b in zip(ours["losses"], theirs["losses"], strict=True)), 5
                    ),
                }
            )
    return out


def headline(rows: list[dict], compared: list[dict], layers: int, window: int, load: list[float]) -> str:
    by = {(r["length"], r["contender"]): r for r in rows if "error" not in r}
    if not compared:
        return "sparse_attention: no length finished for both contenders (see the rows' errors)"
    longest = compared[-1]
    ours, theirs = by[(longest["length"], "dapt")], by[(longest["length"], "transformers")]
    ratios = ", ".join(f"{c['length']} {c['speed_ratio']:.2f}×" for c in compared)
    precision = ours["precision"]
    busy = f"; load average {min(load)}-{max(load)}: speeds noisy" if max(load) > 2.5 else ""
    return (
        f"sparse_attention: {longest['length']} tokens, window {window}, SmolLM2-135M-shaped Mistral "
        f"({layers} layers): "
        f"dapt's local kernel {ours['tokens_per_second']} tok/s vs transformers' dense mask "
        f"{theirs['tokens_per_second']} tok/s (**{longest['speed_ratio']:.2f}×**; by length {ratios}), peak RSS "
        f"{ours['peak_rss_gb']} vs {theirs['peak_rss_gb']} GB, losses within {longest['loss_difference']} after "
        f"{len(ours['losses'])} steps ({precision}{busy})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[2048, 4096, 8192])
    parser.add_argument("--steps", type=int, default=2, help="steps per configuration; the last one is timed")
    parser.add_argument("--layers", type=int, default=8, help="decoder layers (SmolLM2-135M has 30)")
    parser.add_argument("--window", type=int, default=512, help="sliding window in tokens")
    parser.add_argument("--one", nargs=2, metavar=("LENGTH", "CONTENDER"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(int(args.one[0]), args.one[1], args.steps, args.layers, args.window)))
        return
    load_before = [round(x, 1) for x in os.getloadavg()]
    rows = run_all(args.lengths, args.steps, args.layers, args.window)
    load_after = [round(x, 1) for x in os.getloadavg()]
    compared = comparisons(rows)
    record = {
        "date": date.today().isoformat(),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, CPU",
        "torch": torch.__version__,
        "layers": args.layers,
        "window": args.window,
        "steps": args.steps,
        # other work on the machine (1, 5, 15-minute averages, before and after): speeds compare only at a low load
        "load_average": {"before": load_before, "after": load_after},
        "rows": rows,
        "comparisons": compared,
        "headline": headline(rows, compared, args.layers, args.window, [load_before[0], load_after[0]]),
    }
    RESULTS.write_text(json.dumps(record, indent=2) + "\n")
    print(record["headline"])


if __name__ == "__main__":
    main()
