"""POST/GET/DELETE /datasets on the real files in ../shared/data, uploaded naming no column."""

from __future__ import annotations

import csv
from collections import Counter

import pyarrow as pa
import pytest

from tests.app.datasets_support import (
    HATE_SLICE,
    SHARED_DATA,
    csv_bytes,
    dataset_rows,
    files_under,
    stored,
    total_distribution,
    tsv_label_counts,
    upload,
)

needs_shared_data = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="needs ../shared/data")


@needs_shared_data
@pytest.mark.parametrize("filename, rows", [("korean_hate_speech_train.tsv", 7896),
                                            ("korean_hate_speech_dev.tsv", 471)])
def test_korean_hate_speech(client, settings, filename: str, rows: int) -> None:  # type: ignore[no-untyped-def]
    path = SHARED_DATA / filename
    resp = upload(client, path, filename)
    assert resp.status_code == 201, resp.text
    body = resp.json()
    assert (body["task"], body["format"], body["encoding"]) == ("single_label", "tsv", "utf-8")
    assert body["text_column"] == "comments"
    assert body["label_columns"] == ["hate"]
    assert body["labels"] == ["hate", "none", "offensive"]  # sorted: a deterministic id2label
    assert body["num_rows"]["train"] + body["num_rows"]["validation"] == rows
    assert set(body["num_rows"]) == {"train", "validation"}
    assert body["num_rows"]["validation"] == pytest.approx(rows * 0.2, abs=1)
    assert total_distribution(body) == tsv_label_counts(path, "hate")
    for split, count in body["num_rows"].items():
        assert sum(body["label_distribution"][split].values()) == count
    assert body["rejected_rows"] == []
    assert body["name"] == filename
    # Two other columns could be labels: the response says so and how to pick one.
    assert any("'bias'" in w and "label_column=" in w for w in body["warnings"])
    assert body["report"]["inference"]["label_columns"] == "column 'hate' has a usual name for labels"
    assert body["report"]["split"] == {"method": "stratified", "validation_split": 0.2, "seed": 42}
    # Stratified: each class keeps its share in validation to within a row.
    for label, n in total_distribution(body).items():
        assert body["label_distribution"]["validation"][label] == pytest.approx(n * 0.2, abs=1)


@needs_shared_data
def test_sst2_whole_file(client, settings) -> None:  # type: ignore[no-untyped-def]
    path = SHARED_DATA / "sst2_train.tsv"
    resp = upload(client, path, "sst2_train.tsv")
    assert resp.status_code == 201, resp.text
    body = resp.json()
    assert (body["task"], body["text_column"]) == ("single_label", "sentence")
    assert body["label_columns"] == ["label"]
    assert body["labels"] == ["0", "1"]
    assert body["num_rows"] == {"train": 53879, "validation": 13470}
    assert total_distribution(body) == Counter({"1": 37569, "0": 29780})
    assert body["report"]["duplicates"]["count"] == 371
    assert any("371 duplicate" in w for w in body["warnings"])


@needs_shared_data
def test_chatbot_is_chat_from_q_and_a(client, settings) -> None:  # type: ignore[no-untyped-def]
    resp = upload(client, SHARED_DATA / "korean_chatbot_qa.csv", "korean_chatbot_qa.csv")
    assert resp.status_code == 201, resp.text
    body = resp.json()
    assert body["task"] == "chat"
    assert (body["text_column"], body["label_columns"], body["labels"]) == ("Q", [], [])
    assert body["report"]["answer_column"] == "A"
    assert body["num_rows"]["train"] + body["num_rows"]["validation"] == 11823
    assert body["label_distribution"] == {"train": {}, "validation": {}}
    assert any(w.startswith("task inferred as chat") for w in body["warnings"])
    assert any("task=single_label&text_column=Q&label_column=label" in w for w in body["warnings"])
    first = stored(settings, body["id"]).slice(0, 1).to_pylist()[0]
    assert first["messages"][0]["role"] == "user" and first["messages"][0]["content"] == first["text"]
    assert first["messages"][1]["role"] == "assistant"


@needs_shared_data
def test_chatbot_as_classifier_on_q(client, settings) -> None:  # type: ignore[no-untyped-def]
    path = SHARED_DATA / "korean_chatbot_qa.csv"
    resp = upload(client, path, "korean_chatbot_qa.csv", task="single_label", text_column="Q",
                  label_column="label")
    assert resp.status_code == 201, resp.text
    body = resp.json()
    assert (body["task"], body["text_column"], body["label_columns"]) == ("single_label", "Q", ["label"])
    assert body["labels"] == ["0", "1", "2"]  # "2   " trimmed into "2"
    expected = tsv_label_counts(path, "label", delimiter=",")
    assert expected["2"] == 2962 + 1 and sum(expected.values()) == 11823  # + the dirty "2   "
    assert total_distribution(body) == expected
    assert not any(w.startswith("task inferred") for w in body["warnings"])


def test_storage_contract_and_preview(client, settings) -> None:  # type: ignore[no-untyped-def]
    body = upload(client, HATE_SLICE, "hate.tsv").json()
    directory = settings.datasets_dir / body["id"]
    assert sorted(p.name for p in directory.iterdir()) == ["train.parquet", "validation.parquet"]
    train = stored(settings, body["id"])
    assert train.schema.field("row").type == pa.int64()
    assert train.schema.field("text").type == pa.string()
    assert train.schema.field("label").type == pa.int64()
    # Row numbers point back into the file: data row N is line N + 1 (header first).
    with HATE_SLICE.open(encoding="utf-8", newline="") as f:
        records = list(csv.DictReader(f, delimiter="\t"))
    for record in train.slice(0, 20).to_pylist():
        source = records[record["row"] - 1]
        assert record["text"] == source["comments"].strip()
        assert body["labels"][record["label"]] == source["hate"]
    train_rows = set(train.column("row").to_pylist())
    validation_rows = set(stored(settings, body["id"], "validation").column("row").to_pylist())
    assert not train_rows & validation_rows and len(train_rows | validation_rows) == 120
    # uploads never outlive the request.
    assert files_under(settings.uploads_dir) == []

    detail = client.get(f"/datasets/{body['id']}").json()
    assert len(detail["preview"]) == settings.preview_rows
    assert detail["preview"][0]["label"] in body["labels"]
    first = train.slice(0, 1).to_pylist()[0]
    assert detail["preview"][0] == {"row": first["row"], "text": first["text"],
                                    "label": body["labels"][first["label"]]}
    assert {k: v for k, v in detail.items() if k != "preview"} == body


def test_split_is_seeded(client, settings) -> None:  # type: ignore[no-untyped-def]
    a = upload(client, HATE_SLICE, "a.tsv").json()
    b = upload(client, HATE_SLICE, "b.tsv").json()
    c = upload(client, HATE_SLICE, "c.tsv", seed=7, validation_split=0.5).json()
    rows = [stored(settings, d["id"], "validation").column("row").to_pylist() for d in (a, b, c)]
    assert rows[0] == rows[1]
    assert rows[0] != rows[2] and len(rows[2]) == 60
    assert c["report"]["split"] == {"method": "stratified", "validation_split": 0.5, "seed": 7}


def test_reupload_of_identical_content_is_noted(client, settings) -> None:  # type: ignore[no-untyped-def]
    first = upload(client, HATE_SLICE, "hate.tsv").json()
    second = upload(client, HATE_SLICE, "again.tsv", name="second try").json()
    assert second["id"] != first["id"] and second["name"] == "second try"
    assert second["sha256"] == first["sha256"]
    assert any(first["id"] in w and "identical content" in w for w in second["warnings"])
    assert not any("identical content" in w for w in first["warnings"])


def test_list_read_delete(client, settings) -> None:  # type: ignore[no-untyped-def]
    ids = [upload(client, HATE_SLICE, f"{n}.tsv").json()["id"] for n in range(3)]
    listing = client.get("/datasets").json()
    assert listing["count"] == 3
    assert [d["id"] for d in listing["data"]] == ids[::-1]  # newest first
    assert client.get("/datasets", params={"limit": 1}).json()["data"][0]["id"] == ids[2]

    missing = client.get("/datasets/ds_nope")
    assert missing.status_code == 404 and "ds_nope" in missing.json()["detail"]
    assert client.delete("/datasets/ds_nope").status_code == 404

    resp = client.delete(f"/datasets/{ids[0]}")
    assert resp.status_code == 204 and resp.content == b""
    assert not (settings.datasets_dir / ids[0]).exists()
    assert client.get(f"/datasets/{ids[0]}").status_code == 404
    assert dataset_rows(settings) == 2 and client.get("/datasets").json()["count"] == 2


def test_delete_refused_while_a_job_uses_it(client, settings) -> None:  # type: ignore[no-untyped-def]
    from core.db import session_scope
    from core.tables import Job

    dataset_id = upload(client, HATE_SLICE, "hate.tsv").json()["id"]
    with session_scope(settings.database_url) as session:
        session.add(Job(id="job_uses_it", dataset_id=dataset_id, base_model="tiny", task="single_label"))
    resp = client.delete(f"/datasets/{dataset_id}")
    assert resp.status_code == 409
    detail = resp.json()["detail"]
    assert "job_uses_it" in detail and "cancel them" in detail and "wait for them to finish" in detail
    assert (settings.datasets_dir / dataset_id / "train.parquet").is_file()
    assert dataset_rows(settings) == 1


def test_a_dataset_only_finished_jobs_used_is_deleted_and_they_keep_their_history(  # type: ignore[no-untyped-def]
    client, settings
) -> None:
    from core.db import session_scope
    from core.tables import Job, JobEvent

    dataset_id = upload(client, HATE_SLICE, "hate.tsv").json()["id"]
    with session_scope(settings.database_url) as session:
        for job_id, state in (("job_done", "succeeded"), ("job_failed", "failed"), ("job_off", "cancelled")):
            session.add(Job(id=job_id, dataset_id=dataset_id, base_model="tiny", task="single_label",
                            state=state))
            session.flush()
            session.add(JobEvent(job_id=job_id, kind=state, message="ended"))
    assert client.delete(f"/datasets/{dataset_id}").status_code == 204
    assert not (settings.datasets_dir / dataset_id).exists() and dataset_rows(settings) == 0
    done = client.get("/jobs/job_done").json()
    assert done["state"] == "succeeded" and done["dataset_id"] is None
    assert [e["kind"] for e in client.get("/jobs/job_done/events").json()] == ["succeeded"]
    # A job whose data is gone cannot continue: resuming it says so and changes nothing.
    refused = client.post("/jobs/job_failed/resume")
    assert refused.status_code == 409 and "dataset was deleted" in refused.json()["detail"]
    assert client.get("/jobs/job_failed").json()["state"] == "failed"


def test_hostile_file_name_is_reduced_to_its_base_name(client, settings, tmp_path) -> None:  # type: ignore[no-untyped-def]
    data = csv_bytes([["text", "label"]] + [[f"sentence {i}", i % 2] for i in range(10)])
    resp = upload(client, data, "../../x.csv")
    assert resp.status_code == 201, resp.text
    body = resp.json()
    assert body["name"] == "x.csv"
    assert any("'../../x.csv' was reduced to 'x.csv'" in w for w in body["warnings"])
    for base in (settings.uploads_dir, settings.datasets_dir, settings.data_dir, tmp_path):
        assert not (base / "../../x.csv").resolve().exists()
        assert not (base / "x.csv").exists()
    assert sorted(p.name for p in (settings.datasets_dir / body["id"]).iterdir()) == [
        "train.parquet", "validation.parquet"]

