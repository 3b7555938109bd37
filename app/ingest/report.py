"""The validation report: label distribution, imbalance, duplicates, text lengths, rejections.

Figures go into `report`; anything a user should act on also becomes a line in `warnings`.
"""

from __future__ import annotations

from collections import Counter, defaultdict

import numpy as np

# Rows listed in `rejected_rows`; the total is always reported.
MAX_REJECTED_LISTED = 1000
# Largest/smallest class count above which a warning is raised.
IMBALANCE_WARN_RATIO = 5.0
DUPLICATE_EXAMPLES = 5
PERCENTILES = (5, 25, 50, 75, 90, 95, 99)


def distribution(labels: list[list[int]], names: list[str]) -> dict[str, int]:
    """Label name -> rows carrying it (multi-label: rows where it is positive), in label order."""
    counts = Counter(i for row in labels for i in row)
    return {name: counts.get(i, 0) for i, name in enumerate(names)}


def imbalance(train_counts: dict[str, int], warnings: list[str]) -> float | None:
    present = {k: v for k, v in train_counts.items() if v > 0}
    absent = [k for k, v in train_counts.items() if v == 0]
    if absent:
        warnings.append(
            f"label(s) {', '.join(map(repr, absent[:10]))} never occur in the training split: the model "
            "cannot learn them; add positive examples or drop those columns"
        )
    if len(present) < 2:
        return None
    (big, big_n), (small, small_n) = max(present.items(), key=lambda kv: kv[1]), min(
        present.items(), key=lambda kv: kv[1])
    ratio = big_n / small_n
    if ratio > IMBALANCE_WARN_RATIO:
        warnings.append(
            f"classes are imbalanced: {big!r} has {big_n} training rows, {small!r} only {small_n} "
            f"({ratio:.1f}x); consider more {small!r} examples or hyperparameters class_weights=auto"
        )
    return round(ratio, 3)


def duplicates(rows: list[int], texts: list[str], labels: list[list[int]], warnings: list[str],
               what: str) -> dict[str, object]:
    """Texts that occur more than once (kept, not rejected: the user decides)."""
    where: dict[str, list[int]] = defaultdict(list)
    label_sets: dict[str, set[tuple[int, ...]]] = defaultdict(set)
    for position, text in enumerate(texts):
        where[text].append(rows[position])
        if labels:
            label_sets[text].add(tuple(labels[position]))
    repeated = {t: r for t, r in where.items() if len(r) > 1}
    extra_rows = sum(len(r) - 1 for r in repeated.values())
    conflicting = sum(1 for t in repeated if len(label_sets[t]) > 1)
    examples = [{"text": t[:200], "rows": r[:10]} for t, r in list(repeated.items())[:DUPLICATE_EXAMPLES]]
    if extra_rows:
        first = examples[0]
        warnings.append(
            f"{extra_rows} duplicate text row(s) in {what} (e.g. {first['text'][:60]!r} at rows "
            f"{', '.join(map(str, first['rows'][:5]))}); kept as they are"
            + (f"; {conflicting} repeated text(s) carry different labels" if conflicting else "")
            + "; remove duplicates if they are not intended"
        )
    return {"count": extra_rows, "distinct_texts_repeated": len(repeated),
            "conflicting_labels": conflicting, "examples": examples}


def overlap(train_texts: list[str], other_texts: list[str], split: str, warnings: list[str]) -> int:
    """Rows of another split whose text is also in train: they inflate evaluation scores."""
    seen = set(train_texts)
    count = sum(1 for t in other_texts if t in seen)
    if count:
        warnings.append(
            f"{count} {split} row(s) have a text that is also in the training split; evaluation scores "
            "on them are optimistic"
        )
    return count


def text_lengths(texts: list[str]) -> dict[str, float]:
    """Text length in characters: min, mean, percentiles, max (picks max_seq_length)."""
    if not texts:
        return {}
    lengths = np.fromiter((len(t) for t in texts), dtype=np.int64, count=len(texts))
    figures: dict[str, float] = {"min": int(lengths.min()), "mean": round(float(lengths.mean()), 1)}
    for p, value in zip(PERCENTILES, np.percentile(lengths, PERCENTILES), strict=True):
        figures[f"p{p}"] = round(float(value), 1)
    figures["max"] = int(lengths.max())
    return figures


def rejections(rejected: list[tuple[str, int, str]], warnings: list[str]) -> tuple[list[dict[str, object]],
                                                                                  dict[str, int]]:
    """(the rows listed in the response, reason kind -> count). `rejected`: (file, row, reason)."""
    listed = [{"row": row, "reason": reason if source == "file" else f"{source}: {reason}", "file": source}
              for source, row, reason in rejected[:MAX_REJECTED_LISTED]]
    kinds = Counter(_kind(reason) for _, _, reason in rejected)
    if rejected:
        summary = ", ".join(f"{n} {kind}" for kind, n in kinds.most_common())
        listed_note = (f"; the first {MAX_REJECTED_LISTED} are listed in rejected_rows"
                       if len(rejected) > MAX_REJECTED_LISTED else "; see rejected_rows")
        warnings.append(f"{len(rejected)} row(s) rejected ({summary}){listed_note}")
    return listed, dict(kinds)


def _kind(reason: str) -> str:
    for kind in ("empty text", "empty answer", "missing label", "unknown label"):
        if reason.startswith(kind):
            return kind
    return "invalid"
