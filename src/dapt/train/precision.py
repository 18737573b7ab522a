"""Which precision a stage computes in: `pretrain.precision`, with `auto` decided by what the device computes fast.

Every stage that runs a model (pretraining, TAPT, the task variants, every evaluation and generation) asks
`choose_precision` and says what it got and why; the stage's manifest records both. bf16 here always means
autocast: the weights (and the optimizer's master copy) stay fp32, matrix products run in bf16.

`auto`:
- on a GPU: bf16 when it supports bf16 (Ampere and later), else fp32;
- on a CPU: bf16 when the CPU computes bf16 natively, else fp32. Native means a bf16 instruction in its flags
  (`avx512_bf16` or `amx_bf16` on x86, `bf16` on Arm), or, where the flags do not say so, a 512×512 matmul that
  runs at least 1.5× as fast in bf16 as in fp32 (measured once per machine, in about 50 ms, and cached). Where the
  CPU emulates bf16, autocast is 2-3× *slower* than fp32; where it is native, faster: on the 2-core x86 machine
  with `avx512_bf16` (2026-12-04, torch 2.13) a 2048² matmul ran 4.5× as fast and the demo's continued
  pretraining 2.0× (262 vs 131 tokens/s) with the same validation loss (2.424 vs 2.418 at step 16).

`DAPT_CPU_BF16=1` (or `0`) tells dapt the answer instead of asking the CPU (the test suite pins `0`, so its numbers
are the same on every machine).
"""

from __future__ import annotations

import json
import os
import platform
import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import torch

BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")  # x86 (AVX-512 BF16, AMX) and Arm (FEAT_BF16) in /proc/cpuinfo
PROBE_SIZE = 512  # a 512×512 matmul: ~1.5 ms in fp32 on 2 cores, long enough to time, short enough to run once
MIN_PROBE_SPEEDUP = 1.5  # bf16 at least this much faster than fp32 in the probe: native (emulated: 0.3-0.6×)
ENVIRONMENT_OVERRIDE = "DAPT_CPU_BF16"


@dataclass(frozen=True)
class PrecisionChoice:
    """What a stage computes in (`fp32`, `bf16` or `fp16`) and why."""

    precision: str
    reason: str

    def record(self) -> dict[str, str]:
        """For a stage's manifest."""
        return {"precision": self.precision, "precision_reason": self.reason}

    def __str__(self) -> str:
        return f"precision {self.precision} ({self.reason})"


def choose_precision(setting: str) -> PrecisionChoice:
    """The precision for `setting` (auto, fp32, bf16 or fp16) on this process's device."""
    if setting != "auto":
        return PrecisionChoice(setting, "set in the config")
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name()
        if torch.cuda.is_bf16_supported():
            return PrecisionChoice("bf16", f"auto: the GPU ({name}) supports bf16")
        return PrecisionChoice("fp32", f"auto: the GPU ({name}) has no bf16")
    native, why = cpu_computes_bf16()
    return PrecisionChoice("bf16" if native else "fp32", f"auto: {why}")


def cpu_computes_bf16() -> tuple[bool, str]:
    """Whether this CPU computes bf16 natively, and how that was found out."""
    told = os.environ.get(ENVIRONMENT_OVERRIDE)
    if told in ("0", "1"):
        return told == "1", f"{ENVIRONMENT_OVERRIDE}={told}: the CPU {'does' if told == '1' else 'does not'} " + (
            "compute bf16 natively"
        )
    return _cpu_capability()


@cache
def _cpu_capability() -> tuple[bool, str]:
    flags = sorted(set(BF16_FLAGS) & cpu_flags())
    if flags:
        return True, f"the CPU computes bf16 natively: {', '.join(flags)} in its flags"
    speedup = cached_probe()
    verdict = "natively" if speedup >= MIN_PROBE_SPEEDUP else "not natively (emulated)"
    return speedup >= MIN_PROBE_SPEEDUP, (
        f"no bf16 flag seen; a {PROBE_SIZE}×{PROBE_SIZE} matmul ran {speedup:.2f}× as fast in bf16 as in fp32, "
        f"so the CPU computes bf16 {verdict}; the threshold is {MIN_PROBE_SPEEDUP}×"
    )


def cpu_flags() -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo (Linux: `flags` on x86, `Features` on Arm); empty elsewhere."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return set()
    flags: set[str] = set()
    for line in lines:
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags.update(value.split())
    return flags


def bf16_matmul_speedup(size: int = PROBE_SIZE, repeats: int = 5) -> float:
    """fp32 time ÷ bf16 time of a size×size matmul on the CPU (the best of `repeats`, after a warm-up)."""
    generator = torch.Generator().manual_seed(0)
    a, b = torch.randn(size, size, generator=generator), torch.randn(size, size, generator=generator)

    def best_seconds(x: torch.Tensor, y: torch.Tensor) -> float:
        x @ y  # warm-up: kernel selection, first-touch of the output
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            x @ y
            times.append(time.perf_counter() - start)
        return min(times)

    return best_seconds(a, b) / best_seconds(a.bfloat16(), b.bfloat16())


def probe_cache_file() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "dapt" / "cpu-bf16.json"


def cached_probe() -> float:
    """The probe's speedup, measured once per machine (CPU model, torch version and threads) and kept on disk,
    so that every run on a machine makes the same choice."""
    machine = {"cpu": _cpu_model(), "torch": torch.__version__, "threads": torch.get_num_threads()}
    path = probe_cache_file()
    try:
        kept = json.loads(path.read_text())
        if kept.get("machine") == machine:
            return float(kept["bf16_speedup"])
    except (OSError, ValueError, KeyError, TypeError):
        pass  # not measured yet (or unreadable): measure
    speedup = bf16_matmul_speedup()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(f".{os.getpid()}.tmp")
        temporary.write_text(json.dumps({"machine": machine, "bf16_speedup": round(speedup, 3)}) + "\n")
        temporary.replace(path)
    except OSError:
        pass  # a read-only home: measured again next time
    return speedup


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


ACCELERATE_NAMES = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}  # accelerate's mixed_precision values
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(choice: PrecisionChoice, device: torch.device | str = "cpu") -> AbstractContextManager:
    """The forward passes of evaluation and generation in the chosen precision (fp32 weights, as in training)."""
    dtype = AUTOCAST_DTYPES.get(choice.precision)
    if dtype is None:
        return nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)
