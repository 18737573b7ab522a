"""Validation losses with a standard error over documents, and the forgetting guard that steers by them.

A held-out split's loss is the mean over its tokens, but its documents are what was sampled: two documents differ
far more than two tokens of one. So the standard error is taken over documents (a cluster, or ratio-estimator,
standard error): with s_d the summed loss of document d, n_d its scored tokens and L = Σ s_d / Σ n_d,

    SE(L) = sqrt(D / (D - 1) · Σ (s_d - L · n_d)²) / Σ n_d

over its D documents. The forgetting guard compares the general validation loss at a step, L_t, with the original
base's, L_0 (the evaluation before the first step), on the same documents: the rise is L_t / L_0 - 1, and it is over
`budget` only when L_t - (1 + budget) · L_0 exceeds `significance` standard errors of that difference, taken over
the documents' paired differences. Paired, the error is small: a document that is hard for the base stays hard.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class DocumentLosses:
    """The summed next-token loss and the scored tokens of each document of a held-out split (same order)."""

    sums: np.ndarray  # float64, (documents,)
    tokens: np.ndarray  # int64, (documents,)

    @property
    def documents(self) -> int:
        return int((self.tokens > 0).sum())

    @property
    def mean(self) -> float:
        """The loss per token over every scored token."""
        return float(self.sums.sum() / self.tokens.sum())

    @property
    def standard_error(self) -> float | None:
        """The standard error of `mean` over documents; None with fewer than two."""
        return cluster_standard_error(self.sums, self.tokens)

    def state(self) -> dict[str, list]:
        return {"sums": self.sums.tolist(), "tokens": self.tokens.tolist()}

    @classmethod
    def from_state(cls, state: dict[str, list]) -> DocumentLosses:
        return cls(np.asarray(state["sums"], dtype=np.float64), np.asarray(state["tokens"], dtype=np.int64))


def cluster_standard_error(sums: np.ndarray, tokens: np.ndarray) -> float | None:
    """The standard error of Σ sums / Σ tokens with documents as the sampled units; None with fewer than two."""
    scored = tokens > 0
    documents = int(scored.sum())
    if documents < 2:
        return None
    sums, tokens = sums[scored], tokens[scored]
    mean = sums.sum() / tokens.sum()
    residuals = sums - mean * tokens
    return float(math.sqrt(documents / (documents - 1) * float((residuals**2).sum())) / tokens.sum())


@dataclass
class ForgettingSettings:
    budget: float  # the relative rise of the general validation loss over the original base's that is allowed
    action: str  # stop | remix | warn
    significance: float = 2.0  # standard errors the rise must exceed the budget by before the guard acts
    remix_factor: float = 2.0  # remix: the replay share is multiplied by this
    remix_max_replay: float = 0.5  # remix: and never raised above this


class ForgettingGuard:
    """At every evaluation, the general validation loss against the original base's (the first evaluation) and the
    forgetting budget; over it, `stop` ends training (the loop keeps the best checkpoint that met the budget),
    `remix` raises the replay share through `remix(factor, ceiling) -> (share before, share after)`, `warn` logs.

    `documents()` gives the general validation split's `DocumentLosses` of the evaluation just made. Its state (the
    base's losses per document, every check so far) goes into checkpoints, so a resumed run judges as an
    uninterrupted one.
    """

    def __init__(
        self,
        settings: ForgettingSettings,
        documents: Callable[[], DocumentLosses],
        remix: Callable[[float, float], tuple[float, float]] | None = None,
    ) -> None:
        if settings.action == "remix" and remix is None:
            raise ValueError("on_forgetting: remix needs a training mixture to remix")
        self.settings, self.documents, self.remix = settings, documents, remix
        self.baseline: DocumentLosses | None = None
        self.checks: list[dict[str, Any]] = []

    def judge(self, current: DocumentLosses) -> dict[str, Any]:
        """The rise of `current` over the baseline, its standard error (paired over documents) and the verdict."""
        assert self.baseline is not None
        if len(current.sums) != len(self.baseline.sums) or not np.array_equal(current.tokens, self.baseline.tokens):
            raise ValueError("the general validation documents changed between evaluations")
        base = self.baseline.mean
        budget, tokens = self.settings.budget, current.tokens.sum()
        differences = current.sums - (1 + budget) * self.baseline.sums  # per document, in summed nats
        excess = float(differences.sum() / tokens)  # L_t - (1 + budget) · L_0
        error = cluster_standard_error(differences, current.tokens)  # its standard error over documents
        margin = self.settings.significance * (error or 0.0)
        return {
            "general_val_loss": current.mean,
            "base_general_val_loss": base,
            "rise": current.mean / base - 1,
            "rise_se": error / base if error is not None else None,
            "budget": budget,
            "documents": current.documents,
            "over_budget": excess > margin,
        }

    def check(self, step: int) -> dict[str, Any]:
        """Judge the evaluation at `step` (the first one sets the baseline) and act when it is over the budget;
        return the record of the check, with `action` what was done ("" when within the budget)."""
        current = self.documents()
        if self.baseline is None:
            self.baseline = current
        record = {"step": step, **self.judge(current), "action": ""}
        if record["over_budget"]:
            record["action"] = self.settings.action
            if self.settings.action == "remix":
                assert self.remix is not None
                before, after = self.remix(self.settings.remix_factor, self.settings.remix_max_replay)
                record["replay_share"] = [before, after]
                if after == before:
                    record["action"] = (
                        "remix (replay share already at remix_max_replay)"
                        if before > 0
                        else "remix (no replay text in this stage's data: nothing to raise)"
                    )
        self.checks.append(record)
        return record

    def describe(self, record: dict[str, Any]) -> str:
        """One line for the log: the rise against the budget and what was done."""
        error = f" ± {record['rise_se']:.2%}" if record["rise_se"] is not None else " (no standard error: one document)"
        line = (
            f"forgetting: general val loss {record['general_val_loss']:.4f} vs the base's "
            f"{record['base_general_val_loss']:.4f}, a rise of {record['rise']:+.2%}{error} (budget "
            f"{record['budget']:.2%}, over it by more than {self.settings.significance:g} SE: "
            f"{'yes' if record['over_budget'] else 'no'})"
        )
        if "replay_share" in record:
            before, after = record["replay_share"]
            line += f"; replay share {before:.1%} → {after:.1%}"
        elif record["action"]:
            line += f"; {record['action']}"
        return line

    def state_dict(self) -> dict[str, Any]:
        return {"baseline": self.baseline.state() if self.baseline else None, "checks": self.checks}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.baseline = DocumentLosses.from_state(state["baseline"]) if state["baseline"] else None
        self.checks = list(state["checks"])
