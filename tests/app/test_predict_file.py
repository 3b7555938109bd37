"""POST /predict/file over really trained tiny models: every row of a CSV/TSV/JSONL/Parquet file
comes back with its prediction, through the same batcher as /predict; `?summary=true` scores
the predictions against the file's labels; bad files get the upload path's 422s."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from sklearn.metrics import accuracy_score, f1_score

from app.auth import create_key
from core.db import session_scope
from tests.app.datasets_support import csv_bytes
from tests.conftest import configure
from tests.serving.helpers import (
    TRAINED_LABELS,
    TRAINED_MULTI_LABELS,
    register_model,
    register_trained_model,
    trained_multi_texts,
    trained_texts,
)


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, sqlite_url: str) -> Iterator[Any]:
    """(TestClient, settings) over a migrated SQLite database; chunks of 16 rows, so a file of
    a few dozen rows crosses several chunks (and several batches) of the stream."""
    from fastapi.testclient import TestClient

    from app.main import create_app
    from core.settings import get_settings

    configure(monkeypatch, tmp_path, sqlite_url, predict_max_texts="16", predict_max_batch_size="8")
    with TestClient(create_app()) as client:
        yield client, get_settings()


def _post(client: Any, model_id: str, content: bytes, filename: str = "rows.csv", *,
          params: dict[str, str] | None = None, headers: dict[str, str] | None = None, **form: str) -> Any:
    return client.post("/predict/file", files={"file": (filename, content)}, params=params or {},
                       data={"model_id": model_id, **form}, headers=headers or {})


def _rows(resp: Any) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(resp.text)))


def _leftovers(settings: Any) -> list[Path]:
    return list(settings.uploads_dir.rglob("*")) if settings.uploads_dir.exists() else []


def test_a_labelled_csv_comes_back_row_by_row_with_what_predict_answers(api: Any) -> None:
    client, settings = api
    model_id = register_trained_model(settings)
    pairs = trained_texts(40, seed=7)
    content = csv_bytes([["id", "text", "label"]] + [[f"r{i}", t, lab] for i, (t, lab) in enumerate(pairs)])

    resp = _post(client, model_id, content)
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("text/csv")
    assert resp.headers["x-tuneserve-rows"] == "40"
    assert resp.headers["x-tuneserve-text-column"] == "text"
    rows = _rows(resp)
    # Every input column, in order and unchanged; the file's own `label` column stays the true
    # label, so the prediction is `predicted_label` (the header says so).
    assert list(rows[0]) == ["id", "text", "label", "predicted_label", "predicted_score"]
    assert resp.headers["x-tuneserve-label-column"] == "predicted_label"
    assert [(r["id"], r["text"], r["label"]) for r in rows] == [
        (f"r{i}", t, lab) for i, (t, lab) in enumerate(pairs)]
    # The same answers as /predict for the same texts (one request of 16: the route's limit).
    single = client.post("/predict", json={"model_id": model_id, "texts": [t for t, _ in pairs[:16]]}).json()
    for row, prediction in zip(rows, single["predictions"], strict=False):
        assert row["predicted_label"] == prediction["label"]
        best = prediction["scores"][prediction["label"]]
        assert float(row["predicted_score"]) == pytest.approx(best, abs=1e-5)
    # The model was trained on these words: it knows them.
    assert accuracy_score([r["label"] for r in rows], [r["predicted_label"] for r in rows]) == 1.0
    assert _leftovers(settings) == []


def test_summary_reports_accuracy_f1_and_the_confusion_matrix_of_the_rows(api: Any) -> None:
    client, settings = api
    model_id = register_trained_model(settings)
    pairs = trained_texts(30, seed=3)
    # Two rows the model can only get wrong (its words are the other class's), one with a label
    # the model does not know, one without a label: the figures must count all of that.
    rows = [[t, lab] for t, lab in pairs] + [["the film was awful today", "pos"],
                                             ["the film was great today", "neg"],
                                             ["the film was boring today", "meh"], ["the film was best", ""]]
    content = csv_bytes([["review", "sentiment"]] + rows)
    streamed = _rows(_post(client, model_id, content))
    resp = _post(client, model_id, content, params={"summary": "true"})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert resp.headers["x-tuneserve-rows"] == "34"
    counts = ("rows", "scored_rows", "rows_without_label", "rows_with_unknown_label")
    assert [body[k] for k in counts] == [34, 32, 1, 1]
    assert body["unknown_labels"] == {"meh": 1}
    assert (body["text_column"], body["label_columns"]) == ("review", ["sentiment"])

    scored = [r for r in streamed if r["sentiment"] in TRAINED_LABELS]
    truth, guess = [r["sentiment"] for r in scored], [r["label"] for r in scored]
    metrics = body["metrics"]
    assert metrics["accuracy"] == pytest.approx(accuracy_score(truth, guess))
    assert metrics["accuracy"] == pytest.approx(30 / 32)
    assert metrics["f1_macro"] == pytest.approx(f1_score(truth, guess, average="macro"))
    assert {k: v["support"] for k, v in metrics["per_class"].items()} == {
        "neg": truth.count("neg"), "pos": truth.count("pos")}
    matrix = body["confusion_matrix"]
    assert matrix["labels"] == TRAINED_LABELS
    pairs_seen = list(zip(truth, guess, strict=True))
    expected = [[pairs_seen.count((a, b)) for b in TRAINED_LABELS] for a in TRAINED_LABELS]
    assert matrix["matrix"] == expected and expected[0][1] == 1 and expected[1][0] == 1


def test_tsv_with_a_korean_text_column_jsonl_out_and_rows_without_text(api: Any) -> None:
    client, settings = api
    model_id = register_trained_model(settings)
    pairs = trained_texts(20, seed=11)
    content = csv_bytes([["번호", "문장"]] + [[str(i), t] for i, (t, _) in enumerate(pairs)] + [["20", ""]],
                        delimiter="\t")
    resp = _post(client, model_id, content, "dev.tsv", format="jsonl")
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("application/x-ndjson")
    assert resp.headers["x-tuneserve-text-column"] == "%EB%AC%B8%EC%9E%A5"  # 문장, percent-encoded
    lines = [json.loads(line) for line in resp.text.splitlines()]
    assert len(lines) == 21 == int(resp.headers["x-tuneserve-rows"])
    assert [line["문장"] for line in lines[:20]] == [t for t, _ in pairs]
    assert [line["label"] for line in lines[:20]] == [lab for _, lab in pairs]
    assert all(0.5 <= line["score"] <= 1 for line in lines[:20])
    # A row with no text keeps its place, with no prediction.
    assert lines[20]["번호"] == "20" and lines[20]["label"] is None and lines[20]["score"] is None
    # No label column: there is nothing to score against, and the 422 says how to name one.
    resp = _post(client, model_id, content, "dev.tsv", params={"summary": "true"})
    assert resp.status_code == 422 and "has no label column" in resp.json()["detail"]
    assert "label_column=" in resp.json()["detail"]


def test_parquet_in_with_named_columns(api: Any, tmp_path: Path) -> None:
    client, settings = api
    model_id = register_trained_model(settings)
    pairs = trained_texts(12, seed=5)
    frame = pd.DataFrame({"note": ["a note"] * 12, "body text": [t for t, _ in pairs],
                          "gold": [lab for _, lab in pairs]})
    path = tmp_path / "rows.parquet"
    frame.to_parquet(path)
    resp = _post(client, model_id, path.read_bytes(), "rows.parquet", text_column="body text",
                 label_column="gold")
    assert resp.status_code == 200, resp.text
    rows = _rows(resp)
    assert list(rows[0]) == ["note", "body text", "gold", "label", "score"]
    assert [r["label"] for r in rows] == [r["gold"] for r in rows]
    summary = _post(client, model_id, path.read_bytes(), "rows.parquet", params={"summary": "true"},
                    text_column="body text", label_column="gold").json()
    assert summary["metrics"]["accuracy"] == 1.0
    assert summary["inference"]["label_columns"] == "named by the request"


def test_multi_label_files_get_per_label_scores_and_per_label_matrices(api: Any) -> None:
    client, settings = api
    model_id = register_trained_model(settings, task="multi_label")
    pairs = trained_multi_texts(24, seed=4)
    # One 0/1 column per label, named as the model's labels: found as the labels.
    content = csv_bytes([["text", *TRAINED_MULTI_LABELS]] +
                        [[t, *(int(name in chosen) for name in TRAINED_MULTI_LABELS)] for t, chosen in pairs])
    resp = _post(client, model_id, content)
    assert resp.status_code == 200, resp.text
    rows = _rows(resp)
    assert list(rows[0]) == ["text", *TRAINED_MULTI_LABELS, "label", "score",
                             *(f"score_{name}" for name in TRAINED_MULTI_LABELS)]
    for row in rows:
        probabilities = {name: float(row[f"score_{name}"]) for name in TRAINED_MULTI_LABELS}
        # Tuned thresholds of 0.5: the labels are those at or above it, comma-joined.
        assert row["label"] == ",".join(n for n in TRAINED_MULTI_LABELS if probabilities[n] >= 0.5)
        assert float(row["score"]) == pytest.approx(max(probabilities.values()))

    body = _post(client, model_id, content, params={"summary": "true"}).json()
    assert body["label_columns"] == TRAINED_MULTI_LABELS and body["scored_rows"] == 24
    truth = [[int(row[n]) for n in TRAINED_MULTI_LABELS] for row in rows]
    guess = [[int(n in row["label"].split(",")) for n in TRAINED_MULTI_LABELS] for row in rows]
    f1_micro = f1_score(truth, guess, average="micro", zero_division=0)
    assert body["metrics"]["f1_micro"] == pytest.approx(f1_micro)
    for j, name in enumerate(TRAINED_MULTI_LABELS):
        tp = sum(t[j] and g[j] for t, g in zip(truth, guess, strict=True))
        fn = sum(t[j] and not g[j] for t, g in zip(truth, guess, strict=True))
        assert body["confusion_matrix"]["per_label"][name][1] == [fn, tp]

    lines = [json.loads(line) for line in _post(client, model_id, content, format="jsonl").text.splitlines()]
    assert [line["label"] for line in lines] == [r["label"].split(",") if r["label"] else [] for r in rows]
    assert list(lines[0]["scores"]) == TRAINED_MULTI_LABELS


def test_bad_requests_and_bad_files_get_the_upload_paths_422s_and_leave_nothing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, sqlite_url: str
) -> None:
    from fastapi.testclient import TestClient

    from app.main import create_app
    from core.settings import get_settings

    configure(monkeypatch, tmp_path, sqlite_url, max_upload_mb="1")
    with TestClient(create_app()) as client:
        settings = get_settings()
        model_id = register_model(settings)
        good = csv_bytes([["text"], ["hello"], ["world"]])

        resp = client.post("/predict/file", data={"model_id": model_id})
        assert resp.status_code == 422 and "multipart form field 'file'" in resp.json()["detail"]
        resp = client.post("/predict/file", files={"file": ("a.csv", good)})
        assert resp.status_code == 422 and "no model_id" in resp.json()["detail"]
        resp = _post(client, "mdl_nope", good)
        assert resp.status_code == 404 and resp.json()["detail"] == "model 'mdl_nope' not found"
        resp = _post(client, model_id, good, format="xlsx")
        assert resp.status_code == 422 and "format 'xlsx' is not one of csv, jsonl" in resp.json()["detail"]
        resp = _post(client, model_id, good, text_column="sentence")
        assert resp.status_code == 422
        assert resp.json()["detail"] == ("column 'sentence' named in text_column is not in the file; its "
                                         "columns are: 'text'. Pass one of those (names are case-sensitive)")
        # The very messages a dataset upload of the same bytes gets.
        for name, content in (("empty.csv", b""), ("image.csv", b"\x89PNG\r\n\x1a\n" + b"\x00" * 64),
                              ("numbers.csv", csv_bytes([["a", "b"], ["1", "2"], ["3", "4"]])),
                              ("header.csv", b"text\n")):
            resp = _post(client, model_id, content, name)
            upload = client.post("/datasets", files={"file": (name, content)})
            assert resp.status_code == 422 == upload.status_code, (name, resp.text)
            assert resp.json()["detail"] == upload.json()["detail"], name
        resp = _post(client, model_id, b"text\n" + b"a fine sentence\n" * 80_000)
        assert resp.status_code == 413 and "larger than the limit of 1 MB" in resp.json()["detail"]
        assert _leftovers(settings) == []


@pytest.fixture
def keyed(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, database_url: str) -> Iterator[Any]:
    """The app with TUNESERVE_AUTH=on, keys for alice and bob, and a model of alice's."""
    from fastapi.testclient import TestClient

    from app.main import create_app
    from app.migrate import upgrade_head
    from core.settings import get_settings

    configure(monkeypatch, tmp_path, database_url, auth="on")
    upgrade_head(get_settings().database_url)
    with session_scope() as session:
        (alice_row, alice), (_, bob) = (create_key(session, name=n) for n in ("alice", "bob"))
        alice_id = alice_row.id
    model_id = register_model(get_settings(), tenant_id=alice_id)
    with TestClient(create_app()) as client:
        yield client, model_id, {"Authorization": f"Bearer {alice}"}, {"Authorization": f"Bearer {bob}"}


def test_the_same_keys_and_tenants_as_predict(keyed: Any) -> None:
    client, model_id, alice, bob = keyed
    content = csv_bytes([["text"], ["hello"]])
    resp = _post(client, model_id, content)
    assert resp.status_code == 401 and "a valid API key is required" in resp.json()["detail"]
    resp = _post(client, model_id, content, headers=bob)
    assert resp.status_code == 404 and resp.json()["detail"] == f"model {model_id!r} not found"
    resp = _post(client, model_id, content, headers=alice)
    assert resp.status_code == 200, resp.text
    assert len(_rows(resp)) == 1
