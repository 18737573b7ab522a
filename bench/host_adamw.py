"""AdamW steps on parameters in host memory: ZeRO-Offload's optimizer step (and any training on a CPU).

Under DeepSpeed with `offload_optimizer: cpu`, the fp32 master weights, their gradients and the Adam moments live
in host memory and the CPU steps them after every backward pass on the GPU, so the optimizer's speed on the CPU
bounds the step. DeepSpeed's answer is its own fused C++ Adam (DeepSpeedCPUAdam, built at first use with a C++
compiler); dapt uses torch's AdamW with `fused=True` instead. This measures, same parameters, same gradients,
same machine, same run, alternating round by round:

- torch_fused: torch.optim.AdamW(fused=True), what dapt uses;
- torch_foreach: torch.optim.AdamW(foreach=True), what dapt used before;
- torch_default: torch.optim.AdamW() as most code writes it (on a CPU: one tensor at a time);
- deepspeed_cpu_adam: DeepSpeedCPUAdam(adamw_mode=True), DeepSpeed's default for ZeRO-Offload (when deepspeed
  is installed and its op builds here; the build itself is not timed).

The parameters have the shapes of the Llama that bench/gpu_mfu.py trains (398M parameters, the embeddings tied;
`--shape tiny` for a quick check), in two groups as dapt makes them (weight decay on matrices only). Reported:
parameters stepped per second (the median of the rounds) and dapt's ratio to each, plus the largest difference
between the contenders' weights after the same steps (they compute the same update).

    python bench/host_adamw.py                 # ≈ 3 minutes on 2 cores, ≈ 9 GB of host memory
    python bench/host_adamw.py --shape tiny --steps 3 --rounds 1
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results" / "host_adamw.json"
SHAPES = {  # hidden, layers, MLP width, vocabulary (tied embeddings), key/value width
    "0.5b": (1024, 24, 4096, 32000, 256),
    "tiny": (64, 2, 128, 512, 16),
}
HYPERPARAMETERS = {"lr": 3e-4, "betas": (0.9, 0.95), "eps": 1e-8}


def parameter_shapes(shape: str) -> list[tuple[int, ...]]:
    """A Llama's parameter shapes: embeddings, per block q/k/v/o, gate/up/down and two norms, the final norm."""
    hidden, layers, mlp, vocab, kv = SHAPES[shape]
    block = [(hidden, hidden), (kv, hidden), (kv, hidden), (hidden, hidden)]
    block += [(mlp, hidden), (mlp, hidden), (hidden, mlp), (hidden,), (hidden,)]
    return [(vocab, hidden), *block * layers, (hidden,)]


def parameters_with_gradients(shapes: list[tuple[int, ...]], seed: int = 0) -> list[torch.nn.Parameter]:
    generator = torch.Generator().manual_seed(seed)
    parameters = []
    for shape in shapes:
        parameter = torch.nn.Parameter(torch.randn(shape, generator=generator) * 0.02)
        parameter.grad = torch.randn(shape, generator=generator) * 1e-3
        parameters.append(parameter)
    return parameters


def groups(parameters: list[torch.nn.Parameter]) -> list[dict]:
    """dapt's two groups: decay on matrices, none on norms (and, here, none on the embeddings)."""
    matrices = [p for p in parameters[1:] if p.dim() >= 2]
    rest = [parameters[0], *(p for p in parameters if p.dim() < 2)]
    return [{"params": matrices, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}]


def contenders() -> dict[str, Callable[[list[dict]], torch.optim.Optimizer]]:
    made = {
        "torch_fused": lambda g: torch.optim.AdamW(g, **HYPERPARAMETERS, fused=True),
        "torch_foreach": lambda g: torch.optim.AdamW(g, **HYPERPARAMETERS, foreach=True),
        "torch_default": lambda g: torch.optim.AdamW(g, **HYPERPARAMETERS),
    }
    if importlib.util.find_spec("deepspeed") is not None:
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        try:
            DeepSpeedCPUAdam([torch.nn.Parameter(torch.zeros(1))])  # builds (or loads) its C++ op, untimed
            made["deepspeed_cpu_adam"] = lambda g: DeepSpeedCPUAdam(g, **HYPERPARAMETERS, adamw_mode=True)
        except RuntimeError as error:
            print(f"deepspeed_cpu_adam left out: {error}")
    return made


def measure(make: Callable, shapes: list[tuple[int, ...]], steps: int) -> tuple[float, list[torch.Tensor]]:
    """Parameters stepped per second over `steps` steps (after two untimed ones), and the weights at the end."""
    parameters = parameters_with_gradients(shapes)
    optimizer = make(groups(parameters))
    for _ in range(2):  # the moments are allocated and the kernels warmed
        optimizer.step()
    start = time.perf_counter()
    for _ in range(steps):
        optimizer.step()
    seconds = time.perf_counter() - start
    count = sum(p.numel() for p in parameters)
    weights = [p.detach() for p in parameters]
    del optimizer, parameters
    gc.collect()
    return count * steps / seconds, weights


def add_bandwidth(count: int) -> float:
    """GB/s of `a += b` over `count` fp32 elements (8 bytes read, 4 written each): what the host memory gives these
    threads, the bound of any AdamW step (28 bytes per parameter: weight, gradient, two moments; three written)."""
    a, b = torch.zeros(count), torch.ones(count)
    a.add_(b)
    start = time.perf_counter()
    for _ in range(3):
        a.add_(b)
    return 12 * count * 3 / (time.perf_counter() - start) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="0.5b")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of each contender")
    args = parser.parse_args()
    shapes = parameter_shapes(args.shape)
    count = sum(torch.Size(shape).numel() for shape in shapes)
    made = contenders()
    speeds: dict[str, list[float]] = {name: [] for name in made}
    reference, difference = None, {}
    for round_number in range(args.rounds):
        for name, make in made.items():
            speed, weights = measure(make, shapes, args.steps)
            speeds[name].append(speed)
            if reference is None:
                reference = weights
            elif round_number == 0:
                difference[name] = max((a - b).abs().max().item() for a, b in zip(reference, weights, strict=True))
            del weights
        print(f"round {round_number + 1}: " + ", ".join(f"{k} {v[-1] / 1e6:.0f}M params/s" for k, v in speeds.items()))
    median = {name: statistics.median(values) for name, values in speeds.items()}
    ratio = {name: round(median["torch_fused"] / value, 2) for name, value in median.items() if name != "torch_fused"}
    record = {
        "date": date.today().isoformat(),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, CPU",
        "torch": torch.__version__,
        "parameters": count,
        "settings": vars(args),
        "params_per_second": {name: round(value) for name, value in median.items()},
        "runs": speeds,
        "ratio_dapt_vs": ratio,
        "max_weight_difference_vs_torch_fused": difference,
        "add_bandwidth_gb_per_s": round(add_bandwidth(count), 1),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
    }
    record["torch_fused_gb_per_s"] = round(28 * median["torch_fused"] / 1e9, 1)
    step_ms = 1000 * count / median["torch_fused"]
    record["headline"] = (
        f"AdamW step on {count / 1e6:.0f}M fp32 parameters in host memory: dapt (torch fused) {step_ms:.0f} ms = "
        + ", ".join(f"**{value:.2f}×** {name}" for name, value in ratio.items())
        + f"; same weights within {max(difference.values(), default=0.0):.0e}; fused moves "
        + f"{record['torch_fused_gb_per_s']:.0f} GB/s where a += b moves {record['add_bandwidth_gb_per_s']:.0f}"
    )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(record, indent=2) + "\n")
    print("\n| contender | M params/s | dapt ÷ it |\n|---|---|---|")
    for name, value in median.items():
        print(f"| {name} | {value / 1e6:.0f} | {ratio.get(name, 1.0):.2f} |")
    print("\nhost_adamw: " + record["headline"])


if __name__ == "__main__":
    main()
