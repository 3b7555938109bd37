"""Upload a labelled file to a running tuneserve, fine-tune on it, watch it live, and predict.

    make run                                   # in another terminal
    .venv/bin/python examples/train_and_predict.py ../shared/data/korean_hate_speech_train.tsv \
        --validation ../shared/data/korean_hate_speech_dev.tsv --epochs 2 --predict "정말 멋진 공연이었어요"

Uses only the HTTP API (httpx), as any client program would.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import httpx

TERMINAL = {"succeeded", "failed", "cancelled"}


def upload(http: httpx.Client, path: Path, validation: Path | None) -> dict[str, Any]:
    files: dict[str, Any] = {"file": (path.name, path.open("rb"))}
    if validation:
        files["validation_file"] = (validation.name, validation.open("rb"))
    resp = http.post("/datasets", files=files)
    if resp.status_code != 201:
        sys.exit(f"upload refused ({resp.status_code}): {resp.json()['detail']}")
    body = resp.json()
    print(f"dataset {body['id']}: task {body['task']}, text column {body['text_column']!r}, "
          f"labels {body['labels']}, rows {body['num_rows']}")
    for warning in body["warnings"]:
        print(f"  warning: {warning}")
    return body


def watch(http: httpx.Client, job_id: str, poll_s: float) -> dict[str, Any]:
    since = 0
    while True:
        job = http.get(f"/jobs/{job_id}").json()
        for event in http.get(f"/jobs/{job_id}/events", params={"since_id": since}).json():
            since = event["id"]
            print(f"  [{event['kind']}] {event['message']}")
        if job["state"] in TERMINAL:
            return job
        if job["state"] == "running" and job["total_steps"]:
            eta = f", ETA {job['eta_s']:.0f}s" if job["eta_s"] is not None else ""
            print(f"  step {job['step']}/{job['total_steps']} ({job['progress']:.0%}), "
                  f"epoch {job['epoch']:.2f}, micro-batch {job['micro_batch_size']} x "
                  f"{job['grad_accum_steps']}{eta}")
        time.sleep(poll_s)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("file", type=Path)
    parser.add_argument("--validation", type=Path)
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--base-model", default=None)
    parser.add_argument("--epochs", type=float, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=5e-5)
    parser.add_argument("--max-seq-length", type=int, default=128)
    parser.add_argument("--predict", action="append", default=[], help="a text to predict afterwards")
    parser.add_argument("--poll-s", type=float, default=5.0)
    args = parser.parse_args()

    with httpx.Client(base_url=args.url, timeout=120) as http:
        dataset = upload(http, args.file, args.validation)
        started = time.monotonic()
        hyperparameters = {"epochs": args.epochs, "batch_size": args.batch_size,
                           "learning_rate": args.learning_rate, "max_seq_length": args.max_seq_length}
        resp = http.post("/jobs", json={"dataset_id": dataset["id"], "base_model": args.base_model,
                                        "hyperparameters": hyperparameters})
        if resp.status_code != 201:
            sys.exit(f"job refused ({resp.status_code}): {resp.json()['detail']}")
        job = watch(http, resp.json()["id"], args.poll_s)
        print(f"job {job['id']} {job['state']} after {time.monotonic() - started:.0f}s"
              + (f": {job['error']}" if job["error"] else ""))
        if job["state"] != "succeeded":
            sys.exit(1)
        metrics = http.get(f"/jobs/{job['id']}/metrics").json()
        best = metrics["summary"]["best"]
        print(f"best eval (step {best['step']}): " + ", ".join(
            f"{k} {best[k]:.4f}" for k in ("accuracy", "f1_macro", "f1_weighted", "loss") if k in best))
        for split, figures in (metrics["comparison"] or {}).get("splits", {}).items():
            print(f"{split} ({figures['rows']} rows): " + "; ".join(
                f"{name} accuracy {figures[name]['accuracy']:.4f} f1_macro {figures[name]['f1_macro']:.4f}"
                for name in ("tuned", "tfidf", "majority") if "accuracy" in figures.get(name, {})))
        if args.predict:
            pred = http.post("/predict", json={"model_id": job["model_id"], "texts": args.predict}).json()
            print(json.dumps(pred, ensure_ascii=False, indent=2))


if __name__ == "__main__":
    main()
