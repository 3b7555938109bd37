"""Metrics against values computed by hand, and the fit diagnosis."""

from __future__ import annotations

import numpy as np
import pytest

from worker.metrics import diagnose_fit, multi_label_metrics, single_label_metrics, tune_thresholds


def test_single_label_metrics_by_hand() -> None:
    # true 0 0 1 1 2, predicted 0 1 1 1 0
    labels = np.array([0, 0, 1, 1, 2])
    logits = np.eye(3)[[0, 1, 1, 1, 0]]
    m = single_label_metrics(logits, labels, ["a", "b", "c"])
    # a: tp 1, fp 1, fn 1 -> p .5 r .5 f1 .5 | b: tp 2, fp 1 -> p 2/3 r 1 f1 .8 | c: nothing right -> 0
    assert m["accuracy"] == pytest.approx(3 / 5)
    assert m["precision_macro"] == pytest.approx((0.5 + 2 / 3 + 0) / 3)
    assert m["recall_macro"] == pytest.approx((0.5 + 1 + 0) / 3)
    assert m["f1_macro"] == pytest.approx((0.5 + 0.8 + 0) / 3)
    assert m["f1_weighted"] == pytest.approx((2 * 0.5 + 2 * 0.8 + 1 * 0) / 5)
    assert m["per_class"]["b"] == pytest.approx({"precision": 2 / 3, "recall": 1.0, "f1": 0.8, "support": 2})
    assert m["per_class"]["c"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert m["confusion_matrix"] == {"labels": ["a", "b", "c"], "matrix": [[1, 1, 0], [0, 2, 0], [1, 0, 0]]}
    assert all(type(v) is float for k, v in m.items() if k not in ("per_class", "confusion_matrix"))


def test_multi_label_metrics_by_hand() -> None:
    targets = np.array([[1, 0], [0, 1], [1, 1]])
    probabilities = np.array([[0.9, 0.2], [0.4, 0.3], [0.6, 0.8]])
    m = multi_label_metrics(probabilities, targets, ["x", "y"])  # 0.5: predicted [1,0] [0,0] [1,1]
    assert m["subset_accuracy"] == pytest.approx(2 / 3)
    assert m["hamming_loss"] == pytest.approx(1 / 6)
    assert m["per_label"]["x"]["f1"] == pytest.approx(1.0)
    assert m["per_label"]["y"]["f1"] == pytest.approx(2 / 3)  # tp 1, fn 1
    assert m["f1_macro"] == pytest.approx((1 + 2 / 3) / 2)
    assert m["f1_micro"] == pytest.approx(2 * 3 / (2 * 3 + 0 + 1))  # tp 3, fp 0, fn 1

    # y's positives score 0.3 and 0.8, its negative 0.2: any threshold in (0.2, 0.3] is perfect;
    # of the grid's 0.25 and 0.3 the one nearer 0.5 wins. x: (0.4, 0.6] -> 0.5 itself.
    thresholds = tune_thresholds(probabilities, targets)
    assert thresholds == [0.5, 0.3]
    tuned = multi_label_metrics(probabilities, targets, ["x", "y"], thresholds)
    assert tuned["f1_macro"] == 1.0 and tuned["subset_accuracy"] == 1.0 and tuned["hamming_loss"] == 0.0
    assert tuned["f1_macro_at_0_5"] == pytest.approx((1 + 2 / 3) / 2)
    assert tuned["thresholds"] == {"x": 0.5, "y": 0.3}


def test_a_label_without_positives_keeps_the_default_threshold() -> None:
    assert tune_thresholds(np.array([[0.9], [0.1]]), np.array([[0], [0]])) == [0.5]


def test_fit_diagnosis() -> None:
    baseline = float(np.log(3))  # uniform over three classes
    assert diagnose_fit(1.08, 1.09, [], baseline) == "underfitting"
    assert diagnose_fit(0.60, 0.65, [0.80], baseline) == "learning"
    assert diagnose_fit(0.40, 0.45, [0.452], baseline) == "good"  # plateau, small gap
    assert diagnose_fit(0.05, 0.60, [0.50], baseline) == "overfitting"  # wide gap and rising
    assert diagnose_fit(0.05, 0.30, [0.40], baseline) == "learning"  # wide gap but still improving
