"""Task metrics for classification (accuracy, macro-F1, per-class report, confusion matrix), and the paired
bootstrap interval every control-vs-DAPT difference in the report is given with."""

from __future__ import annotations

from typing import Any

import numpy as np


def confusion_matrix(truth: list[int], predicted: list[int], num_classes: int) -> np.ndarray:
    """(num_classes, num_classes): rows are true classes, columns predicted ones."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(truth, dtype=np.int64), np.asarray(predicted, dtype=np.int64)), 1)
    return matrix


def classification_report(truth: list[int], predicted: list[int], labels: list[str]) -> dict[str, Any]:
    """Accuracy, macro-F1 (unweighted mean of per-class F1, as scikit-learn's f1_score(average='macro'))."""
    matrix = confusion_matrix(truth, predicted, len(labels))
    true_positive = np.diag(matrix).astype(np.float64)
    predicted_count, support = matrix.sum(axis=0), matrix.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted_count > 0, true_positive / predicted_count, 0.0)
        recall = np.where(support > 0, true_positive / support, 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    return {
        "accuracy": float(true_positive.sum() / max(1, matrix.sum())),
        "macro_f1": float(f1.mean()),
        "per_class": {
            label: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
            for label, p, r, f, s in zip(labels, precision, recall, f1, support, strict=True)
        },
        "confusion_matrix": matrix.tolist(),
        "labels": labels,
        "examples": int(matrix.sum()),
    }


BOOTSTRAP_SAMPLES = 2000


def paired_bootstrap(control_correct: np.ndarray, dapt_correct: np.ndarray, seed: int = 0) -> tuple[float, float]:
    """95% interval of the mean-score difference (dapt − control), resampling test examples with replacement."""
    rng = np.random.default_rng(seed)
    samples = rng.integers(0, len(control_correct), size=(BOOTSTRAP_SAMPLES, len(control_correct)))
    differences = dapt_correct[samples].mean(axis=1) - control_correct[samples].mean(axis=1)
    low, high = np.percentile(differences, [2.5, 97.5])
    return float(low), float(high)
