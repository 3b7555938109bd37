"""Fine-tune and chat through tuneserve with nothing but the official `openai` client.

Uploads a JSONL file of conversations (OpenAI messages, ShareGPT or Alpaca), starts a fine-tune
with n_epochs "auto", prints its events as they arrive and its checkpoints at the end, then streams
the tuned model's reply to a prompt. The same script runs against OpenAI with another base_url.

    .venv/bin/python examples/openai_fine_tune.py train.jsonl --model /models/Llama-3.1-8B-Instruct \\
        --suffix support --prompt "주문한 물건이 아직 안 왔어요"
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from openai import OpenAI

FINAL = {"succeeded", "failed", "cancelled"}


def follow(client: OpenAI, job_id: str, poll_s: float) -> str:
    """Print each new event, oldest first, until the job ends; returns its final status."""
    seen: set[str] = set()
    while True:
        job = client.fine_tuning.jobs.retrieve(job_id)
        events = client.fine_tuning.jobs.list_events(job_id, limit=100).data  # newest first
        for event in reversed(events):
            if event.id not in seen:
                seen.add(event.id)
                print(f"  [{event.type}] {event.message}")
        if job.status in FINAL:
            return job.status
        time.sleep(poll_s)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("training_file", type=Path)
    parser.add_argument("--validation-file", type=Path)
    parser.add_argument("--model", required=True, help="the base model: a hub name or a local directory")
    parser.add_argument("--suffix")
    parser.add_argument("--prompt", default="안녕하세요?")
    parser.add_argument("--base-url", default="http://127.0.0.1:8000/v1")
    parser.add_argument("--api-key", default="local", help="a tuneserve key (any value with auth off)")
    parser.add_argument("--poll-s", type=float, default=2.0)
    args = parser.parse_args()

    client = OpenAI(base_url=args.base_url, api_key=args.api_key)
    with args.training_file.open("rb") as f:
        training = client.files.create(file=f, purpose="fine-tune")
    validation = None
    if args.validation_file:
        with args.validation_file.open("rb") as f:
            validation = client.files.create(file=f, purpose="fine-tune").id
    job = client.fine_tuning.jobs.create(
        model=args.model, training_file=training.id, validation_file=validation, suffix=args.suffix,
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": "auto"}}})
    print(f"job {job.id}: {job.hyperparameters.n_epochs} epochs, batch {job.hyperparameters.batch_size}")
    status = follow(client, job.id, args.poll_s)
    job = client.fine_tuning.jobs.retrieve(job.id)
    if status != "succeeded" or job.fine_tuned_model is None:
        raise SystemExit(f"job {job.id} {status}: {job.error.message if job.error else ''}")
    for checkpoint in client.fine_tuning.jobs.checkpoints.list(job.id).data:
        metrics = checkpoint.metrics
        print(f"checkpoint step {checkpoint.step_number}: train loss {metrics.train_loss}, "
              f"valid loss {metrics.valid_loss}, token accuracy {metrics.valid_mean_token_accuracy}")
    print(f"{job.fine_tuned_model} ({job.trained_tokens} tokens trained):")
    stream = client.chat.completions.create(model=job.fine_tuned_model, stream=True,
                                            messages=[{"role": "user", "content": args.prompt}])
    for chunk in stream:
        if chunk.choices:
            print(chunk.choices[0].delta.content or "", end="", flush=True)
    print()


if __name__ == "__main__":
    main()
