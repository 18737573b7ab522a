"""`precision: auto` follows what the device computes natively; bf16 training follows fp32's loss curve."""

import pytest
import torch

from dapt.train import precision
from dapt.train.loop import LoopSettings, train_loop
from dapt.train.precision import choose_precision


@pytest.fixture
def cpu(monkeypatch, tmp_path):
    """A CPU-only machine whose flags and matmul probe the test sets; the probe's cache in tmp_path."""
    monkeypatch.delenv("DAPT_CPU_BF16", raising=False)  # tests/conftest.py pins it for the rest of the suite
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    precision._cpu_capability.cache_clear()

    def machine(flags: set[str], speedup: float | None = None) -> list[int]:
        probes = []

        def probe() -> float:
            probes.append(1)
            if speedup is None:
                raise AssertionError("the probe ran although the flags answered")
            return speedup

        monkeypatch.setattr(precision, "cpu_flags", lambda: flags)
        monkeypatch.setattr(precision, "bf16_matmul_speedup", probe)
        precision._cpu_capability.cache_clear()
        return probes

    yield machine
    precision._cpu_capability.cache_clear()


def test_auto_is_bf16_on_a_cpu_with_native_bf16_flags(cpu):
    cpu({"avx512f", "avx512_bf16"})
    choice = choose_precision("auto")
    assert choice.precision == "bf16" and "avx512_bf16" in choice.reason
    cpu({"amx_tile", "amx_bf16"})
    assert choose_precision("auto").precision == "bf16"


def test_auto_asks_the_probe_without_flags_and_keeps_its_answer_per_machine(cpu):
    probes = cpu({"avx2", "avx512f"}, speedup=0.4)  # bf16 emulated: slower than fp32
    choice = choose_precision("auto")
    assert choice.precision == "fp32" and "0.40×" in choice.reason
    probes = cpu(set(), speedup=2.5)  # the same machine (cached), whatever a second probe would say
    assert choose_precision("auto").precision == "fp32" and not probes
    precision.probe_cache_file().unlink()
    probes = cpu(set(), speedup=2.5)  # a machine whose flags do not say, but bf16 runs 2.5× as fast
    assert choose_precision("auto").precision == "bf16" and len(probes) == 1


def test_a_set_precision_wins_over_the_capability(cpu, monkeypatch):
    cpu({"avx512_bf16"})
    assert choose_precision("fp32").precision == "fp32"
    cpu(set(), speedup=0.4)
    assert choose_precision("bf16").precision == "bf16"
    monkeypatch.setenv("DAPT_CPU_BF16", "1")  # told, not asked: no probe
    cpu(set(), speedup=None)
    assert choose_precision("auto").precision == "bf16"


@pytest.mark.parametrize(("flags", "expected"), [({"avx512_bf16"}, "bf16"), ({"avx2"}, "fp32")])
def test_the_loop_trains_in_the_chosen_precision_and_says_why(cpu, capsys, flags, expected):
    cpu(flags, speedup=0.5)
    autocast_on = []

    class Recording(torch.nn.Linear):
        def forward(self, x):
            autocast_on.append(torch.is_autocast_enabled("cpu"))  # inside the forward, where the loop casts
            return super().forward(x)

    model = Recording(8, 2)

    def loss_fn(m, batch):
        return m(batch).pow(2).mean(), len(batch)

    result = train_loop(model, lambda: torch.ones(4, 8), loss_fn, LoopSettings(max_steps=2, lr=0.1))
    assert result.precision.precision == expected
    assert autocast_on == [expected == "bf16"] * 2
    assert f"precision {expected} (auto: " in capsys.readouterr().out
    assert result.precision.record() == {"precision": expected, "precision_reason": result.precision.reason}


def tiny_llama_curve(setting: str) -> tuple[list[float], list[float]]:
    """Eight steps of a 2-block Llama on a learnable pattern: (training losses, held-out losses at steps 0/4/8)."""
    from dapt.config import BaseConfig, PresetConfig
    from dapt.model.load import load_original_base
    from dapt.train.objectives import causal_lm_loss, lm_batch, mean_lm_loss

    torch.manual_seed(0)
    model, tokenizer, _ = load_original_base(BaseConfig(preset=PresetConfig(num_layers=2)))
    windows = (torch.arange(20 * 33) * 7 % 50 + 1).view(20, 33)
    windows[:, 16] = tokenizer.eos_token_id
    held_out = list(windows[16:])
    step, losses = {"i": 0}, []

    def next_batch():
        start = step["i"] * 4 % 16
        step["i"] += 1
        return lm_batch(windows[start : start + 4], tokenizer.eos_token_id)

    def loss_fn(forward_model, batch):
        loss, units = causal_lm_loss(forward_model, batch)
        losses.append(loss.item())
        return loss, units

    result = train_loop(
        model,
        next_batch,
        loss_fn,
        LoopSettings(max_steps=8, lr=3e-3, eval_every=4, precision=setting),
        evaluate=lambda: {"val": mean_lm_loss(model, held_out, eos_id=tokenizer.eos_token_id)},
    )
    return losses, [e["val"] for e in result.evaluations]


# bf16 autocast from fp32 master weights follows fp32's loss curve to within this many nats per step (measured:
# ~0.001 over 30 steps of this model; on the demo's SmolLM2, 0.006 in the domain validation loss at step 16)
BF16_LOSS_TOLERANCE = 0.02


def test_a_bf16_run_follows_the_fp32_loss_curve():
    fp32_losses, fp32_val = tiny_llama_curve("fp32")
    bf16_losses, bf16_val = tiny_llama_curve("bf16")
    assert fp32_losses[-1] < fp32_losses[0] - 0.5  # it learns
    assert bf16_losses != fp32_losses  # it did compute in bf16
    assert bf16_losses == pytest.approx(fp32_losses, abs=BF16_LOSS_TOLERANCE)
    assert bf16_val == pytest.approx(fp32_val, abs=BF16_LOSS_TOLERANCE)
