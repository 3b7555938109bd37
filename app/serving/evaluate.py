"""Scoring a model's predictions on a labelled file (POST /predict/file?summary=true) with
scikit-learn, in the same figures and names as a job's evaluation: accuracy, macro/weighted
F1, per-class precision/recall/F1/support and the confusion matrix (rows: true label, columns:
predicted). scikit-learn is imported on the first call, so the API still starts fast."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any


def evaluate(task: str, labels: Sequence[str], truth: Sequence[list[str] | None],
             predicted: Sequence[list[str] | None]) -> dict[str, Any]:
    """Figures over the rows that have both a known true label and a prediction; the rest are
    counted, and the unknown label names listed, so a user sees what was left out and why."""
    known = set(labels)
    unknown: Counter[str] = Counter()
    kept_truth: list[list[str]] = []
    kept_predicted: list[list[str]] = []
    without_label = 0
    for true, guess in zip(truth, predicted, strict=True):
        if true is None or guess is None:
            without_label += true is None
            continue
        strangers = [name for name in true if name not in known]
        if strangers:
            unknown.update(strangers)
            continue
        kept_truth.append(true)
        kept_predicted.append(guess)
    summary: dict[str, Any] = {
        "scored_rows": len(kept_truth),
        "rows_without_label": without_label,
        "rows_with_unknown_label": sum(1 for t in truth if t is not None and any(n not in known for n in t)),
        "unknown_labels": dict(unknown.most_common(20)),
    }
    if not kept_truth:
        summary["metrics"] = None
        return summary
    if task == "multi_label":
        summary |= _multi_label(labels, kept_truth, kept_predicted)
    else:
        summary |= _single_label(labels, [t[0] for t in kept_truth], [p[0] for p in kept_predicted])
    return summary


def _single_label(labels: Sequence[str], truth: list[str], predicted: list[str]) -> dict[str, Any]:
    from core.scores import single_label_scores

    metrics = single_label_scores(truth, predicted, keys=labels, names=labels)
    return {"metrics": metrics, "confusion_matrix": metrics.pop("confusion_matrix")}


def _multi_label(labels: Sequence[str], truth: list[list[str]], predicted: list[list[str]]) -> dict[str, Any]:
    from sklearn.metrics import (
        accuracy_score,
        f1_score,
        hamming_loss,
        multilabel_confusion_matrix,
        precision_recall_fscore_support,
    )
    from sklearn.preprocessing import MultiLabelBinarizer

    names = list(labels)
    binarizer = MultiLabelBinarizer(classes=names)
    targets, guesses = binarizer.fit_transform(truth), binarizer.transform(predicted)
    precision, recall, f1, support = precision_recall_fscore_support(
        targets, guesses, average=None, zero_division=0)
    matrices = multilabel_confusion_matrix(targets, guesses)
    return {
        "metrics": {
            "f1_micro": float(f1_score(targets, guesses, average="micro", zero_division=0)),
            "f1_macro": float(f1_score(targets, guesses, average="macro", zero_division=0)),
            "subset_accuracy": float(accuracy_score(targets, guesses)),
            "hamming_loss": float(hamming_loss(targets, guesses)),
            "per_label": {name: {"precision": float(precision[i]), "recall": float(recall[i]),
                                 "f1": float(f1[i]), "support": int(support[i])}
                          for i, name in enumerate(names)},
        },
        # One 2x2 matrix per label, [[true negatives, false positives], [false negatives, true positives]].
        "confusion_matrix": {"labels": names, "per_label": {
            name: matrices[i].astype(int).tolist() for i, name in enumerate(names)}},
    }
