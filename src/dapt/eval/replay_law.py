"""The continued-pretraining law `dapt plan` fits to its pilot runs: domain and general validation loss as a function
of the tokens trained, the replay fraction and the learning-rate schedule.

The form is the simplest in the spirit of the D-CPT law (Que et al. 2024: domain and general loss each a power law
in the tokens trained, the mixture ratio entering through the tokens of each kind) that short pilots can pin down.
Per evaluation of a run with replay fraction r, after `s` optimizer steps:

    S1(s) = Σ_{t<s} η(t)/η_peak  steps at the peak learning rate (the "forward area" of Tissue et al. 2024, "Scaling
                                 law with learning-rate annealing"): warmup and decay count for what they move
    D_dom = (1 - r) · S1(s)      domain tokens, in those steps
    D_rep =      r  · S1(s)      replay tokens, likewise

    domain:  L_d = L_d0 - A · D_dom^α
    general: L_g = L_g0 + F · D_dom^β - G · D_rep^β

L_d0 and L_g0 are the base's losses, measured before the first step (the same in every pilot). Domain tokens lower
the domain loss (A) and raise the general loss (F: forgetting); replay tokens pull the general loss back (G). The
exponents are at most 1: each improvement grows ever more slowly with tokens. Why this rather than the full D-CPT
form (E + A/N^α + B·r^η/D^β + C/(r + ε)^γ per split): a plan fits one model size (no N term) from a few pilots at
one budget, whose evaluations cover a small range of tokens, too small to locate an irreducible loss E or separate
ratio and token exponents; the improvement over the base as a power of tokens is what that range determines. Tried
and dropped on the pilots of bench/plan_accuracy.py: a saturating (1 + D)^-α form (it flattened after the pilots'
few steps: domain error 0.27 nats where the plain power law made 0.05) and a term in the current learning rate
(collinear with S1 over a pilot's short schedule: it fitted noise, 0.14).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import least_squares

DOMAIN_PARAMETERS = ("A", "alpha")
GENERAL_PARAMETERS = ("F", "G", "beta")
# lower, upper bounds per parameter: exponents where an improvement that slows with tokens is, amplitudes loose
BOUNDS = {
    "domain": ([0.0, 0.05], [20.0, 1.0]),
    "general": ([-20.0, 0.0, 0.05], [20.0, 20.0, 1.0]),
}


@dataclass(frozen=True)
class Evaluation:
    """One validation measurement of a run: after `step` optimizer steps of a run with `replay` fraction, whose
    learning-rate multiplier of the peak at step t is `lr_factors[t]` (its whole schedule)."""

    replay: float
    step: int
    lr_factors: tuple[float, ...]
    domain_loss: float
    general_loss: float


def forward_area(lr_factors: Sequence[float], step: int) -> float:
    """S1 after `step` steps of a schedule: the sum of its learning-rate factors so far (steps at the peak rate)."""
    return float(sum(lr_factors[: max(step, 0)]))


def _features(points: Sequence[Evaluation]) -> tuple[np.ndarray, np.ndarray]:
    """(replay fraction, S1) of each point, as arrays."""
    return np.array([p.replay for p in points], dtype=float), np.array(
        [forward_area(p.lr_factors, p.step) for p in points]
    )


def domain_law(params: Sequence[float], start: float, replay: np.ndarray, s1: np.ndarray) -> np.ndarray:
    """The domain loss at replay fraction `replay` after `s1` steps at the peak learning rate."""
    a, alpha = params
    return start - a * ((1.0 - replay) * s1) ** alpha


def general_law(params: Sequence[float], start: float, replay: np.ndarray, s1: np.ndarray) -> np.ndarray:
    """The general loss at replay fraction `replay` after `s1` steps at the peak learning rate."""
    f, g, beta = params
    return start + f * ((1.0 - replay) * s1) ** beta - g * (replay * s1) ** beta


LAWS = {"domain": domain_law, "general": general_law}


def _fit_one(
    split: str,
    start: float,
    replay: np.ndarray,
    s1: np.ndarray,
    y: np.ndarray,
    guesses: list[np.ndarray] | None = None,
) -> np.ndarray:
    """Least squares from a few starting exponents (the fit is not convex in them), or from `guesses`; the best
    one wins."""
    law = LAWS[split]
    lower, upper = BOUNDS[split]
    spread = float(np.ptp(y)) if len(y) else 0.1
    if guesses is None:
        if split == "domain":
            guesses = [np.array([max(spread, 0.01) / 4, exponent]) for exponent in (0.2, 0.5, 0.9)]
        else:
            guesses = [np.array([spread / 4, spread / 8, exponent]) for exponent in (0.2, 0.5, 0.9)]
    best = None
    for guess in guesses:
        result = least_squares(
            lambda p: law(p, start, replay, s1) - y,
            np.clip(guess, lower, upper),
            bounds=(lower, upper),
            x_scale="jac",
        )
        if best is None or result.cost < best.cost:
            best = result
    assert best is not None
    return best.x


@dataclass
class LawFit:
    """The fitted law of both splits, the base's losses it starts from, and the fit's residuals."""

    domain_start: float
    general_start: float
    domain: np.ndarray  # A, alpha
    general: np.ndarray  # F, G, beta
    domain_residuals: np.ndarray
    general_residuals: np.ndarray
    bootstrap: list[tuple[np.ndarray, np.ndarray]]  # refits on resampled residuals, for intervals

    def predict(self, replay: float, lr_factors: Sequence[float], step: int | None = None) -> dict[str, float]:
        """Domain and general loss after `step` steps (default: the end) of a run with this replay and schedule."""
        return _predict(self.domain, self.general, self.domain_start, self.general_start, replay, lr_factors, step)

    def interval(
        self, replay: float, lr_factors: Sequence[float], level: float = 0.9, step: int | None = None
    ) -> dict[str, tuple[float, float]]:
        """A `level` prediction interval of each split's loss: the bootstrap refits' predictions plus a residual
        drawn from the fit (the noise of one measurement)."""
        rng = np.random.default_rng(0)
        draws: dict[str, list[float]] = {"domain": [], "general": []}
        for domain, general in self.bootstrap:
            predicted = _predict(domain, general, self.domain_start, self.general_start, replay, lr_factors, step)
            draws["domain"].append(predicted["domain"] + rng.choice(self.domain_residuals))
            draws["general"].append(predicted["general"] + rng.choice(self.general_residuals))
        tail = (1.0 - level) / 2 * 100
        return {
            split: (float(np.percentile(values, tail)), float(np.percentile(values, 100 - tail)))
            for split, values in draws.items()
        }

    def parameters(self) -> dict[str, dict[str, float]]:
        domain = dict(zip(DOMAIN_PARAMETERS, map(float, self.domain), strict=True))
        general = dict(zip(GENERAL_PARAMETERS, map(float, self.general), strict=True))
        return {"domain": {"L0": self.domain_start, **domain}, "general": {"L0": self.general_start, **general}}


def _predict(
    domain: np.ndarray,
    general: np.ndarray,
    domain_start: float,
    general_start: float,
    replay: float,
    lr_factors: Sequence[float],
    step: int | None,
) -> dict[str, float]:
    r = np.array([replay])
    s1 = np.array([forward_area(lr_factors, len(lr_factors) if step is None else step)])
    return {
        "domain": float(domain_law(domain, domain_start, r, s1)[0]),
        "general": float(general_law(general, general_start, r, s1)[0]),
    }


def fit_law(points: Sequence[Evaluation], bootstrap_rounds: int = 100, seed: int = 0) -> LawFit:
    """Fit both splits' laws to the pilots' evaluations. The evaluations before the first step give the base's
    losses (their mean: they are the same model on the same windows); the others are fitted by least squares, then
    refitted `bootstrap_rounds` times (from the fit's parameters) on the fitted values plus resampled residuals,
    for the intervals."""
    starts = [p for p in points if p.step == 0]
    trained = [p for p in points if p.step > 0]
    if not starts:
        raise ValueError("no evaluation before the first step: the base's losses are needed")
    if len(trained) < len(GENERAL_PARAMETERS) + 1:
        raise ValueError(f"{len(trained)} evaluations after training started; the fit needs at least 5")
    domain_start = float(np.mean([p.domain_loss for p in starts]))
    general_start = float(np.mean([p.general_loss for p in starts]))
    replay, s1 = _features(trained)
    observed = {
        "domain": np.array([p.domain_loss for p in trained]),
        "general": np.array([p.general_loss for p in trained]),
    }
    start = {"domain": domain_start, "general": general_start}
    fitted = {split: _fit_one(split, start[split], replay, s1, y) for split, y in observed.items()}
    predicted = {split: LAWS[split](fitted[split], start[split], replay, s1) for split in observed}
    residuals = {split: observed[split] - predicted[split] for split in observed}
    rng = np.random.default_rng(seed)
    rounds = []
    for _ in range(bootstrap_rounds):
        resampled = {split: predicted[split] + rng.choice(residuals[split], len(trained)) for split in observed}
        refit = {
            split: _fit_one(split, start[split], replay, s1, resampled[split], [fitted[split]]) for split in observed
        }
        rounds.append((refit["domain"], refit["general"]))
    return LawFit(
        domain_start,
        general_start,
        fitted["domain"],
        fitted["general"],
        residuals["domain"],
        residuals["general"],
        rounds,
    )


@dataclass(frozen=True)
class Candidate:
    """A full run the plan could recommend: its replay fraction, steps, and its predicted final losses."""

    replay: float
    steps: int
    domain: float
    general: float
    within_budget: bool


def recommend(
    fit: LawFit,
    replays: Sequence[float],
    schedules: dict[int, Sequence[float]],
    forgetting_budget: float,
) -> tuple[Candidate | None, list[Candidate]]:
    """The candidate with the lowest predicted domain loss whose predicted general loss stays within
    `forgetting_budget` (a relative rise over the base's, e.g. 0.02: at most 2% above) — None when none does —
    and every candidate. `schedules`: the learning-rate factors of a run of each candidate length (steps)."""
    ceiling = fit.general_start * (1.0 + forgetting_budget)
    candidates = []
    for replay in replays:
        for steps, factors in schedules.items():
            predicted = fit.predict(replay, factors)
            candidates.append(
                Candidate(replay, steps, predicted["domain"], predicted["general"], predicted["general"] <= ceiling)
            )
    allowed = [c for c in candidates if c.within_budget]
    best = min(allowed, key=lambda c: (c.domain, c.steps)) if allowed else None
    return best, candidates
