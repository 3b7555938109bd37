"""The validation split: stratified by label and seeded, so every job sees the same rows."""

from __future__ import annotations

from collections import Counter

from app.ingest.errors import IngestError


def stratify_keys(labels: list[list[int]], multi_label: bool) -> list[int] | None:
    """One class per row to stratify on. Multi-label rows use their rarest label (-1: none),
    a common approximation: it keeps rare labels present in both splits."""
    if not labels:
        return None
    if not multi_label:
        return [row[0] for row in labels]
    frequency = Counter(i for row in labels for i in row)
    return [min(row, key=lambda i: (frequency[i], i)) if row else -1 for row in labels]


def split_indices(
    n_rows: int, *, validation_fraction: float, seed: int, keys: list[int] | None, names: list[str]
) -> tuple[list[int], list[int], str | None]:
    """(train positions, validation positions, a warning or None)."""
    from sklearn.model_selection import train_test_split  # heavy import: only when splitting

    if n_rows < 2:
        raise IngestError(
            f"only {n_rows} usable row: a validation split needs at least two. Add rows or upload a "
            "validation_file"
        )
    positions = list(range(n_rows))
    warning = None
    if keys is not None:
        counts = Counter(keys)
        rare = sorted(k for k, c in counts.items() if c < 2)
        if not rare:
            try:
                train, validation = train_test_split(
                    positions, test_size=validation_fraction, random_state=seed, stratify=keys
                )
                return sorted(train), sorted(validation), None
            except ValueError as e:  # e.g. fewer validation rows than classes
                warning = f"validation split is not stratified ({e}); upload a validation_file to control it"
        else:
            warning = (
                "validation split is not stratified: "
                + ", ".join(repr(names[k]) if k >= 0 else "'(no label)'" for k in rare[:10])
                + " ha(s/ve) a single row, which cannot be in both splits; add examples or upload a "
                "validation_file"
            )
    train, validation = train_test_split(positions, test_size=validation_fraction, random_state=seed)
    return sorted(train), sorted(validation), warning
