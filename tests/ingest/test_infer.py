"""Column and task inference on small frames: the choices and the reasons given for them."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from app.ingest.errors import IngestError
from app.ingest.extract import Examples
from app.ingest.infer import Plan, plan_columns
from app.ingest.labels import label_order


def frame(**columns: list[object]) -> pd.DataFrame:
    return pd.DataFrame({k: [str(v) for v in vs] for k, vs in columns.items()})


TEXTS = [f"a comment about something, number {i}" for i in range(12)]


def test_a_binary_column_named_like_a_label_among_others_is_multi_label() -> None:
    df = frame(text=TEXTS, hate=[i % 2 for i in range(12)], offensive=[i % 3 == 0 for i in range(12)],
               clean=[int(i % 5 == 0) for i in range(12)])
    plan = plan_columns(df, task=None, text_column=None, label_columns=[])
    assert (plan.task, plan.label_shape) == ("multi_label", "binary_columns")
    assert plan.label_columns == ["hate", "offensive", "clean"]


def test_a_named_label_beside_one_other_flag_is_single_label() -> None:
    df = frame(text=TEXTS, label=[i % 2 for i in range(12)], is_duplicate=[0] * 11 + [1])
    plan = plan_columns(df, task=None, text_column=None, label_columns=[])
    assert (plan.task, plan.label_columns) == ("single_label", ["label"])
    assert any("'is_duplicate' could also be labels" in w for w in plan.warnings)


def test_naming_a_column_turns_off_chat_inference() -> None:
    df = frame(Q=TEXTS, A=[t.upper() for t in TEXTS], label=[i % 3 for i in range(12)])
    assert plan_columns(df, task=None, text_column=None, label_columns=[]).task == "chat"
    plan = plan_columns(df, task=None, text_column="Q", label_columns=[])
    assert (plan.task, plan.text_column, plan.label_columns) == ("single_label", "Q", ["label"])


def test_messages_as_json_text_in_a_csv_cell() -> None:
    turns = json.dumps([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}])
    df = frame(conversation=[turns] * 4, id=[1, 2, 3, 4])
    plan = plan_columns(df, task=None, text_column=None, label_columns=[])
    assert (plan.task, plan.messages_column) == ("chat", "conversation")


def test_chat_with_labels_is_refused() -> None:
    df = frame(Q=TEXTS, A=TEXTS, label=[i % 2 for i in range(12)])
    with pytest.raises(IngestError, match="chat datasets have no labels"):
        plan_columns(df, task="chat", text_column=None, label_columns=["label"])


def test_label_order_is_numeric_then_alphabetical() -> None:
    examples = Examples(rows=[1, 2, 3, 4], texts=["a"] * 4, tokens=[["10"], ["2"], ["b"], ["a"]])
    assert label_order(examples, Plan("single_label", "text", ["label"])) == ["2", "10", "a", "b"]


def test_one_column_named_as_both_text_and_label_is_refused() -> None:
    df = frame(text=TEXTS, label=["a", "b"] * 6)
    with pytest.raises(IngestError) as caught:
        plan_columns(df, task=None, text_column="label", label_columns=["label"])
    assert "column 'label' is named as both text_column and label_column" in str(caught.value)


def test_a_column_of_objects_is_never_text() -> None:
    df = pd.DataFrame({"meta": [{"x": i, "y": "z"} for i in range(12)], "body": TEXTS,
                       "label": ["a", "b"] * 6})
    with pytest.raises(IngestError) as caught:
        plan_columns(df, task=None, text_column="meta", label_columns=["label"])
    assert "column 'meta' named in text_column holds objects" in str(caught.value)
    plan = plan_columns(df, task=None, text_column=None, label_columns=["label"])
    assert plan.text_column == "body"  # inference passes over it


def test_a_column_of_lists_is_not_text_nor_objects_a_label() -> None:
    df = pd.DataFrame({"tokens": [["a", "b"]] * 12, "text": TEXTS, "meta": [{"k": 1}] * 12})
    with pytest.raises(IngestError, match="column 'tokens' named in text_column holds lists"):
        plan_columns(df, task=None, text_column="tokens", label_columns=[])
    with pytest.raises(IngestError, match="column 'meta' named in label_column holds objects"):
        plan_columns(df, task=None, text_column="text", label_columns=["meta"])
