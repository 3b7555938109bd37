"""Label names: one number spelled several ways ("1", "1.0") is one class, with a warning."""

from __future__ import annotations

import pandas as pd

from app.ingest.extract import extract
from app.ingest.infer import plan_columns
from app.ingest.labels import label_order, merge_numeric_spellings


def _examples(labels: list[str]):  # type: ignore[no-untyped-def]
    frame = pd.DataFrame({"text": [f"text number {i}" for i in range(len(labels))], "label": labels})
    plan = plan_columns(frame, task=None, text_column="text", label_columns=["label"])
    return plan, extract(frame, plan, "f.csv")


def test_equal_numbers_spelled_apart_are_one_class_under_the_shortest_spelling() -> None:
    plan, train = _examples(["1", "1.0", "2.0", "2", "1.00", "3.5", "3.50"] * 3)
    _, validation = _examples(["1.0", "2.00", "3.5"])
    warnings: list[str] = []
    merge_numeric_spellings([train, validation], plan, warnings)
    assert label_order(train, plan) == ["1", "2", "3.5"]
    assert [t for [t] in validation.tokens] == ["1", "2", "3.5"]
    assert len(warnings) == 1
    assert "'1' = '1.0' = '1.00'" in warnings[0] and "'2' = '2.0' = '2.00'" in warnings[0]
    assert "'3.5' = '3.50'" in warnings[0] and "label column 'label'" in warnings[0]


def test_distinct_numbers_and_names_are_left_alone() -> None:
    plan, train = _examples(["1", "2", "10", "nan-ish", "1e1x"] * 2)
    warnings: list[str] = []
    merge_numeric_spellings([train], plan, warnings)
    assert warnings == []
    assert label_order(train, plan) == ["1", "2", "10", "1e1x", "nan-ish"]


def test_multi_label_cells_merge_within_a_row_too() -> None:
    frame = pd.DataFrame({"text": [f"t {i}" for i in range(6)],
                          "label": ["1,1.0", "2", "2.0,1", "1", "2", "1"]})
    plan = plan_columns(frame, task="multi_label", text_column="text", label_columns=["label"])
    train = extract(frame, plan, "f.csv")
    warnings: list[str] = []
    merge_numeric_spellings([train], plan, warnings)
    assert train.tokens[0] == ["1"] and train.tokens[2] == ["2", "1"]
    assert len(warnings) == 1
