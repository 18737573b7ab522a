"""Task metrics against values worked out by hand."""

import pytest

from dapt.eval.metrics import classification_report


def test_accuracy_macro_f1_and_confusion():
    truth = [0, 0, 0, 1, 1, 2]
    predicted = [0, 0, 1, 1, 1, 0]
    report = classification_report(truth, predicted, ["a", "b", "c"])
    assert report["accuracy"] == pytest.approx(4 / 6)
    # a: p=2/3 r=2/3 f=2/3; b: p=2/3 r=1 f=0.8; c: f=0
    assert report["macro_f1"] == pytest.approx((2 / 3 + 0.8 + 0) / 3)
    assert report["confusion_matrix"] == [[2, 1, 0], [0, 2, 0], [1, 0, 0]]
    assert report["per_class"]["c"]["support"] == 1


def test_per_class_report_and_confusion_matrix_agree_with_scikit_learn():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    import numpy as np

    rng = np.random.default_rng(0)
    labels = ["a", "b", "c", "d"]
    truth = rng.integers(0, 4, size=200).tolist()
    # a noisy classifier that never predicts "d": its precision has no predictions to divide by
    predicted = [t if rng.random() < 0.6 else int(rng.integers(0, 3)) for t in truth]
    predicted = [min(p, 2) for p in predicted]
    report = classification_report(truth, predicted, labels)
    precision, recall, f1, support = sklearn_metrics.precision_recall_fscore_support(
        truth, predicted, labels=range(4), zero_division=0
    )
    for i, label in enumerate(labels):
        scores = report["per_class"][label]
        assert scores["precision"] == pytest.approx(precision[i])
        assert scores["recall"] == pytest.approx(recall[i])
        assert scores["f1"] == pytest.approx(f1[i])
        assert scores["support"] == support[i]
    assert report["confusion_matrix"] == sklearn_metrics.confusion_matrix(truth, predicted, labels=range(4)).tolist()
    assert report["accuracy"] == pytest.approx(sklearn_metrics.accuracy_score(truth, predicted))
    assert report["macro_f1"] == pytest.approx(
        sklearn_metrics.f1_score(truth, predicted, labels=range(4), average="macro", zero_division=0)
    )
