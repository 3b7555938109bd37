"""Turn per-label probabilities into the /predict answer. Pure Python, no torch: the
worker's comparison with the baselines can decode with the very same rules."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

# A multi-label model without a tuned threshold for a label decides at 0.5 (sigmoid midpoint).
DEFAULT_THRESHOLD = 0.5


def _scores(labels: Sequence[str], probs: Sequence[float], top_k: int | None) -> dict[str, float]:
    """All labels in the model's order, or the k best in descending order."""
    pairs = list(zip(labels, (float(p) for p in probs), strict=True))
    if top_k is not None:
        pairs = sorted(pairs, key=lambda pair: pair[1], reverse=True)[:top_k]
    return dict(pairs)


def decode_single_label(
    labels: Sequence[str], probs: Sequence[float], *, top_k: int | None = None
) -> dict[str, Any]:
    """Softmax probabilities → the argmax label and its scores."""
    best = max(range(len(probs)), key=lambda i: probs[i])
    return {"label": labels[best], "scores": _scores(labels, probs, top_k)}


def decode_multi_label(
    labels: Sequence[str],
    probs: Sequence[float],
    *,
    thresholds: Mapping[str, float] | None = None,
    threshold: float | None = None,
    top_k: int | None = None,
) -> dict[str, Any]:
    """Sigmoid probabilities → every label at or above its threshold (the one tuned at
    training time, unless `threshold` overrides them all), in the model's label order."""
    tuned = thresholds or {}
    chosen = [
        name
        for name, p in zip(labels, probs, strict=True)
        if p >= (threshold if threshold is not None else tuned.get(name, DEFAULT_THRESHOLD))
    ]
    return {"labels": chosen, "scores": _scores(labels, probs, top_k)}
