"""A corpus of malformed dataset files: each one a 4xx whose detail says what to fix, and no row
and no file left behind. Plus the uploads that are accepted but must be flagged or cleaned."""

from __future__ import annotations

import io
import json
import random
from typing import Any

import pandas as pd
import pytest

from tests.app.datasets_support import assert_rejected, upload


def _rows(n: int = 20) -> list[dict[str, str]]:
    return [{"text": f"정말 멋진 공연이었어요 {i}" if i % 2 else f"나쁜 말이에요 {i}",
             "label": "정상" if i % 2 else "욕설"} for i in range(n)]


def _csv(rows: list[dict[str, str]], encoding: str = "utf-8") -> bytes:
    return pd.DataFrame(rows).to_csv(index=False).encode(encoding)


def _parquet() -> bytes:
    buffer = io.BytesIO()
    pd.DataFrame(_rows(200)).to_parquet(buffer)
    return buffer.getvalue()


def _png() -> bytes:
    # A real PNG header and IHDR chunk, then bytes: what a screenshot renamed to .csv starts with.
    return (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x10\x00\x00\x00\x10\x08\x02\x00\x00\x00"
            + bytes(random.Random(1).randrange(256) for _ in range(2000)))


def _mixed_encodings() -> bytes:
    utf8 = _csv(_rows(20))
    cp949 = "".join(f"나쁜 말 {i},욕설\n" for i in range(20)).encode("cp949")
    return utf8 + cp949


CORPUS: dict[str, tuple[str, bytes, str]] = {
    # name: (file name, bytes, phrase the detail must contain)
    "truncated parquet": ("data.parquet", _parquet()[:-300], "starts like Parquet but cannot be read"),
    "mixed encodings": ("data.csv", _mixed_encodings(), "Save it as UTF-8"),
    "undetectable bytes": ("data.csv", b"text,label\n" + bytes(random.Random(0).randrange(128, 256)
                                                               for _ in range(400)) + b",x\n",
                           "no other encoding can be told with confidence"),
    "a line of many megabytes": ("data.csv", b"text,label\n" + b"x" * (3 * 1024 * 1024) + b",a\nshort,b\n",
                                 "line 2 of 'data.csv' is longer than 1024 KB"),
    "an unclosed quote": ("data.csv", b'text,label\n"' + b"y" * (2 * 1024 * 1024) + b",a\n",
                          "a quote left open"),
    "1e5 columns": ("wide.csv", (",".join(f"c{i}" for i in range(100_000)) + "\n"
                                 + ",".join("1" for _ in range(100_000)) + "\n").encode(),
                    "has 100000 columns; the limit is 1000"),
    "NUL bytes": ("data.csv", _csv(_rows())[:40] + b"\x00\x00" + _csv(_rows())[40:], "a NUL byte at byte 40"),
    "a renamed image": ("photo.csv", _png(), "is a PNG image, not a text table"),
    "a renamed workbook": ("book.csv", b"PK\x03\x04" + b"\x14\x00" * 200, "ZIP archive"),
    "UTF-16 text": ("data.csv", _csv(_rows(), "utf-16"), "UTF-16 text"),
    "JSON that is not records": ("data.json", json.dumps({"text": ["a", "b"], "label": [0, 1]}).encode(),
                                 "is a single JSON object (keys 'text', 'label'), not records"),
    "a pretty-printed JSON object": ("data.json", json.dumps({"data": _rows()}, indent=2).encode(),
                                     "is a single JSON object (keys 'data')"),
    "a JSON array of numbers": ("data.json", b"[1, 2, 3]", "not an array of objects"),
    "a JSONL with one broken line": ("data.jsonl", b"\n".join(
        [json.dumps(r, ensure_ascii=False).encode() for r in _rows(10)]
        + [b'{"text": "broken", "label": '] + [json.dumps(r).encode() for r in _rows(5)]),
        "line 11 of 'data.jsonl' is not valid JSON"),
    "a huge JSON cell": ("data.json",
                         json.dumps(_rows(4) + [{"text": "z" * 200_001, "label": "정상"}]).encode(),
                         "holds 200001 characters; the limit is 100000 per cell"),
}


@pytest.mark.parametrize("case", list(CORPUS), ids=list(CORPUS))
def test_each_malformed_file_is_a_4xx_that_says_what_to_fix_and_leaves_nothing(
    client: Any, settings: Any, case: str,
) -> None:
    filename, content, phrase = CORPUS[case]
    assert_rejected(upload(client, content, filename), 422, phrase, settings)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_nan_is_not_a_class_label(client: Any) -> None:
    rows = _rows(20) + [{"text": "no label here", "label": "NaN"}, {"text": "nor here", "label": "nan"}]
    body = upload(client, _csv(rows)).json()
    assert sorted(body["labels"]) == ["욕설", "정상"]
    assert {r["reason"] for r in body["rejected_rows"]} == {"missing label in column 'label'"}
    assert sorted(r["row"] for r in body["rejected_rows"]) == [21, 22]


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_confidently_detected_non_utf8_file_is_read_with_a_warning(client: Any) -> None:
    rows = [{"text": f"café crème déjà vu {i}" if i % 2 else f"naïve façade {i}",
             "label": "pos" if i % 2 else "neg"} for i in range(20)]
    body = upload(client, _csv(rows, "cp1252")).json()
    assert body["encoding"] not in {"utf-8", "cp775"}
    assert any("is not UTF-8; it was read as" in w and "Check the preview" in w for w in body["warnings"])


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_korean_cp949_is_read_without_a_warning(client: Any) -> None:
    body = upload(client, _csv(_rows(20), "cp949")).json()
    assert body["encoding"] == "cp949"
    assert not any("not UTF-8" in w for w in body["warnings"])
    assert sorted(body["labels"]) == ["욕설", "정상"]
