"""Cheap baselines for a classification dataset, scored on the same rows as the fine-tuned model.

They answer the question a user really has after a fine-tune: did it beat what a model that
knows only the label prior gets, and what a linear model gets in seconds on a CPU?

- `majority`: scikit-learn's DummyClassifier (`prior`): the class prior for every text, so it
  predicts the most frequent training class (single-label); per label, the label's rate in
  train (multi-label).
- `tfidf`: TF-IDF over character n-grams + logistic regression (one-vs-rest for multi-label).
  Character n-grams need no tokenizer, so Korean (or any script) works as it is.

Both fit on the whole train split and return probabilities per label; the caller turns them
into the same metrics as the tuned model's (metrics.py beside this file), multi-label
thresholds tuned on validation as the training loop tunes the model's.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn.dummy import DummyClassifier
from sklearn.exceptions import ConvergenceWarning
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.multiclass import OneVsRestClassifier
from sklearn.pipeline import Pipeline, make_pipeline

# Character n-grams within word boundaries: 1-3 characters covers Hangul syllables and their
# pairs (a Korean word is 2-4 syllables) as well as English subwords. Sublinear tf damps
# repeated characters (ㅋㅋㅋㅋ, !!!!). max_features bounds memory on a large train split.
TFIDF_PARAMS: dict[str, Any] = {"analyzer": "char_wb", "ngram_range": (1, 3), "sublinear_tf": True,
                                "min_df": 2, "max_features": 200_000}
# scikit-learn's defaults (C=1, lbfgs) with room to converge on a few hundred thousand features.
# Balanced class weights: the primary metric is macro F1, and without them a linear model on
# skewed data leans on the frequent classes (on the Korean hate-speech dev set: 0.607 macro F1
# balanced, 0.586 unweighted).
LOGISTIC_PARAMS: dict[str, Any] = {"C": 1.0, "max_iter": 1000, "class_weight": "balanced"}
# Rows the baselines fit on at most: the TF-IDF fit is seconds at this size on one core; a
# larger train split adds little to a linear model and would hold the worker for minutes.
MAX_FIT_ROWS = 50_000

BASELINE_NAMES = ("majority", "tfidf")
DESCRIPTIONS = {
    "majority": "Predicts the label prior of the train split: the most frequent class "
                "(single-label), each label's rate (multi-label).",
    "tfidf": "TF-IDF over character 1-3-grams + logistic regression with balanced class weights "
             "(scikit-learn; one-vs-rest for multi-label), fit on the train split.",
}


@dataclass
class Baseline:
    """One fitted baseline: probabilities per label for each scored split, in label order."""

    name: str
    fit_rows: int = 0
    fit_seconds: float = 0.0
    parameters: int | None = None          # learned numbers, comparable with a model's size
    probabilities: dict[str, np.ndarray] = field(default_factory=dict)
    error: str | None = None               # why it could not be fit (e.g. one class in train)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "description": DESCRIPTIONS[self.name], "fit_rows": self.fit_rows,
                "fit_seconds": round(self.fit_seconds, 3), "parameters": self.parameters,
                "error": self.error}


def targets_matrix(raw: Sequence[Any], num_labels: int, multi_label: bool) -> np.ndarray:
    """Class ids (n,) for single-label; a 0/1 matrix (n, labels) from lists of positive ids."""
    if not multi_label:
        return np.asarray(raw, dtype=np.int64).reshape(-1)
    hot = np.zeros((len(raw), num_labels), dtype=np.int64)
    for row, positives in enumerate(raw):
        hot[row, list(positives or [])] = 1
    return hot


def build_tfidf(multi_label: bool) -> Pipeline:
    """The TF-IDF pipeline, unfitted: the tests fit the same one directly on the same rows."""
    classifier: Any = LogisticRegression(**LOGISTIC_PARAMS)
    if multi_label:
        classifier = OneVsRestClassifier(classifier)
    return make_pipeline(TfidfVectorizer(**TFIDF_PARAMS), classifier)


def fit_baselines(train_texts: Sequence[str], train_targets: np.ndarray, splits: dict[str, Sequence[str]],
                  num_labels: int, multi_label: bool) -> dict[str, Baseline]:
    """Fit both baselines on train and score each split's texts (split name -> texts)."""
    texts, targets = list(train_texts)[:MAX_FIT_ROWS], np.asarray(train_targets)[:MAX_FIT_ROWS]
    return {
        "majority": _fit("majority", DummyClassifier(strategy="prior"), texts, targets, splits,
                         num_labels, multi_label),
        "tfidf": _fit("tfidf", build_tfidf(multi_label), texts, targets, splits, num_labels, multi_label),
    }


def _fit(name: str, estimator: Any, texts: list[str], targets: np.ndarray,
         splits: dict[str, Sequence[str]], num_labels: int, multi_label: bool) -> Baseline:
    baseline = Baseline(name=name, fit_rows=len(texts))
    if not multi_label and len(np.unique(targets)) < 2:
        baseline.error = "the train split has a single class; there is nothing to fit"
        return baseline
    # DummyClassifier ignores X; it only needs one row per text.
    inputs = (lambda rows: np.zeros((len(rows), 1))) if name == "majority" else list
    started = time.perf_counter()
    with warnings.catch_warnings():
        # A label that is never (or always) positive in train gets a constant predictor, with a
        # warning per label; a slow convergence still gives a usable linear model.
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", ConvergenceWarning)
        estimator.fit(inputs(texts), targets)
        baseline.fit_seconds = time.perf_counter() - started
        for split, split_texts in splits.items():
            baseline.probabilities[split] = _probabilities(estimator, inputs(split_texts), num_labels,
                                                           multi_label)
    baseline.parameters = _parameter_count(estimator)
    return baseline


def _probabilities(estimator: Any, inputs: Any, num_labels: int, multi_label: bool) -> np.ndarray:
    """(rows, labels) probabilities in label order, whatever classes the fit saw."""
    raw = estimator.predict_proba(inputs)
    out = np.zeros((len(inputs), num_labels), dtype=np.float64)
    if multi_label and not isinstance(estimator, Pipeline):
        # Multi-output DummyClassifier: one (rows, classes seen) array per label (a bare array
        # and a bare classes_ when there is a single label).
        per_label = raw if isinstance(raw, list) else [raw]
        classes_per_label = estimator.classes_ if isinstance(raw, list) else [estimator.classes_]
        for j, (proba, classes) in enumerate(zip(per_label, classes_per_label, strict=True)):
            seen = list(classes)
            out[:, j] = proba[:, seen.index(1)] if 1 in seen else 0.0
        return out
    if multi_label:
        return np.asarray(raw, dtype=np.float64)  # one-vs-rest: already one column per label
    # Single-label: a class absent from train has no column; it gets probability 0.
    out[:, np.asarray(_classes(estimator), dtype=np.int64)] = raw
    return out


def _classes(estimator: Any) -> np.ndarray:
    return estimator.classes_ if not isinstance(estimator, Pipeline) else estimator[-1].classes_


def _parameter_count(estimator: Any) -> int | None:
    if not isinstance(estimator, Pipeline):
        return None  # the prior: a handful of rates, not a model
    classifier = estimator[-1]
    if isinstance(classifier, OneVsRestClassifier):
        return int(sum(getattr(e, "coef_", np.zeros(0)).size + getattr(e, "intercept_", np.zeros(0)).size
                       for e in classifier.estimators_))
    return int(classifier.coef_.size + classifier.intercept_.size)
