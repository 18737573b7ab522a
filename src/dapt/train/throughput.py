"""Throughput accounting: FLOPs per token, MFU, peak memory.

FLOPs per trained token follow the PaLM paper's appendix B: 6·N for the matrix multiplies of the
forward and backward passes, plus 12·L·H·Q·T for attention (L layers, H heads of size Q — so H·Q is the
model width — and sequence length T). N counts the parameters that multiply activations: everything
but the input-embedding lookup (which is a gather, not a matmul); the LM head counts even when it is
tied to the embeddings, since it is a real matmul.
"""

from __future__ import annotations

import resource
import sys
from typing import Any

import torch

# Dense bf16/fp16 tensor-core peak TFLOP/s (vendor datasheets, without sparsity). Extend as needed, or set
# pretrain.peak_tflops. CPUs are not listed: their peak depends on the SKU, cores and clock.
PEAK_TFLOPS = {
    "A100": 312.0,
    "H100": 989.0,
    "H200": 989.0,
    "L4": 121.0,
    "A10G": 125.0,
    "L40S": 362.0,
    "RTX 4090": 165.0,
}


def matmul_parameters(model: torch.nn.Module) -> int:
    """Parameters that take part in matrix multiplies (see the module docstring)."""
    total = sum(p.numel() for p in model.parameters())
    get_input_embeddings = getattr(model, "get_input_embeddings", None)
    embeddings = get_input_embeddings() if get_input_embeddings else None
    if embeddings is None:
        return total
    tied = getattr(getattr(model, "config", None), "tie_word_embeddings", False)
    return total if tied else total - embeddings.weight.numel()


def training_flops_per_token(params: float, layers: int, width: int, seq_len: int) -> float:
    """Training FLOPs per token: 6·N + 12·L·d_model·T (PaLM, appendix B)."""
    return 6.0 * params + 12.0 * layers * width * seq_len


def flops_per_token(model: torch.nn.Module, seq_len: int) -> float:
    """`training_flops_per_token` of a live model."""
    config = getattr(model, "config", None)
    layers = getattr(config, "num_hidden_layers", 0)
    width = getattr(config, "hidden_size", 0)
    return training_flops_per_token(matmul_parameters(model), layers, width, seq_len)


def device_peak_tflops(override: float | None = None) -> float | None:
    """The accelerator's peak TFLOP/s from the table (by device name), the override, or None."""
    if override is not None:
        return override
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name()
        for key, value in PEAK_TFLOPS.items():
            if key in name:
                return value
    return None


def peak_memory() -> dict[str, Any]:
    """Peak accelerator memory if there is one, else the process's peak resident memory."""
    if torch.cuda.is_available():
        return {"bytes": int(torch.cuda.max_memory_allocated()), "kind": "cuda max_memory_allocated"}
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"bytes": int(rss if sys.platform == "darwin" else rss * 1024), "kind": "process peak RSS"}


def model_flops_utilization(
    flops_per_unit: float | None, units_per_second: float, peak_tflops: float | None, processes: int = 1
) -> float | None:
    """MFU: the model FLOP/s achieved over all processes, as a share of their devices' peak (None: the FLOPs or
    the peak unknown)."""
    if not flops_per_unit or not peak_tflops:
        return None
    return flops_per_unit * units_per_second / 1e12 / (peak_tflops * processes)


def throughput_report(
    model: torch.nn.Module, seq_len: int, tokens_per_second: float, peak_tflops: float | None, processes: int = 1
) -> dict[str, Any]:
    """FLOPs per token, achieved TFLOP/s (over all `processes`, and per device), the peak of one device and MFU;
    `tokens_per_second` is over all processes."""
    per_token = flops_per_token(model, seq_len)
    achieved = per_token * tokens_per_second / 1e12
    peak = device_peak_tflops(peak_tflops)
    utilization = model_flops_utilization(per_token, tokens_per_second, peak, processes)
    return {
        "flops_per_token": per_token,
        "achieved_tflops": round(achieved, 4),
        "achieved_tflops_per_device": round(achieved / processes, 4),
        "peak_tflops": peak,
        "mfu": round(utilization, 4) if utilization is not None else None,
        "peak_memory": peak_memory(),
    }
