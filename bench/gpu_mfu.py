"""Model FLOPs utilisation of dapt's continued-pretraining loop on one GPU: a ~0.5B Llama-style model in bf16.

The issue's goal is ≥ 50% MFU on an H100 (dense bf16 peak from `dapt.train.throughput.PEAK_TFLOPS`, or
--peak-tflops). The model is built from scratch (no download): 24 blocks of width 1024, 16 heads (4 key/value
heads), MLP 4096, a 32k vocabulary, tied embeddings: ≈0.43B parameters, 3.2 GFLOPs per trained token at seq
2048. Its windows are random tokens packed with an end-of-text every ~700 tokens, so document masking runs as in
a real corpus; random tokens cost the same FLOPs as text. FLOPs per token are dapt's own accounting (6·N +
12·L·d·T, PaLM appendix B), tokens/s is measured over the steps after --warmup, from the loop's own metrics.

Each attention implementation asked for (sdpa; flash_attention_2 when the flash-attn package is installed)
runs with and without torch.compile, one after the other, and the table gives tokens/s and MFU of each.

    python bench/gpu_mfu.py                          # on a GPU machine: ≈ 3-5 minutes on an H100
    python bench/gpu_mfu.py --tiny --steps 3         # a 2-block toy on a CPU: checks that the script runs
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import tempfile
from datetime import date
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedModel

from dapt.train.loop import LoopSettings, train_loop
from dapt.train.objectives import causal_lm_loss, lm_batch
from dapt.train.throughput import device_peak_tflops, flops_per_token, model_flops_utilization

EOS = 2
SHAPES = {
    "0.5b": {"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16, "intermediate_size": 4096},
    "tiny": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 128},
}


def build_model(shape: str, attention: str, vocab_size: int, seq_len: int) -> PreTrainedModel:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=vocab_size,
        num_key_value_heads=SHAPES[shape]["num_attention_heads"] // 4,
        max_position_embeddings=seq_len,
        tie_word_embeddings=True,
        eos_token_id=EOS,
        **SHAPES[shape],
    )
    return AutoModelForCausalLM.from_config(config, attn_implementation=attention, dtype=torch.float32)


def random_windows(vocab_size: int, seq_len: int, rows: int, seed: int) -> torch.Tensor:
    """Packed windows of random tokens with an end-of-text token every ~700 tokens (documents of 100-1300)."""
    generator = torch.Generator().manual_seed(seed)
    windows = torch.randint(3, vocab_size, (rows, seq_len + 1), generator=generator)
    boundaries = torch.rand(rows, seq_len + 1, generator=generator) < 1 / 700
    return torch.where(boundaries, torch.full_like(windows, EOS), windows)


def measure(args: argparse.Namespace, attention: str, compiled: bool, device: torch.device) -> dict:
    model = build_model(args.shape, attention, args.vocab_size, args.seq_len)
    per_token = flops_per_token(model, args.seq_len)
    peak = device_peak_tflops(args.peak_tflops)
    batch = lm_batch(random_windows(args.vocab_size, args.seq_len, args.micro_batch, seed=0), EOS)
    settings = LoopSettings(
        max_steps=args.warmup + args.steps,
        lr=1e-4,
        warmup_steps=1,
        precision="bf16" if device.type == "cuda" else "fp32",
        grad_accum_steps=args.grad_accum,
        compile=compiled,
        flops_per_unit=per_token,
        peak_tflops=peak,
    )
    with tempfile.TemporaryDirectory() as folder:
        metrics_file = Path(folder) / "metrics.jsonl"
        train_loop(model, lambda: batch, causal_lm_loss, settings, metrics_file=metrics_file)
        lines = [json.loads(line) for line in metrics_file.read_text().splitlines()]
    steps = [line for line in lines if "loss" in line]
    first, last = steps[args.warmup - 1], steps[-1]
    tokens_per_second = (last["units"] - first["units"]) / (last["seconds"] - first["seconds"])
    mfu = model_flops_utilization(per_token, tokens_per_second, peak)
    peak_memory = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    return {
        "attention": attention,
        "compile": compiled,
        "tokens_per_second": round(tokens_per_second, 1),
        "mfu": round(mfu, 4) if mfu is not None else None,
        "flops_per_token": per_token,
        "peak_memory_gib": round(peak_memory, 2) if peak_memory is not None else None,
        "final_loss": round(steps[-1]["loss"], 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="a 2-block toy (check the script on a CPU)")
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--micro-batch", type=int, default=8, help="rows per micro-batch")
    parser.add_argument("--grad-accum", type=int, default=1)
    parser.add_argument("--steps", type=int, default=30, help="measured optimizer steps")
    parser.add_argument("--warmup", type=int, default=5, help="steps before measuring (compile, allocator); ≥ 1")
    parser.add_argument("--vocab-size", type=int, default=32_000)
    parser.add_argument("--peak-tflops", type=float, default=None, help="the device's dense bf16 peak")
    parser.add_argument("--no-compile", action="store_true", help="only eager")
    parser.add_argument("--out", type=Path, default=None, help="default: bench/results/gpu_mfu.json (not with --tiny)")
    args = parser.parse_args()
    args.shape = "tiny" if args.tiny else "0.5b"
    args.warmup = max(1, args.warmup)
    if args.tiny:
        args.seq_len, args.micro_batch, args.vocab_size = min(args.seq_len, 128), min(args.micro_batch, 2), 512
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    flash = device.type == "cuda" and importlib.util.find_spec("flash_attn") is not None
    attentions = ["sdpa"] + (["flash_attention_2"] if flash else [])
    runs = [
        measure(args, attention, compiled, device)
        for attention in attentions
        for compiled in ([False] if args.no_compile else [False, True])
    ]
    machine = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU ({platform.machine()})"
    parameters = sum(p.numel() for p in build_model(args.shape, "sdpa", args.vocab_size, args.seq_len).parameters())
    print(
        f"{machine}, {parameters / 1e9:.2f}B parameters, seq {args.seq_len}, "
        f"{args.micro_batch * args.grad_accum} rows per step, peak {device_peak_tflops(args.peak_tflops)} TFLOP/s"
    )
    print(f"{'attention':<20}{'compile':<9}{'tokens/s':>12}{'MFU':>8}{'peak GiB':>10}")
    for run in runs:
        mfu = f"{run['mfu']:.1%}" if run["mfu"] is not None else "—"
        memory = f"{run['peak_memory_gib']:.1f}" if run["peak_memory_gib"] is not None else "—"
        print(f"{run['attention']:<20}{run['compile']!s:<9}{run['tokens_per_second']:>12.0f}{mfu:>8}{memory:>10}")
    if args.out is None and args.tiny:
        return
    args.out = args.out or Path(__file__).parent / "results" / "gpu_mfu.json"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    shown = ", ".join(
        f"{run['attention']}{' compiled' if run['compile'] else ''} {run['tokens_per_second']:.0f} tok/s"
        + (f" = MFU {run['mfu']:.1%}" if run["mfu"] is not None else "")
        for run in runs
    )
    headline = f"{parameters / 1e9:.2f}B Llama, bf16, seq {args.seq_len}: {shown}"
    print(headline)
    record = {
        "headline": headline,
        "date": date.today().isoformat(),
        "machine": machine,
        "torch": torch.__version__,
        "parameters": parameters,
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "runs": runs,
    }
    args.out.write_text(json.dumps(record, indent=1) + "\n")
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
