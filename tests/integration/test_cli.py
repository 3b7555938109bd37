"""The `tuneserve` client against a real running service (uvicorn + a Celery worker): a whole
fine-tune driven from a seed-style config.ini and watched live, then every read command, and the
errors a user meets."""

from __future__ import annotations

import csv
import json
import tarfile
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from app.cli import app
from app.client import output as out
from tests.conftest import FIXTURES
from tests.integration.conftest import wait_until, write_sentiment_csv
from tests.integration.live_service import LiveService, cli

pytestmark = pytest.mark.slow


def test_a_seed_config_ini_fine_tune_runs_from_the_cli_and_is_watched_live(finished: dict[str, Any]) -> None:
    result, job = finished["result"], finished["job"]
    text = result.output
    assert result.exit_code == 0, text
    # Every key is accounted for: used ones say what they became, the rest are named.
    assert "[Hyperparameters] max_length -> max_seq_length" in text
    assert "[Path] dev_file -> validation file" in text
    assert "not used" in text
    for unused in ("[Path] output_dir", "[Hyperparameters] dropout", "[Logging] log_dir"):
        assert unused in text
    # The live watch printed the worker's events as they came, and the evaluations.
    for kind in ("claimed", "batch_probe", "started", "model_ready", "succeeded"):
        assert f" {kind} " in text, kind
    assert text.count("eval at step") == 3, text
    assert "f1_macro" in text and "tuned vs baselines" in text and "tfidf" in text
    # The job is what the config asked for.
    assert job["state"] == "succeeded" and job["model_id"] in text
    hp = job["hyperparameters"]
    assert (hp["epochs"], hp["batch_size"], hp["learning_rate"], hp["max_seq_length"]) == (3, 16, 3e-3, 32)
    assert hp["logging_steps"] == 1 and hp["warmup_ratio"] == 0
    assert job["micro_batch_size"] * job["grad_accum_steps"] == 16


def test_read_commands_show_the_finished_job(live: LiveService, finished: dict[str, Any],
                                             tmp_path: Path) -> None:
    job = finished["job"]
    shown = json.loads(cli(live, "jobs", "show", job["id"], "--json").output)
    assert shown["id"] == job["id"] and shown["state"] == "succeeded"
    table = cli(live, "jobs", "list")
    assert table.exit_code == 0 and job["id"] in table.output and "succeeded" in table.output

    metrics = cli(live, "metrics", job["id"])
    assert metrics.exit_code == 0, metrics.output
    assert "best f1_macro" in metrics.output and "train: 15 points" in metrics.output
    body = json.loads(cli(live, "metrics", job["id"], "--json").output)
    assert [p["step"] for p in body["eval"]] == [5, 10, 15]
    # The classification report of the tuned model on the validation split, row by row as the
    # comparison stored it, then the averages and the confusion matrix.
    tuned = body["comparison"]["splits"]["validation"]["tuned"]
    report = _table_rows(metrics.output, "per class on the validation split")
    for name, figures in tuned["per_class"].items():
        assert report[name] == [out.fmt(figures["precision"]), out.fmt(figures["recall"]),
                                out.fmt(figures["f1"]), str(figures["support"])], report
    assert sum(f["support"] for f in tuned["per_class"].values()) == 24
    assert report["macro avg"] == [out.fmt(tuned["precision_macro"]), out.fmt(tuned["recall_macro"]),
                                   out.fmt(tuned["f1_macro"]), "24"]
    assert report["weighted avg"][2:] == [out.fmt(tuned["f1_weighted"]), "24"]
    assert "confusion matrix on the validation split" in metrics.output
    matrix = _table_rows(metrics.output, "confusion matrix on the validation split")
    confusion = tuned["confusion_matrix"]
    assert {label: [int(n) for n in counts] for label, counts in matrix.items()} == dict(
        zip(confusion["labels"], confusion["matrix"], strict=True))

    ds = json.loads(cli(live, "datasets", "show", job["dataset_id"], "--json").output)
    assert ds["num_rows"] == {"train": 80, "validation": 24}
    shown_ds = cli(live, "datasets", "show", job["dataset_id"])
    assert "label distribution" in shown_ds.output and "preview" in shown_ds.output

    pred = json.loads(cli(live, "predict", job["model_id"], "loved it, superb", "awful and dull",
                          "--json").output)
    assert [p["label"] in {"negative", "positive"} for p in pred["predictions"]] == [True, True]
    pred_table = cli(live, "predict", job["model_id"], "loved it, superb")
    assert pred_table.exit_code == 0 and "loved it, superb" in pred_table.output

    # A whole labelled file: every row scored into a CSV, then scored against its own labels.
    labelled = write_sentiment_csv(tmp_path / "dev.csv", rows=24)
    scored_path = tmp_path / "dev.scored.csv"
    scored = cli(live, "predict", job["model_id"], "--file", str(labelled), "-o", str(scored_path))
    assert scored.exit_code == 0, scored.output
    with scored_path.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 24 and {"text", "label", "predicted_label", "predicted_score"} <= set(rows[0])
    accuracy = sum(r["label"] == r["predicted_label"] for r in rows) / len(rows)
    said = " ".join(scored.output.split())  # rich folds long lines at the terminal's width
    assert f"wrote 24 scored rows to {scored_path}" in said
    assert f"accuracy {accuracy:.4f}" in said and "confusion matrix" in said

    models = json.loads(cli(live, "models", "list", "--json").output)
    assert job["model_id"] in [m["id"] for m in models["data"]]
    target = tmp_path / "model.tar.gz"
    download = cli(live, "models", "download", job["model_id"], "-o", str(target))
    assert download.exit_code == 0, download.output
    with tarfile.open(target) as archive:
        assert any(name.endswith("config.json") for name in archive.getnames())


def _table_rows(text: str, title: str) -> dict[str, list[str]]:
    """The body rows of the table titled `title` in a command's output, by their first cell."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if title in line)
    rows: dict[str, list[str]] = {}
    for line in lines[start + 1:]:
        if line.startswith("└"):
            break
        if line.startswith("│"):
            first, *cells = [cell.strip() for cell in line.strip("│").split("│")]
            rows[first] = cells
    return rows


def test_cancel_then_watch_ends_with_the_cancelled_state_and_a_non_zero_exit(
    live: LiveService, finished: dict[str, Any]
) -> None:
    created = cli(live, "jobs", "create", "--dataset", finished["job"]["dataset_id"], "--base-model",
                  str(live.tiny_encoder_dir), "--epochs", "50", "--json")
    assert created.exit_code == 0, created.output
    job_id = json.loads(created.output)["id"]
    running = cli(live, "jobs", "delete", job_id)
    assert running.exit_code == 1 and "cancel it first" in running.output and "HTTP 409" in running.output
    cancelled = cli(live, "jobs", "cancel", job_id)
    assert cancelled.exit_code == 0 and job_id in cancelled.output
    watched = cli(live, "jobs", "watch", job_id)
    assert watched.exit_code == 1
    assert f"job {job_id} cancelled" in watched.output
    assert json.loads(cli(live, "jobs", "show", job_id, "--json").output)["state"] == "cancelled"
    deleted = cli(live, "jobs", "delete", job_id)
    assert deleted.exit_code == 0 and f"deleted {job_id}" in deleted.output
    gone = cli(live, "jobs", "show", job_id)
    assert gone.exit_code == 1 and "HTTP 404" in gone.output


def test_errors_show_the_servers_detail_and_exit_non_zero(live: LiveService, tmp_path: Path) -> None:
    missing = cli(live, "jobs", "show", "job_nope")
    assert missing.exit_code == 1
    assert "No job with id 'job_nope'; GET /jobs lists them. (HTTP 404)" in missing.output
    bad = cli(live, "jobs", "create", "--dataset", "ds_nope", "--set", "epochs=-1")
    assert bad.exit_code == 1 and "hyperparameters.epochs" in bad.output and "HTTP 422" in bad.output
    no_train = tmp_path / "config.ini"
    no_train.write_text("[Hyperparameters]\nepochs = 1\n", encoding="utf-8")
    refused = cli(live, "jobs", "create", "--config", str(no_train))
    assert refused.exit_code == 1 and "names no training file" in refused.output
    down = CliRunner().invoke(app, ["--url", "http://127.0.0.1:9", "jobs", "list"])
    assert down.exit_code == 2 and "no answer from http://127.0.0.1:9" in down.output


def test_the_finished_job_wrote_tensorboard_event_files_that_read_back(live: LiveService,
                                                                      finished: dict[str, Any]) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    job = finished["job"]
    log_dir = live.directory / "models_store" / "jobs" / job["id"] / "tensorboard"
    assert list(log_dir.glob("events.out.tfevents.*")), list(log_dir.parent.iterdir())
    events = EventAccumulator(str(log_dir))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "train/learning_rate", "train/samples_per_second", "eval/f1_macro",
            "eval/accuracy", "eval/loss"} <= tags
    # The same figures the API serves, step for step.
    metrics = json.loads(cli(live, "metrics", job["id"], "--json").output)
    train_loss = [(e.step, e.value) for e in events.Scalars("train/loss")]
    assert [s for s, _ in train_loss] == [p["step"] for p in metrics["train"]]
    assert [v for _, v in train_loss] == pytest.approx([p["loss"] for p in metrics["train"]], rel=1e-6)
    f1 = events.Scalars("eval/f1_macro")
    assert [e.step for e in f1] == [p["step"] for p in metrics["eval"]]
    assert [e.value for e in f1] == pytest.approx([p["f1_macro"] for p in metrics["eval"]], rel=1e-6)


def test_an_experiment_from_the_cli_ends_with_its_leaderboard(live: LiveService,
                                                              finished: dict[str, Any]) -> None:
    model = str(live.tiny_encoder_dir)
    run = cli(live, "experiments", "create", "--dataset", finished["job"]["dataset_id"],
              "--base-model", model, "--name", "tiny vs baselines", "--epochs", "1", "--batch-size", "16",
              "--max-seq-length", "32",
              "--override", f"{model}:learning_rate=0.002", "--watch")
    assert run.exit_code == 0, run.output
    assert "leaderboard by validation f1_macro" in run.output and "tfidf" in run.output
    assert "recommended:" in run.output
    experiments = json.loads(cli(live, "experiments", "list", "--json").output)["data"]
    exp = json.loads(cli(live, "experiments", "show", experiments[0]["id"], "--json").output)
    assert exp["name"] == "tiny vs baselines" and exp["state"] == "succeeded"
    assert exp["overrides"] == {model: {"learning_rate": 0.002}}
    assert [j["state"] for j in exp["jobs"]] == ["succeeded"]
    assert {r["name"] for r in exp["leaderboard"]} >= {model, "tfidf", "majority"}
    deleted = cli(live, "experiments", "delete", exp["id"], "--delete-models")
    assert deleted.exit_code == 0, deleted.output
    gone = cli(live, "experiments", "show", exp["id"])
    assert gone.exit_code == 1 and "HTTP 404" in gone.output
    bad = cli(live, "experiments", "create", "--dataset", "ds_x", "--base-model", model, "--override", "lr=1")
    assert bad.exit_code == 1 and "write it as MODEL:key=value" in bad.output


def test_generate_streams_a_tuned_chat_models_reply(live: LiveService, tiny_chat_lm_dir: Path) -> None:
    uploaded = cli(live, "datasets", "upload", str(FIXTURES / "korean_chatbot_qa_slice.csv"),
                   "--task", "chat", "--json")
    assert uploaded.exit_code == 0, uploaded.output
    trained = cli(live, "jobs", "create", "--dataset", json.loads(uploaded.output)["id"], "--base-model",
                  str(tiny_chat_lm_dir), "--batch-size", "8", "--max-seq-length", "64",
                  "--learning-rate", "3e-3", "--set", "max_steps=2", "--set", "eval_strategy=steps",
                  "--set", "eval_steps=2", "--watch")
    assert trained.exit_code == 0, trained.output
    assert "perplexity" in trained.output  # the chat job's eval metric on the live bar's lines
    model_id = json.loads(cli(live, "jobs", "list", "--json").output)["data"][0]["model_id"]

    streamed = cli(live, "generate", model_id, "오늘 날씨 어때?", "--temperature", "0",
                   "--max-new-tokens", "6")
    assert streamed.exit_code == 0, streamed.output
    assert "prompt +" in streamed.output and "reply tokens, finish:" in streamed.output
    whole = json.loads(cli(live, "generate", model_id, "오늘 날씨 어때?", "--temperature", "0",
                           "--max-new-tokens", "6", "--json").output)
    assert whole["message"]["role"] == "assistant" and whole["usage"]["completion_tokens"] <= 6
    # Greedy decoding: the streamed reply is the same text as the whole one.
    assert whole["message"]["content"].strip() in streamed.output
    refused = cli(live, "generate", "mdl_nope", "hello")
    assert refused.exit_code == 1 and "HTTP 404" in refused.output


def test_experiments_watch_rides_out_a_server_restart(live: LiveService, finished: dict[str, Any]) -> None:
    """The watch polls; the API stops and starts again on the same port; the watch goes on, and
    ends when the experiment does (cancelled here: exit 1 and its state, not 2 for no server)."""
    created = cli(live, "experiments", "create", "--dataset", finished["job"]["dataset_id"], "--base-model",
                  str(live.tiny_encoder_dir), "--epochs", "100", "--json")
    assert created.exit_code == 0, created.output
    experiment_id = json.loads(created.output)["id"]
    answers: list[int] = []  # the status of each response the watch got, in order

    http = httpx.Client(base_url=live.url, timeout=30,
                        event_hooks={"response": [lambda response: answers.append(response.status_code)]})
    watched: dict[str, Any] = {}
    watcher = threading.Thread(target=lambda: watched.update(result=CliRunner().invoke(
        app, ["experiments", "watch", experiment_id], obj=http, env={"COLUMNS": "200"})))
    watcher.start()
    try:
        wait_until(lambda: answers, timeout_s=60, what="the watch's first poll")
        live.stop_api()
        live.start_api()
        seen = len(answers)
        wait_until(lambda: len(answers) > seen or not watcher.is_alive(), timeout_s=60,
                   what="a poll after the restart")
        assert watcher.is_alive(), f"the watch ended with the server down:\n{watched['result'].output}"
        assert httpx.post(f"{live.url}/experiments/{experiment_id}/cancel", timeout=30).status_code == 200
        watcher.join(timeout=120)
        assert not watcher.is_alive(), "the watch did not end with the experiment"
    finally:
        watcher.join(timeout=120)
        http.close()
    result = watched["result"]
    assert result.exit_code == 1, result.output
    assert "the server does not answer; reconnecting (1/" in result.output
    assert f"experiment {experiment_id} cancelled" in result.output
    deleted = cli(live, "experiments", "delete", experiment_id)
    assert deleted.exit_code == 0, deleted.output
