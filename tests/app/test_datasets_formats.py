"""Encodings, formats, multi-label shapes, chat, explicit splits and the validation report."""

from __future__ import annotations

import csv
import io
import json
from collections import Counter

import pandas as pd
import pyarrow as pa
import pytest

from tests.app.datasets_support import (
    CHATBOT_SLICE,
    HATE_DEV_SLICE,
    HATE_SLICE,
    UNSMILE_COLUMNS,
    csv_bytes,
    stored,
    total_distribution,
    tsv_label_counts,
    upload,
)


@pytest.mark.parametrize("codec", ["cp949", "euc-kr"])
def test_korean_legacy_encodings(client, settings, codec: str) -> None:  # type: ignore[no-untyped-def]
    resp = upload(client, HATE_SLICE.read_text(encoding="utf-8").encode(codec), f"hate_{codec}.tsv")
    assert resp.status_code == 201, resp.text
    body = resp.json()
    # The slice has syllables outside KS X 1001, which the two encodings spell differently.
    assert body["encoding"] == codec
    assert (body["text_column"], body["label_columns"]) == ("comments", ["hate"])
    assert total_distribution(body) == tsv_label_counts(HATE_SLICE, "hate")
    with HATE_SLICE.open(encoding="utf-8", newline="") as f:
        originals = {r["comments"].strip() for r in csv.DictReader(f, delimiter="\t")}
    texts = stored(settings, body["id"]).column("text").to_pylist()
    texts += stored(settings, body["id"], "validation").column("text").to_pylist()
    assert set(texts) == originals  # every character decoded as written


def test_cp949_chatbot_classifier_override(client, settings) -> None:  # type: ignore[no-untyped-def]
    data = CHATBOT_SLICE.read_text(encoding="utf-8").encode("cp949")
    resp = upload(client, data, "chatbot.csv", task="single_label", text_column="Q", label_column="label")
    assert resp.status_code == 201, resp.text
    body = resp.json()
    assert (body["encoding"], body["format"], body["labels"]) == ("cp949", "csv", ["0", "1", "2"])
    assert total_distribution(body) == Counter({"0": 40, "1": 20, "2": 20})


def test_utf8_bom(client, settings) -> None:  # type: ignore[no-untyped-def]
    rows = [["text", "label"]] + [[f"좋은 문장 {i}", "긍정" if i % 2 else "부정"] for i in range(20)]
    resp = upload(client, b"\xef\xbb\xbf" + csv_bytes(rows), "bom.csv")
    assert resp.status_code == 201, resp.text
    body = resp.json()
    assert body["encoding"] == "utf-8-sig"
    assert body["text_column"] == "text"  # the BOM did not become part of the header
    assert body["labels"] == ["긍정", "부정"]


def test_json_array_with_integer_labels(client, settings) -> None:  # type: ignore[no-untyped-def]
    records = [{"review": f"movie {i} was {'great' if i % 3 else 'bad'}", "rating": i % 3, "id": i}
               for i in range(30)]
    resp = upload(client, json.dumps(records).encode(), "reviews.json")
    assert resp.status_code == 201, resp.text
    body = resp.json()
    assert (body["format"], body["task"], body["text_column"]) == ("json", "single_label", "review")
    assert body["label_columns"] == ["rating"] and body["labels"] == ["0", "1", "2"]
    assert total_distribution(body) == Counter({"0": 10, "1": 10, "2": 10})


def test_integer_labels_sort_numerically(client, settings) -> None:  # type: ignore[no-untyped-def]
    rows = [["text", "label"]] + [[f"text number {i}", [10, 2, 1][i % 3]] for i in range(30)]
    body = upload(client, csv_bytes(rows), "ints.csv").json()
    assert body["labels"] == ["1", "2", "10"]


def test_jsonl_chat_messages(client, settings) -> None:  # type: ignore[no-untyped-def]
    lines = []
    for i in range(12):
        messages = [{"role": "user", "content": f"질문 {i}"}, {"role": "assistant", "content": f"답변 {i}"}]
        if i % 2:
            messages.insert(0, {"role": "system", "content": "친절하게 답하세요"})
        lines.append(json.dumps({"messages": messages}, ensure_ascii=False))
    lines.append(json.dumps({"messages": [{"role": "user", "content": "혼자"}]}))  # no assistant turn
    robot = [{"role": "robot", "content": "x"}, {"role": "user", "content": "y"}]
    lines.append(json.dumps({"messages": robot}))
    twice = [{"role": "user", "content": "a"}, {"role": "user", "content": "b"},
             {"role": "assistant", "content": "c"}]
    lines.append(json.dumps({"messages": twice}))
    late_system = [{"role": "user", "content": "a"}, {"role": "system", "content": "b"},
                   {"role": "assistant", "content": "c"}]
    lines.append(json.dumps({"messages": late_system}))
    empty = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "  "}]
    lines.append(json.dumps({"messages": empty}))
    starts_with_answer = [{"role": "assistant", "content": "a"}, {"role": "user", "content": "b"},
                          {"role": "assistant", "content": "c"}]
    lines.append(json.dumps({"messages": starts_with_answer}))
    resp = upload(client, ("\n".join(lines) + "\n").encode(), "chat.jsonl")
    assert resp.status_code == 201, resp.text
    body = resp.json()
    assert (body["format"], body["task"]) == ("jsonl", "chat")
    assert (body["text_column"], body["labels"]) == ("messages", [])
    assert body["num_rows"] == {"train": 9, "validation": 3}
    reasons = {r["row"]: r["reason"] for r in body["rejected_rows"]}
    assert reasons == {13: "the last turn must be the assistant's (the answer to learn)",
                       14: "message role 'robot' is not system, user or assistant",
                       15: "turn 2 is user where assistant was expected: roles must alternate",
                       16: "a system message may only come first",
                       17: "the assistant message 2 is empty",
                       18: "the conversation must start with a user turn (after an optional system turn)"}
    table = pa.concat_tables([stored(settings, body["id"]), stored(settings, body["id"], "validation")])
    assert table.schema.field("messages").type == pa.list_(
        pa.struct([("role", pa.string()), ("content", pa.string()), ("weight", pa.int64())]))
    assert "label" not in table.schema.names
    by_row = {r["row"]: r for r in table.to_pylist()}
    assert by_row[2]["messages"][0] == {"role": "system", "content": "친절하게 답하세요", "weight": None}
    assert by_row[2]["text"] == "질문 1"  # the first user message
    detail = client.get(f"/datasets/{body['id']}").json()
    assert detail["preview"][0]["messages"][-1]["role"] == "assistant"


def _jsonl(records: list[dict[str, object]]) -> bytes:
    return ("\n".join(json.dumps(r, ensure_ascii=False) for r in records) + "\n").encode()


def _all_rows(settings, body):  # type: ignore[no-untyped-def]
    table = pa.concat_tables([stored(settings, body["id"]), stored(settings, body["id"], "validation")])
    return {r["row"]: r for r in table.to_pylist()}


def test_openai_messages_keep_their_weights_and_bad_weights_are_rejected(client, settings) -> None:  # type: ignore[no-untyped-def]
    records: list[dict[str, object]] = []
    for i in range(10):
        records.append({"messages": [
            {"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"draft {i}", "weight": 0},
            {"role": "user", "content": "again"}, {"role": "assistant", "content": f"a{i}", "weight": 1}]})
    records.append({"messages": [{"role": "user", "content": "q"},
                                 {"role": "assistant", "content": "a", "weight": 0.5}]})
    records.append({"messages": [{"role": "user", "content": "q", "weight": 1},
                                 {"role": "assistant", "content": "a"}]})
    records.append({"messages": [{"role": "user", "content": "q"},
                                 {"role": "assistant", "content": "a", "weight": 0}]})
    records.append({"prompt": "not a chat row"})
    resp = upload(client, _jsonl(records), "weighted.jsonl")
    assert resp.status_code == 201, resp.text
    body = resp.json()
    assert body["task"] == "chat" and body["report"]["chat_format"] == "openai"
    assert sum(body["num_rows"].values()) == 10
    reasons = {r["row"]: r["reason"] for r in body["rejected_rows"]}
    assert reasons[11] == "the assistant message 2 has weight 0.5: a weight is 0 or 1"
    assert reasons[12] == "message 1 (user) has a weight: only assistant messages take one"
    assert reasons[13].startswith("every assistant message has weight 0")
    assert reasons[14].startswith("no 'messages' in this row: it is in none of the chat formats: OpenAI")
    row = _all_rows(settings, body)[1]
    assert [m["weight"] for m in row["messages"]] == [None, 0, None, 1]


def test_sharegpt_conversations_with_a_system_column(client, settings) -> None:  # type: ignore[no-untyped-def]
    records: list[dict[str, object]] = [
        {"conversations": [{"from": "human", "value": f"질문 {i}"}, {"from": "gpt", "value": f"답변 {i}"}],
         "system": "친절하게" if i == 0 else ""} for i in range(9)]
    records.append({"conversations": [{"from": "user", "value": "u"}, {"from": "assistant", "value": "a"}],
                    "system": ""})
    records.append({"conversations": [{"from": "human", "value": "u"}, {"from": "human", "value": "u"}],
                    "system": ""})
    resp = upload(client, _jsonl(records), "sharegpt.jsonl")
    assert resp.status_code == 201, resp.text
    body = resp.json()
    assert body["report"]["chat_format"] == "sharegpt" and "sharegpt" in body["report"]["inference"]["task"]
    assert sum(body["num_rows"].values()) == 10
    assert [r["row"] for r in body["rejected_rows"]] == [11]
    rows = _all_rows(settings, body)
    assert [(m["role"], m["content"]) for m in rows[1]["messages"]] == [
        ("system", "친절하게"), ("user", "질문 0"), ("assistant", "답변 0")]
    assert [m["role"] for m in rows[10]["messages"]] == ["user", "assistant"]


def test_alpaca_keeps_instruction_and_input_as_the_user_turn(client, settings) -> None:  # type: ignore[no-untyped-def]
    records: list[dict[str, object]] = [
        {"instruction": "번역해", "input": "hello" if i % 2 == 0 else "", "output": f"안녕 {i}",
         "system": "번역가입니다" if i == 1 else ""} for i in range(10)]
    records.append({"instruction": "", "input": "x", "output": "y", "system": ""})
    resp = upload(client, _jsonl(records), "alpaca.jsonl")
    assert resp.status_code == 201, resp.text
    body = resp.json()
    assert body["task"] == "chat" and body["report"]["chat_format"] == "alpaca"
    assert [r["row"] for r in body["rejected_rows"]] == [11]
    assert "none of the chat formats" in body["rejected_rows"][0]["reason"]
    rows = _all_rows(settings, body)
    assert [(m["role"], m["content"]) for m in rows[1]["messages"]] == [
        ("user", "번역해\nhello"), ("assistant", "안녕 0")]
    assert [(m["role"], m["content"]) for m in rows[2]["messages"]] == [
        ("system", "번역가입니다"), ("user", "번역해"), ("assistant", "안녕 1")]


def _parquet(frame: pd.DataFrame) -> bytes:
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    return buffer.getvalue()


def test_parquet_sniffed_despite_its_name(client, settings) -> None:  # type: ignore[no-untyped-def]
    frame = pd.DataFrame({"sentence": [f"a sentence {i}" for i in range(20)],
                          "label": [i % 2 for i in range(20)]})
    resp = upload(client, _parquet(frame), "upload.csv")
    assert resp.status_code == 201, resp.text
    body = resp.json()
    assert (body["format"], body["text_column"], body["labels"]) == ("parquet", "sentence", ["0", "1"])
    assert any("named like csv but its content is parquet" in w for w in body["warnings"])


def test_parquet_list_labels_are_multi_label(client, settings) -> None:  # type: ignore[no-untyped-def]
    tags = [["joy"], ["joy", "surprise"], ["anger"], ["surprise"]]
    frame = pd.DataFrame({"text": [f"feeling {i}" for i in range(20)],
                          "emotions": [tags[i % 4] for i in range(20)]})
    body = upload(client, _parquet(frame), "emotions.parquet").json()
    assert (body["task"], body["label_columns"]) == ("multi_label", ["emotions"])
    assert body["labels"] == ["anger", "joy", "surprise"]
    assert total_distribution(body) == Counter({"joy": 10, "surprise": 10, "anger": 5})


def test_comma_separated_multi_label_column(client, settings) -> None:  # type: ignore[no-untyped-def]
    tags = ["joy,surprise", "joy", " anger , joy ", "surprise", "sadness"]
    rows = [["text", "emotion"]] + [[f"오늘의 기분 {i}", tags[i % 5]] for i in range(25)] + [["빈 라벨", ""]]
    resp = upload(client, csv_bytes(rows), "emotions.csv")
    assert resp.status_code == 201, resp.text
    body = resp.json()
    assert (body["task"], body["text_column"], body["label_columns"]) == ("multi_label", "text", ["emotion"])
    assert body["labels"] == ["anger", "joy", "sadness", "surprise"]
    assert total_distribution(body) == Counter({"joy": 15, "surprise": 10, "anger": 5, "sadness": 5})
    assert any("task inferred as multi_label" in w for w in body["warnings"])
    assert body["rejected_rows"] == [
        {"row": 26, "reason": "missing label in column 'emotion'", "file": "file"}]
    train = stored(settings, body["id"])
    assert train.schema.field("label").type == pa.list_(pa.int64())
    by_row = {r["row"]: r["label"] for r in train.to_pylist()}
    row = next(r for r in by_row if (r - 1) % 5 == 0)
    assert by_row[row] == [1, 3]  # joy, surprise


def test_unsmile_style_binary_columns_with_korean_names(client, settings) -> None:  # type: ignore[no-untyped-def]
    rows: list[list[object]] = [["문장", *UNSMILE_COLUMNS]]
    for i in range(44):
        flags = [0] * len(UNSMILE_COLUMNS)
        flags[i % len(UNSMILE_COLUMNS)] = 1
        if i % 4 == 0:
            flags[UNSMILE_COLUMNS.index("악플/욕설")] = 1
        rows.append([f"댓글 내용 {i}번", *flags])
    rows.append(["이상한 값", *(["2"] + ["0"] * (len(UNSMILE_COLUMNS) - 1))])
    resp = upload(client, csv_bytes(rows, delimiter="\t"), "unsmile.tsv")
    assert resp.status_code == 201, resp.text
    body = resp.json()
    assert (body["task"], body["text_column"]) == ("multi_label", "문장")
    assert body["label_columns"] == UNSMILE_COLUMNS and body["labels"] == UNSMILE_COLUMNS  # file order
    expected = Counter(dict.fromkeys(UNSMILE_COLUMNS, 4)) + Counter({"악플/욕설": 11 - 1})
    assert total_distribution(body) == expected
    assert body["rejected_rows"] == [{"row": 45, "file": "file",
                                     "reason": "column '여성/가족' has '2' where 0 or 1 is expected"}]
    # Naming the columns gives the same result.
    named = upload(client, csv_bytes(rows, delimiter="\t"), "unsmile.tsv",
                   label_column=",".join(UNSMILE_COLUMNS)).json()
    assert named["labels"] == UNSMILE_COLUMNS and named["label_distribution"] == body["label_distribution"]


def test_explicit_validation_and_test_files(client, settings) -> None:  # type: ignore[no-untyped-def]
    dev_lines = HATE_DEV_SLICE.read_text(encoding="utf-8").splitlines()
    test_lines = [dev_lines[0]] + dev_lines[21:] + ["새로운 라벨 문장\tFalse\tnone\tsevere"]
    resp = upload(
        client, HATE_SLICE, "train.tsv",
        extra_files={"validation_file": ("dev.tsv", "\n".join(dev_lines[:21]).encode("cp949")),
                     "test_file": ("test.tsv", "\n".join(test_lines).encode())},
    )
    assert resp.status_code == 201, resp.text
    body = resp.json()
    assert body["num_rows"] == {"train": 120, "validation": 20, "test": 20}
    assert body["report"]["split"] == {"method": "validation_file"}
    assert body["report"]["files"]["validation"]["encoding"] == "cp949"
    assert not any("validation_split was ignored" in w for w in body["warnings"])
    assert body["rejected_rows"] == [{
        "row": 21, "file": "test_file",
        "reason": "test_file: unknown label 'severe' in 'test.tsv': the training file's labels are "
                  "hate, none, offensive"}]
    assert any("1 row(s) rejected (1 unknown label)" in w for w in body["warnings"])
    assert sorted(p.name for p in (settings.datasets_dir / body["id"]).iterdir()) == [
        "test.parquet", "train.parquet", "validation.parquet"]
    assert stored(settings, body["id"], "test").num_rows == 20


def test_report_rejections_duplicates_imbalance_lengths(client, settings) -> None:  # type: ignore[no-untyped-def]
    rows = [["text", "label"]] + [[f"common sentence {i}", "common"] for i in range(24)]
    rows += [["rare one", "rare"], ["rare two", "rare"], ["common sentence 0", "common"]]
    rows += [["", "common"], ["   ", "rare"], ["no label here", ""]]
    body = upload(client, csv_bytes(rows), "report.csv").json()
    assert body["labels"] == ["common", "rare"]
    assert body["num_rows"]["train"] + body["num_rows"]["validation"] == 27
    assert [(r["row"], r["reason"]) for r in body["rejected_rows"]] == [
        (28, "empty text in column 'text'"), (29, "empty text in column 'text'"),
        (30, "missing label in column 'label'")]
    report = body["report"]
    assert report["rejected_total"] == 3
    assert report["rejected_by_reason"] == {"empty text": 2, "missing label": 1}
    assert report["duplicates"]["count"] == 1
    assert report["duplicates"]["examples"] == [{"text": "common sentence 0", "rows": [1, 27]}]
    train = body["label_distribution"]["train"]
    assert report["imbalance_ratio"] == round(train["common"] / train["rare"], 3) > 5
    assert any(f"'common' has {train['common']} training rows, 'rare' only {train['rare']}" in w
               and "class_weights=auto" in w for w in body["warnings"])
    assert any("1 duplicate text row(s)" in w for w in body["warnings"])
    assert any("3 row(s) rejected (2 empty text, 1 missing label)" in w for w in body["warnings"])
    lengths = report["text_length_chars"]
    assert lengths["min"] <= lengths["p50"] <= lengths["p95"] <= lengths["max"]
    assert lengths["max"] == len("common sentence 23")
    # A class with a single row cannot be stratified: a plain seeded split, said in warnings.
    assert report["split"]["method"] == "stratified"


def test_single_row_class_falls_back_to_random_split(client, settings) -> None:  # type: ignore[no-untyped-def]
    rows = [["text", "label"]] + [[f"sentence {i}", "a" if i % 2 else "b"] for i in range(20)]
    rows.append(["lonely", "c"])
    body = upload(client, csv_bytes(rows), "rare.csv").json()
    assert body["report"]["split"]["method"] == "random"
    assert any("not stratified" in w and "'c'" in w for w in body["warnings"])


def test_rejected_rows_are_capped_and_counted(client, settings) -> None:  # type: ignore[no-untyped-def]
    rows = [["text", "label"]] + [[f"ok {i}", i % 2] for i in range(20)] + [["", 1]] * 1500
    body = upload(client, csv_bytes(rows), "many_bad.csv").json()
    assert len(body["rejected_rows"]) == 1000
    assert body["report"]["rejected_total"] == 1500
    assert any(w.startswith("1500 row(s) rejected") and "first 1000" in w for w in body["warnings"])


def test_text_and_label_guessed_from_values(client, settings) -> None:  # type: ignore[no-untyped-def]
    rows = [["id", "body_of_post", "verdict"]]
    rows += [[i, f"this is a fairly long piece of writing number {i}", "yes" if i % 2 else "no"]
             for i in range(20)]
    body = upload(client, csv_bytes(rows), "guess.csv").json()
    assert (body["text_column"], body["label_columns"]) == ("body_of_post", ["verdict"])
    assert body["labels"] == ["no", "yes"]
    assert any("text column guessed as 'body_of_post'" in w for w in body["warnings"])
    assert any("label column guessed as 'verdict'" in w for w in body["warnings"])


def test_validation_split_beside_a_validation_file_is_ignored_with_a_warning(client, settings) -> None:  # type: ignore[no-untyped-def]
    dev_lines = HATE_DEV_SLICE.read_text(encoding="utf-8").splitlines()
    resp = upload(client, HATE_SLICE, "train.tsv", validation_split="0.5",
                  extra_files={"validation_file": ("dev.tsv", "\n".join(dev_lines[:21]).encode())})
    assert resp.status_code == 201, resp.text
    body = resp.json()
    assert body["num_rows"] == {"train": 120, "validation": 20}
    assert "validation_split was ignored: the validation_file gives the validation rows" in body["warnings"]
