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
