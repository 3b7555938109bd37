"""Metrics against values computed by hand, and the fit diagnosis."""

from __future__ import annotations

import numpy as np
import pytest

from worker.families.classification.metrics import (
    diagnose_fit,
    multi_label_metrics,
    single_label_metrics,
    threshold_folds,
    tune_thresholds,
)


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


def test_tuned_thresholds_by_hand() -> None:
    targets = np.array([[1, 0], [0, 1], [1, 1]])
    probabilities = np.array([[0.9, 0.2], [0.4, 0.3], [0.6, 0.8]])
    # y's positives score 0.3 and 0.8, its negative 0.2: any threshold in (0.2, 0.3] is perfect;
    # of the grid's 0.25 and 0.3 the one nearer 0.5 wins. x: (0.4, 0.6] -> 0.5 itself.
    assert tune_thresholds(probabilities, targets) == [0.5, 0.3]


def test_multi_label_figures_are_scored_on_rows_the_thresholds_were_not_tuned_on() -> None:
    rng = np.random.default_rng(7)
    rows, names = 60, ["x", "y", "z"]
    targets = (rng.random((rows, 3)) < 0.3).astype(int)
    # Scores that carry little signal: tuning on the scored rows finds thresholds that fit noise.
    probabilities = np.clip(0.15 * targets + rng.random((rows, 3)) * 0.85, 0, 1)
    m = multi_label_metrics(probabilities, targets, names)

    fold = threshold_folds(rows)
    assert sorted(np.bincount(fold).tolist()) == [30, 30]
    expected = np.zeros_like(targets)
    for k in (0, 1):
        cut = np.asarray(tune_thresholds(probabilities[fold != k], targets[fold != k]))
        expected[fold == k] = probabilities[fold == k] >= cut
    for j, name in enumerate(names):
        tp = int(((expected[:, j] == 1) & (targets[:, j] == 1)).sum())
        fp = int(((expected[:, j] == 1) & (targets[:, j] == 0)).sum())
        fn = int(((expected[:, j] == 0) & (targets[:, j] == 1)).sum())
        label = m["per_label"][name]
        assert label["support"] == tp + fn
        assert label["precision"] == pytest.approx(tp / (tp + fp) if tp + fp else 0.0)
        assert label["recall"] == pytest.approx(tp / (tp + fn))
        assert label["f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert m["f1_macro"] == pytest.approx(np.mean([m["per_label"][n]["f1"] for n in names]))
    assert m["subset_accuracy"] == pytest.approx(float(np.mean((expected == targets).all(axis=1))))
    assert m["hamming_loss"] == pytest.approx(float(np.mean(expected != targets)))

    # The served thresholds are tuned on every row; scoring with them would report more.
    served = tune_thresholds(probabilities, targets)
    assert m["thresholds"] == dict(zip(names, served, strict=True))
    in_sample = (probabilities >= np.asarray(served)).astype(int)
    in_sample_f1 = np.mean([2 * ((in_sample[:, j] == 1) & (targets[:, j] == 1)).sum()
                            / (in_sample[:, j].sum() + targets[:, j].sum()) for j in range(3)])
    assert m["f1_macro"] < in_sample_f1
    untuned = (probabilities >= 0.5).astype(int)
    assert m["f1_macro_at_0_5"] == pytest.approx(np.mean(
        [2 * ((untuned[:, j] == 1) & (targets[:, j] == 1)).sum() / (untuned[:, j].sum() + targets[:, j].sum())
         for j in range(3)]))
    assert "cross-fitted" in m["threshold_evaluation"]


def test_a_label_without_positives_keeps_the_default_threshold() -> None:
    assert tune_thresholds(np.array([[0.9], [0.1]]), np.array([[0], [0]])) == [0.5]


def test_fit_diagnosis() -> None:
    baseline = float(np.log(3))  # uniform over three classes
    assert diagnose_fit(1.08, 1.09, [], baseline) == "underfitting"
    assert diagnose_fit(0.60, 0.65, [0.80], baseline) == "learning"
    assert diagnose_fit(0.40, 0.45, [0.452], baseline) == "good"  # plateau, small gap
    assert diagnose_fit(0.05, 0.60, [0.50], baseline) == "overfitting"  # wide gap and rising
    assert diagnose_fit(0.05, 0.30, [0.40], baseline) == "learning"  # wide gap but still improving
