"""Classification figures shared by the worker's evaluation and the API's scoring of a labelled
file: one definition of accuracy, macro and weighted F1, per-class figures and the confusion
matrix, from scikit-learn."""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any


def single_label_scores(truth: Sequence[Hashable], predicted: Sequence[Hashable], keys: Sequence[Hashable],
                        names: Sequence[str]) -> dict[str, Any]:
    """Figures of single-label predictions. `keys` are the label values as `truth` and
    `predicted` hold them (ids or names), in order; `names` what each is called in the result.
    The confusion matrix's rows are the true label, its columns the predicted one."""
    from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

    keys = list(keys)
    p_macro, r_macro, f1_macro, _ = precision_recall_fscore_support(
        truth, predicted, labels=keys, average="macro", zero_division=0)
    _, _, f1_weighted, _ = precision_recall_fscore_support(
        truth, predicted, labels=keys, average="weighted", zero_division=0)
    precision, recall, f1, support = precision_recall_fscore_support(
        truth, predicted, labels=keys, average=None, zero_division=0)
    matrix = confusion_matrix(truth, predicted, labels=keys)
    return {
        "accuracy": float(accuracy_score(truth, predicted)),
        "precision_macro": float(p_macro),
        "recall_macro": float(r_macro),
        "f1_macro": float(f1_macro),
        "f1_weighted": float(f1_weighted),
        "per_class": {name: {"precision": float(precision[i]), "recall": float(recall[i]),
                             "f1": float(f1[i]), "support": int(support[i])}
                      for i, name in enumerate(names)},
        "confusion_matrix": {"labels": list(names), "matrix": matrix.astype(int).tolist()},
    }
