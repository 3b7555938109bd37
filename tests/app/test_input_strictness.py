"""What a probe found quietly accepted or answered 500, each now a 4xx (or a warning) that names
it, with nothing left behind: nesting depth in uploads and JSON bodies, booleans taken as
numbers, uploads that were misread; and the methods and limits the API states about itself."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from sqlalchemy import func, select

from app.jsondepth import MAX_JSON_DEPTH
from core.db import session_scope
from core.tables import Dataset, Experiment, Job
from tests.app.datasets_support import assert_rejected, upload
from tests.conftest import configure

DEPTH_PHRASE = f"more than {MAX_JSON_DEPTH} levels deep; the limit is {MAX_JSON_DEPTH}"
ROWS = "text,label\n" + "".join(f"good film {i},pos\nbad film {i},neg\n" for i in range(10))


def _rows(table: type) -> int:
    with session_scope() as session:
        return session.scalar(select(func.count()).select_from(table)) or 0


def _parquet(frame: pd.DataFrame) -> bytes:
    buffer = io.BytesIO()
    frame.to_parquet(buffer)
    return buffer.getvalue()


@pytest.mark.parametrize(("filename", "content", "form", "phrase"), [
    ("deep.json", b"[" * 3000 + b"]" * 3000, {}, DEPTH_PHRASE),
    ("deep.jsonl", b'{"text": ' + b"[" * 50_000 + b"]" * 50_000 + b', "label": "a"}\n', {}, DEPTH_PHRASE),
    ("deep_cell.csv", b"messages,label\n" + b"[" * 20_000 + b"]" * 20_000 + b",a\n" * 1, {"task": "chat"},
     "task=chat needs a chat format"),
    ("same.csv", ROWS.encode(), {"text_column": "label", "label_column": "label"},
     "is named as both text_column and label_column"),
    ("ragged.tsv", b"text\tlabel\na\tb\tc\n" + b"".join(f"x{i}\t{'ab'[i % 2]}\n".encode() for i in range(10)),
     {}, "line 2 has 3 fields but the header has 2"),
    ("scalar.json", b"42", {}, "is a single JSON number, not a table"),
    ("structs.parquet", _parquet(pd.DataFrame({"meta": [{"x": i, "y": "z"} for i in range(10)],
                                               "label": ["a", "b"] * 5})),
     {"text_column": "meta", "label_column": "label"}, "column 'meta' named in text_column holds objects"),
])
def test_uploads_that_were_500s_or_quiet_accepts_are_422s(client: Any, settings: Any, filename: str,
                                                          content: bytes, form: dict[str, str],
                                                          phrase: str) -> None:
    assert_rejected(upload(client, content, filename, **form), 422, phrase, settings)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_numeric_labels_spelled_apart_are_one_class_with_a_warning(client: Any) -> None:
    rows = "text,label\n" + "".join(f"text {i},{['1', '1.0', '2.0', '2'][i % 4]}\n" for i in range(20))
    resp = upload(client, rows.encode(), "num.csv")
    assert resp.status_code == 201, resp.text
    body = resp.json()
    assert body["labels"] == ["1", "2"]
    assert sum(body["label_distribution"]["train"].values()) + sum(
        body["label_distribution"]["validation"].values()) == 20
    assert any("'1' = '1.0'" in w and "'2' = '2.0'" in w for w in body["warnings"]), body["warnings"]


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_struct_column_beside_text_is_passed_over_by_inference(client: Any) -> None:
    frame = pd.DataFrame({"meta": [{"x": i} for i in range(10)],
                          "body": [f"a long sentence {i}" for i in range(10)], "label": ["a", "b"] * 5})
    resp = upload(client, _parquet(frame), "s.parquet")
    assert resp.status_code == 201, resp.text
    assert resp.json()["text_column"] == "body"


DEEP = "[" * 3000 + "]" * 3000
JUST_PAST = "[" * (MAX_JSON_DEPTH + 1) + "]" * (MAX_JSON_DEPTH + 1)


@pytest.mark.parametrize(("path", "body"), [
    ("/jobs", '{"dataset_id": "ds_x", "hyperparameters": {"epochs": DEEP}}'),
    ("/jobs", '{"dataset_id": JUST_PAST}'),
    ("/predict", '{"model_id": "m", "texts": DEEP}'),
    ("/generate", '{"model_id": "m", "messages": DEEP}'),
    ("/experiments", '{"dataset_id": "d", "base_models": ["a"], "overrides": {"a": DEEP}}'),
])
def test_json_bodies_nested_past_the_bound_are_422_naming_it(client: Any, path: str, body: str) -> None:
    body = body.replace("JUST_PAST", JUST_PAST).replace("DEEP", DEEP)
    resp = client.post(path, content=body, headers={"content-type": "application/json"})
    assert resp.status_code == 422, resp.text
    assert DEPTH_PHRASE in resp.json()["detail"]
    assert _rows(Job) == 0 and _rows(Experiment) == 0


def test_a_body_at_the_bound_reaches_the_route(client: Any) -> None:
    nested = "[" * (MAX_JSON_DEPTH - 1) + "]" * (MAX_JSON_DEPTH - 1)  # the body object is level 1
    resp = client.post("/jobs", content='{"dataset_id": ' + nested + "}",
                       headers={"content-type": "application/json"})
    assert resp.status_code == 422
    assert resp.json()["detail"][0]["loc"] == ["body", "dataset_id"]  # pydantic's answer, not the bound's


@pytest.mark.parametrize(("body", "loc", "words"), [
    ({"hyperparameters": {"epochs": True}}, ["body", "hyperparameters", "epochs"], "not a boolean"),
    ({"hyperparameters": {"batch_size": "32"}}, ["body", "hyperparameters", "batch_size"], "not a string"),
    ({"hyperparameters": {"max_grad_norm": False}}, ["body", "hyperparameters", "max_grad_norm"],
     "not a boolean"),
    ({"hyperparameters": {"gradient_checkpointing": 1}},
     ["body", "hyperparameters", "gradient_checkpointing"], "must be a JSON boolean"),
])
def test_booleans_are_not_numbers_in_the_job_spec(client: Any, settings: Any, body: dict[str, Any],
                                                  loc: list[str], words: str) -> None:
    dataset = upload(client, ROWS.encode(), "ok.csv").json()["id"]
    resp = client.post("/jobs", json={"dataset_id": dataset, **body})
    assert resp.status_code == 422, resp.text
    issue = resp.json()["detail"][0]
    assert issue["loc"] == loc and words in issue["msg"], issue
    assert _rows(Job) == 0


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_integral_floats_are_still_integers(client: Any) -> None:
    """JSON Schema calls 32.0 an integer, and so do we: strict about types, not spellings."""
    dataset = upload(client, ROWS.encode(), "ok.csv").json()["id"]
    resp = client.post("/jobs", json={"dataset_id": dataset, "hyperparameters": {"batch_size": 32.0,
                                                                                  "epochs": 1}})
    assert resp.status_code == 201, resp.text
    assert resp.json()["hyperparameters"]["batch_size"] == 32


@pytest.mark.parametrize(("path", "body", "field"), [
    ("/predict", {"model_id": "m", "texts": ["a"], "top_k": True}, "top_k"),
    ("/predict", {"model_id": "m", "texts": ["a"], "threshold": True}, "threshold"),
    ("/generate", {"model_id": "m", "messages": [{"role": "user", "content": "hi"}], "stream": "true"},
     "stream"),
    ("/generate", {"model_id": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": False},
     "temperature"),
])
def test_serving_bodies_take_json_types_too(client: Any, path: str, body: dict[str, Any], field: str) -> None:
    resp = client.post(path, json=body)
    assert resp.status_code == 422, resp.text
    assert resp.json()["detail"][0]["loc"] == ["body", field]


@pytest.mark.parametrize(("path", "methods"), [
    ("/jobs", "GET, OPTIONS, POST"),
    ("/jobs/job_x", "DELETE, GET, OPTIONS"),
    ("/models/mdl_x", "DELETE, GET, OPTIONS"),
    ("/predict", "OPTIONS, POST"),
    ("/datasets", "GET, OPTIONS, POST"),
])
def test_options_and_405_list_every_method_of_the_path(client: Any, path: str, methods: str) -> None:
    options = client.options(path)
    assert options.status_code == 204 and options.content == b""
    assert options.headers["allow"] == methods
    refused = client.request("PUT", path)
    assert refused.status_code == 405
    assert refused.headers["allow"] == methods


def test_options_on_an_unknown_path_is_a_404(client: Any) -> None:
    assert client.options("/nowhere").status_code == 404


def test_the_document_states_the_limits_the_routes_enforce(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, sqlite_url: str,
) -> None:
    """From the deployment's settings, not the defaults: a client that follows the document
    is never refused by these checks."""
    from fastapi.testclient import TestClient

    from app.main import create_app

    configure(monkeypatch, tmp_path, sqlite_url, predict_max_texts="7", predict_max_chars="99",
              generate_max_new_tokens="33")
    with TestClient(create_app()) as client:
        schemas = client.get("/openapi.json").json()["components"]["schemas"]
        texts = schemas["PredictRequest"]["properties"]["texts"]
        assert (texts["minItems"], texts["maxItems"], texts["items"]["maxLength"]) == (1, 7, 99)
        assert client.post("/predict", json={"model_id": "m", "texts": ["a"] * 8}).status_code == 422
        tokens = schemas["GenerateRequest"]["properties"]["max_new_tokens"]["anyOf"][0]
        assert tokens["maximum"] == 33
        upload_body = schemas["Body_create_dataset_datasets_post"]
        assert "file" in upload_body["required"]
        rule = schemas["Hyperparameters"]
        assert rule["if"]["properties"]["eval_strategy"] == {"const": "steps"}
        assert rule["then"]["required"] == ["eval_steps"]
        assert schemas["PredictRequest"]["properties"]["texts"]["items"]["pattern"] == "^[^\\u0000]*$"
    assert json.dumps(rule)  # the document stays plain JSON
    assert _rows(Dataset) == 0


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize(("form", "status"), [
    ({"validation_split": "0.25", "seed": "7", "task": " single_label "}, 201),
    ({"validation_split": "2.5e-01", "seed": "4294967295"}, 201),  # str(float) as the CLI sends it
    ({"validation_split": "0.2e0"}, 422), ({"validation_split": "1_0"}, 422),
    ({"seed": "4294967296"}, 422), ({"seed": "1_000"}, 422), ({"task": "\u2003chat"}, 422),
])
def test_upload_form_fields_are_read_as_the_document_states(client: Any, form: dict[str, str],
                                                            status: int) -> None:
    """The route checks the very patterns the document gives, so the two cannot disagree."""
    from app.routes.datasets import SEED_PATTERN, SPLIT_PATTERN, TASK_PATTERN

    fields = client.get("/openapi.json").json()["components"]["schemas"]["Body_create_dataset_datasets_post"]
    assert [fields["properties"][f]["pattern"] for f in ("validation_split", "seed", "task")] == [
        SPLIT_PATTERN, SEED_PATTERN, TASK_PATTERN]
    resp = upload(client, ROWS.encode(), "ok.csv", **form)
    assert resp.status_code == status, resp.text
