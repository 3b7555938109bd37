"""The ordered label list (the model's id2label) and label names turned into its indices."""

from __future__ import annotations

import re
from collections import defaultdict

from app.ingest.errors import IngestError
from app.ingest.extract import Examples
from app.ingest.infer import Plan


def _sort_key(name: str) -> tuple[int, float, str]:
    # Integer labels sort numerically ("2" before "10"); names alphabetically after them.
    try:
        return 0, float(int(name)), ""
    except ValueError:
        return 1, 0.0, name


# A label spelled as a plain decimal number: "2", "2.0", "-1", "0.50", "1e3" (not "inf" or "nan").
_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def merge_numeric_spellings(splits: list[Examples], plan: Plan, warnings: list[str]) -> None:
    """Labels that are one number spelled apart ("1" and "1.0", a spreadsheet's export beside a
    script's) become one class, under the shortest spelling, with a warning naming each merge;
    rewritten in place in every split, so a validation file's "1.0" finds the training "1"."""
    if plan.task == "chat" or plan.label_shape == "binary_columns":
        return  # chat has no labels; 0/1 columns' labels are column names
    spellings: dict[float, set[str]] = defaultdict(set)
    for examples in splits:
        for tokens in examples.tokens:
            for token in tokens:
                if _NUMBER.match(token):
                    spellings[float(token)].add(token)
    renamed: dict[str, str] = {}
    merges: list[str] = []
    for names in spellings.values():
        if len(names) > 1:
            canonical = min(names, key=lambda n: (len(n), n))
            renamed |= {n: canonical for n in names if n != canonical}
            merges.append(" = ".join(repr(n) for n in sorted(names, key=lambda n: (len(n), n))))
    if not renamed:
        return
    for examples in splits:
        examples.tokens = [list(dict.fromkeys(renamed.get(t, t) for t in tokens))
                           for tokens in examples.tokens]
    column = ", ".join(repr(c) for c in plan.label_columns)
    warnings.append(
        f"label column {column} spells one number several ways ({'; '.join(sorted(merges)[:10])}): each is "
        "read as one class, under its shortest spelling. Write each label one way if they were meant apart"
    )


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
