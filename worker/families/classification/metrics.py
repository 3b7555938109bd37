"""Evaluation metrics (scikit-learn) and the fit diagnosis. Plain numpy in, plain Python out:
every value here is JSON- and torch.load(weights_only)-safe (floats, ints, strings, lists)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    f1_score,
    hamming_loss,
    precision_recall_fscore_support,
)
from sklearn.metrics import log_loss as sklearn_log_loss

from core.scores import single_label_scores
from core.serving.decode import DEFAULT_THRESHOLD
from worker.training.fit import diagnose_fit

__all__ = ["diagnose_fit", "multi_label_metrics", "single_label_metrics", "tune_thresholds"]

# Candidate decision thresholds for each label of a multi-label model.
THRESHOLD_GRID = tuple(round(t, 2) for t in np.arange(0.05, 0.951, 0.05))
# Multi-label figures: thresholds tuned on one fold of the validation rows, scored on the other.
THRESHOLD_FOLDS = 2
THRESHOLD_EVALUATION = ("cross-fitted: each validation row is scored at per-label thresholds tuned "
                        "on the other half of the rows; the served thresholds are tuned on all rows")


def single_label_metrics(logits: np.ndarray, labels: np.ndarray,
                         label_names: Sequence[str]) -> dict[str, Any]:
    """Accuracy, macro/weighted precision-recall-F1, per-class figures and the confusion matrix."""
    predictions = np.asarray(logits).argmax(axis=-1)
    return single_label_scores(np.asarray(labels).tolist(), predictions.tolist(),
                               keys=range(len(label_names)), names=label_names)


def tune_thresholds(probabilities: np.ndarray, targets: np.ndarray,
                    grid: Sequence[float] = THRESHOLD_GRID) -> list[float]:
    """Per label, the grid threshold with the best F1 on these rows. Ties go to the threshold
    nearest the default; a label with no positive row keeps the default (nothing to tune on)."""
    probabilities, targets = np.asarray(probabilities), np.asarray(targets).astype(int)
    thresholds: list[float] = []
    for j in range(targets.shape[1]):
        if targets[:, j].sum() == 0:
            thresholds.append(DEFAULT_THRESHOLD)
            continue
        scored = [(f1_score(targets[:, j], (probabilities[:, j] >= t).astype(int), zero_division=0),
                   -abs(t - DEFAULT_THRESHOLD), t) for t in grid]
        thresholds.append(float(max(scored)[2]))
    return thresholds


def threshold_folds(num_rows: int, folds: int = THRESHOLD_FOLDS) -> np.ndarray:
    """The fold of each validation row: a fixed shuffle (the same rows every evaluation, so
    figures of successive evaluations compare), dealt round-robin."""
    order = np.random.default_rng(0).permutation(num_rows)
    fold = np.empty(num_rows, dtype=np.int64)
    fold[order] = np.arange(num_rows) % folds
    return fold


def cross_fitted_predictions(probabilities: np.ndarray, targets: np.ndarray,
                             folds: int = THRESHOLD_FOLDS) -> np.ndarray:
    """Each row decided at thresholds tuned on the OTHER folds' rows only: scoring at thresholds
    tuned on the scored rows themselves overstates F1 (most for rare labels)."""
    probabilities, targets = np.asarray(probabilities), np.asarray(targets).astype(int)
    fold = threshold_folds(len(targets), folds)
    predictions = np.zeros_like(targets)
    for k in range(folds):
        held_out = fold == k
        if not held_out.any():
            continue
        cut = np.asarray(tune_thresholds(probabilities[~held_out], targets[~held_out]))
        predictions[held_out] = (probabilities[held_out] >= cut).astype(int)
    return predictions


def multi_label_metrics(probabilities: np.ndarray, targets: np.ndarray, label_names: Sequence[str],
                        thresholds: Sequence[float] | None = None) -> dict[str, Any]:
    """Micro/macro F1, subset accuracy, hamming loss, and per label precision, recall, F1 and
    support, all honest about where the thresholds came from:

    - `thresholds` None (the rows are the ones thresholds are tuned on: validation): every row
      is decided at thresholds tuned on the other half of the rows (2-fold cross-fitting), and
      the returned `thresholds`, the ones the model serves with, are tuned on all the rows;
    - `thresholds` given (tuned on other rows, e.g. validation when these are test rows): the
      rows are decided at them.

    `f1_macro_at_0_5` is the untuned baseline, to show what tuning buys."""
    probabilities, targets = np.asarray(probabilities), np.asarray(targets).astype(int)
    if thresholds is None:
        served = tune_thresholds(probabilities, targets)
        predictions = cross_fitted_predictions(probabilities, targets)
        evaluation = THRESHOLD_EVALUATION
    else:
        served = [float(t) for t in thresholds]
        predictions = (probabilities >= np.asarray(served)).astype(int)
        evaluation = "at the given thresholds, tuned on other rows"
    precision, recall, f1, support = precision_recall_fscore_support(
        targets, predictions, average=None, zero_division=0)
    return {
        "f1_micro": float(f1_score(targets, predictions, average="micro", zero_division=0)),
        "f1_macro": float(f1_score(targets, predictions, average="macro", zero_division=0)),
        "subset_accuracy": float(accuracy_score(targets, predictions)),
        "hamming_loss": float(hamming_loss(targets, predictions)),
        "f1_macro_at_0_5": float(f1_score(targets, (probabilities >= DEFAULT_THRESHOLD).astype(int),
                                          average="macro", zero_division=0)),
        "per_label": {
            name: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                   "support": int(support[i]), "threshold": served[i]}
            for i, name in enumerate(label_names)
        },
        "thresholds": {name: served[i] for i, name in enumerate(label_names)},
        "threshold_evaluation": evaluation,
    }


def log_loss(probabilities: np.ndarray, targets: np.ndarray, multi_label: bool) -> float:
    """Unweighted mean loss in nats, as the model's loss is defined: cross-entropy over classes
    (single-label), binary cross-entropy averaged over labels (multi-label)."""
    probabilities, targets = np.asarray(probabilities, dtype=np.float64), np.asarray(targets)
    if not multi_label:
        # A float32 softmax sums to one only within rounding, which log_loss warns about.
        probabilities = probabilities / probabilities.sum(axis=1, keepdims=True)
        return float(sklearn_log_loss(targets, probabilities, labels=list(range(probabilities.shape[1]))))
    per_label = [sklearn_log_loss(targets[:, j], probabilities[:, j], labels=[0, 1])
                 for j in range(targets.shape[1])]
    return float(np.mean(per_label))
