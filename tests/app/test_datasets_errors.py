"""Every bad upload gets a 4xx whose detail says what is wrong and how to fix it, and leaves
no SQL row and no file behind (neither in the uploads dir nor in the datasets dir)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from tests.app.datasets_support import HATE_SLICE, assert_nothing_left, assert_rejected, csv_bytes, upload
from tests.conftest import configure

GOOD = csv_bytes([["text", "label"]] + [[f"sentence {i}", i % 2] for i in range(10)])


def test_empty_file(client, settings) -> None:  # type: ignore[no-untyped-def]
    detail = assert_rejected(upload(client, b"", "empty.csv"), 422, "'empty.csv' is empty", settings)
    assert "header row" in detail


def test_header_only(client, settings) -> None:  # type: ignore[no-untyped-def]
    assert_rejected(upload(client, b"text,label\n", "head.csv"), 422, "has no data rows", settings)


def test_undecodable_bytes(client, settings) -> None:  # type: ignore[no-untyped-def]
    rng = random.Random(0)
    noise = bytes(rng.randrange(256) for _ in range(4096))
    detail = assert_rejected(upload(client, noise, "noise.csv"), 422, "not a text table", settings)
    assert "CSV UTF-8" in detail


def test_unparseable_csv(client, settings) -> None:  # type: ignore[no-untyped-def]
    data = b"text,label\nfine,1\ntoo,many,fields,here\n"
    detail = assert_rejected(upload(client, data, "bad.csv"), 422, "'bad.csv' is not valid CSV", settings)
    assert "line 3" in detail and "as many fields as the header" in detail


def test_broken_json_array(client, settings) -> None:  # type: ignore[no-untyped-def]
    detail = assert_rejected(upload(client, b'[{"text": "a", "label": 1},\n{"text": ', "bad.json"), 422,
                             "'bad.json' is not valid JSON", settings)
    assert "line 2" in detail and "array of objects" in detail


def test_json_that_is_not_records(client, settings) -> None:  # type: ignore[no-untyped-def]
    assert_rejected(upload(client, b"[1, 2, 3]", "nums.json"), 422, "not an array of objects", settings)


def test_broken_jsonl_line_is_named(client, settings) -> None:  # type: ignore[no-untyped-def]
    lines = [json.dumps({"text": f"t{i}", "label": i % 2}) for i in range(5)]
    lines[3] = '{"text": "oops", "label": 1'
    detail = assert_rejected(upload(client, "\n".join(lines).encode(), "data.jsonl"), 422,
                             "line 4 of 'data.jsonl' is not valid JSON", settings)
    assert "fix or remove that line" in detail


@pytest.mark.parametrize("field", ["text_column", "label_column"])
def test_named_column_absent(client, settings, field: str) -> None:  # type: ignore[no-untyped-def]
    resp = upload(client, GOOD, "good.csv", **{field: "nope"})
    detail = assert_rejected(resp, 422, f"column 'nope' named in {field} is not in the file", settings)
    assert "its columns are: 'text', 'label'" in detail


def test_one_of_several_label_columns_absent(client, settings) -> None:  # type: ignore[no-untyped-def]
    assert_rejected(upload(client, GOOD, "good.csv", label_column="label, missing"), 422,
                    "column 'missing' named in label_column", settings)


def test_no_usable_text_column(client, settings) -> None:  # type: ignore[no-untyped-def]
    data = csv_bytes([["id", "label"]] + [[i, i % 2] for i in range(10)])
    detail = assert_rejected(upload(client, data, "numbers.csv"), 422, "no usable text column", settings)
    assert "text_column=" in detail and "'id', 'label'" in detail


def test_no_label_column(client, settings) -> None:  # type: ignore[no-untyped-def]
    data = csv_bytes([["text"]] + [[f"only text {i}"] for i in range(10)])
    detail = assert_rejected(upload(client, data, "text.csv"), 422, "no label column found", settings)
    assert "label_column=" in detail


def test_fewer_than_two_classes(client, settings) -> None:  # type: ignore[no-untyped-def]
    data = csv_bytes([["text", "label"]] + [[f"same {i}", "pos"] for i in range(10)])
    detail = assert_rejected(upload(client, data, "one.csv"), 422, "fewer than two classes", settings)
    assert "only 'pos'" in detail and "at least two" in detail


def test_every_row_rejected(client, settings) -> None:  # type: ignore[no-untyped-def]
    data = csv_bytes([["text", "label"]] + [[f"no label {i}", ""] for i in range(10)])
    detail = assert_rejected(upload(client, data, "nolabels.csv", label_column="label"), 422,
                             "no usable rows in 'nolabels.csv'", settings)
    assert "row 1: missing label" in detail


def test_validation_file_without_the_columns(client, settings) -> None:  # type: ignore[no-untyped-def]
    other = csv_bytes([["sentence", "y"], ["a", 1], ["b", 0]])
    resp = upload(client, GOOD, "good.csv", extra_files={"validation_file": ("dev.csv", other)})
    assert_rejected(resp, 422, "'dev.csv' lacks column(s) 'text', 'label'", settings)


def test_chat_task_without_chat_columns(client, settings) -> None:  # type: ignore[no-untyped-def]
    assert_rejected(upload(client, GOOD, "good.csv", task="chat"), 422,
                    "task=chat needs a chat format: OpenAI", settings)


def test_single_label_with_several_columns(client, settings) -> None:  # type: ignore[no-untyped-def]
    data = csv_bytes([["text", "a", "b"]] + [[f"t {i}", i % 2, 1 - i % 2] for i in range(10)])
    assert_rejected(upload(client, data, "ab.csv", task="single_label", label_column="a,b"), 422,
                    "use task=multi_label", settings)


@pytest.mark.parametrize("form, phrase", [
    ({"task": "regression"}, "task 'regression' is not one of single_label, multi_label, chat"),
    ({"validation_split": "0"}, "validation_split must be a number between 0 and 1"),
    ({"validation_split": "1.5"}, "got '1.5'"),
    ({"validation_split": "a fifth"}, "got 'a fifth'"),
    ({"seed": "lucky"}, "seed must be an integer"),
])
def test_bad_form_values(client, settings, form: dict[str, str], phrase: str) -> None:  # type: ignore[no-untyped-def]
    assert_rejected(upload(client, GOOD, "good.csv", **form), 422, phrase, settings)


def test_missing_file_field(client, settings) -> None:  # type: ignore[no-untyped-def]
    resp = client.post("/datasets", data={"name": "nothing"})
    assert_rejected(resp, 422, "send the file as the multipart form field 'file'", settings)


def _limited_client(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, database_url: str):  # type: ignore[no-untyped-def]
    configure(monkeypatch, tmp_path, database_url, max_upload_mb="1")
    from fastapi.testclient import TestClient

    from app.main import create_app
    from core.settings import get_settings

    return TestClient(create_app()), get_settings()


def test_file_over_the_limit(monkeypatch, tmp_path, database_url) -> None:  # type: ignore[no-untyped-def]
    client, settings = _limited_client(monkeypatch, tmp_path, database_url)
    with client:
        # Just past 1 MB: within the body allowance for form overhead, so the file copy stops it.
        body = GOOD + b"".join(f"padding sentence {i},1\n".encode() for i in range(60_000))
        assert 1024 * 1024 < len(body) < 2 * 1024 * 1024
        detail = assert_rejected(upload(client, body, "big.csv"), 413, "limit of 1 MB", settings)
        assert "TUNESERVE_MAX_UPLOAD_MB" in detail
        # Far past it: refused from Content-Length, before the body is read.
        huge = body * 3
        assert_rejected(upload(client, huge, "huge.csv"), 413, "limit of 1 MB", settings)
        # Two files together past the limit.
        half = body[: 700 * 1024]
        resp = upload(client, half, "a.csv", extra_files={"validation_file": ("b.csv", half)})
        assert_rejected(resp, 413, "all files of one request together", settings)
        # And an upload under the limit still works.
        assert upload(client, HATE_SLICE, "ok.tsv").status_code == 201


def test_failure_after_ingest_removes_the_files(client, settings, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from app.crud import datasets as crud

    def broken(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise RuntimeError("database went away")

    monkeypatch.setattr(crud, "create_dataset", broken)
    with pytest.raises(RuntimeError):
        upload(client, GOOD, "good.csv")
    assert_nothing_left(settings)
