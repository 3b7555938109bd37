"""The ordered label list (the model's id2label) and label names turned into its indices."""

from __future__ import annotations

from app.ingest.errors import IngestError
from app.ingest.extract import Examples
from app.ingest.infer import Plan


def _sort_key(name: str) -> tuple[int, float, str]:
    # Integer labels sort numerically ("2" before "10"); names alphabetically after them.
    try:
        return 0, float(int(name)), ""
    except ValueError:
        return 1, 0.0, name


def label_order(train: Examples, plan: Plan) -> list[str]:
    """0/1 columns keep their column order; otherwise sorted, so re-uploads give the same ids."""
    if plan.task == "chat":
        return []
    if plan.label_shape == "binary_columns":
        labels = list(plan.label_columns)
    else:
        labels = sorted({t for tokens in train.tokens for t in tokens}, key=_sort_key)
    if len(labels) < 2:
        found = f"only {labels[0]!r}" if labels else "none"
        column = ", ".join(repr(c) for c in plan.label_columns)
        raise IngestError(
            f"fewer than two classes: label column {column} has {found} among the accepted training "
            "rows; a classifier needs at least two. Check label_column, or add examples of other classes"
        )
    return labels


def encode(examples: Examples, labels: list[str], shown_name: str) -> tuple[Examples, list[list[int]]]:
    """(the examples whose labels are all known, their label indices); unknown ones are rejected."""
    index = {name: i for i, name in enumerate(labels)}
    kept: list[int] = []
    encoded: list[list[int]] = []
    for position, tokens in enumerate(examples.tokens):
        unknown = [t for t in tokens if t not in index]
        if unknown:
            examples.rejected.append((
                examples.rows[position],
                f"unknown label {unknown[0]!r} in '{shown_name}': the training file's labels are "
                + ", ".join(labels[:20]) + (" ..." if len(labels) > 20 else ""),
            ))
            continue
        kept.append(position)
        encoded.append([index[t] for t in tokens])
    result = examples.keep(kept)
    result.rejected = examples.rejected
    return result, encoded
