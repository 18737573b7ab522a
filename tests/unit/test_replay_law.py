"""The law `dapt plan` fits: it recovers a known law from noisy points, and its recommendation keeps the forgetting
budget."""

import numpy as np
import pytest

from dapt.eval.replay_law import Evaluation, fit_law, recommend
from dapt.train.schedule import warmup_cosine_factor

TRUE_DOMAIN = {"A": 0.12, "alpha": 0.45}
TRUE_GENERAL = {"F": 0.06, "G": 0.05, "beta": 0.6}
DOMAIN_START, GENERAL_START = 3.0, 2.5


def cosine(steps: int) -> tuple[float, ...]:
    return tuple(warmup_cosine_factor(t, 2, steps, 0.1) for t in range(steps))


def synthetic_pilots(noise: float, seed: int = 0) -> list[Evaluation]:
    """Pilots at three replay fractions, 40 steps each, evaluated every 5 steps, from the true law plus noise."""
    from dapt.eval.replay_law import domain_law, general_law

    rng = np.random.default_rng(seed)
    points = []
    for replay in (0.05, 0.25, 0.5):
        factors = cosine(40)
        for step in range(0, 41, 5):
            s1, r = np.array([sum(factors[:step])]), np.array([replay])
            domain = domain_law(list(TRUE_DOMAIN.values()), DOMAIN_START, r, s1)[0]
            general = general_law(list(TRUE_GENERAL.values()), GENERAL_START, r, s1)[0]
            jitter = rng.normal(0, noise, 2) if step else (0.0, 0.0)
            points.append(Evaluation(replay, step, factors, domain + jitter[0], general + jitter[1]))
    return points


def test_the_fit_recovers_a_synthetic_laws_parameters_from_noisy_points():
    fit = fit_law(synthetic_pilots(noise=0.003), bootstrap_rounds=20)
    found = fit.parameters()
    for name, value in TRUE_DOMAIN.items():
        assert found["domain"][name] == pytest.approx(value, rel=0.15), name
    for name, value in TRUE_GENERAL.items():
        assert found["general"][name] == pytest.approx(value, rel=0.15, abs=0.03), name
    assert found["domain"]["L0"] == DOMAIN_START and found["general"]["L0"] == GENERAL_START
    assert np.std(fit.domain_residuals) < 0.006  # about the noise it was given


def test_a_longer_run_is_predicted_within_its_interval():
    from dapt.eval.replay_law import domain_law, general_law

    fit = fit_law(synthetic_pilots(noise=0.003), bootstrap_rounds=50)
    factors = cosine(200)  # 5x the pilots' steps
    s1, r = np.array([sum(factors)]), np.array([0.3])
    truth = {
        "domain": domain_law(list(TRUE_DOMAIN.values()), DOMAIN_START, r, s1)[0],
        "general": general_law(list(TRUE_GENERAL.values()), GENERAL_START, r, s1)[0],
    }
    predicted, interval = fit.predict(0.3, factors), fit.interval(0.3, factors, level=0.98)
    for split in ("domain", "general"):
        assert predicted[split] == pytest.approx(truth[split], abs=0.03)
        low, high = interval[split]
        assert low <= truth[split] <= high


@pytest.mark.parametrize("budget", [0.0, 0.02, 0.05, 0.2])
def test_the_recommendation_keeps_the_forgetting_budget(budget):
    fit = fit_law(synthetic_pilots(noise=0.002), bootstrap_rounds=5)
    replays = [round(r, 2) for r in np.arange(0.05, 0.51, 0.05)]
    schedules = {steps: cosine(steps) for steps in (50, 100, 200)}
    best, candidates = recommend(fit, replays, schedules, forgetting_budget=budget)
    ceiling = GENERAL_START * (1 + budget)
    allowed = [c for c in candidates if c.general <= ceiling]
    if not allowed:
        assert best is None
        return
    assert best is not None and best.general <= ceiling
    assert best.domain == min(c.domain for c in allowed)
    # a candidate with a lower domain loss exists only by breaking the budget
    assert all(c.general > ceiling for c in candidates if c.domain < best.domain)


def test_a_tight_budget_asks_for_more_replay_than_a_loose_one():
    fit = fit_law(synthetic_pilots(noise=0.002), bootstrap_rounds=5)
    replays = [round(r, 2) for r in np.arange(0.05, 0.51, 0.05)]
    schedules = {200: cosine(200)}
    loose, _ = recommend(fit, replays, schedules, forgetting_budget=1.0)
    tight, _ = recommend(fit, replays, schedules, forgetting_budget=0.08)
    assert loose is not None and tight is not None
    assert loose.replay == 0.05 and tight.replay > loose.replay
