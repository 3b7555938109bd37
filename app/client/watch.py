"""`tuneserve jobs watch` and `tuneserve experiments watch`: live views that ride out a server
restart.

A job's bar shows epoch, step/total, the latest train loss, the latest eval metric, micro-batch
x accumulation and the server's ETA; events print above it as they happen. A dropped connection
reconnects with Last-Event-ID, so nothing is shown twice or missed. An experiment's table of
jobs is polled. Both return what they watched once it has ended.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import httpx
from rich.console import Console, RenderableType
from rich.live import Live
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn

from app.client.api import Api, ApiError
from app.client.output import batch, fmt

# A restarting server (migrations, a busy machine) may take half a minute to answer again.
RECONNECT_TRIES = 15
RECONNECT_WAIT_S = 2.0
EXPERIMENT_POLL_S = 2.0


class Reconnection:
    """Tries again every RECONNECT_WAIT_S while the server does not answer, and gives up after
    RECONNECT_TRIES in a row; any answer starts the count again."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.failures = 0

    def answered(self) -> None:
        self.failures = 0

    def retry(self, reason: str | None = None) -> bool:
        """Wait before the next try (saying why, when given); False once the tries are spent."""
        self.failures += 1
        if self.failures > RECONNECT_TRIES:
            return False
        if reason:
            self.console.print(f"[yellow]{reason}; reconnecting ({self.failures}/{RECONNECT_TRIES})[/]")
        time.sleep(RECONNECT_WAIT_S)
        return True


class _View:
    def __init__(self, job_id: str, progress: Progress) -> None:
        self.progress = progress
        self.task = progress.add_task(job_id, total=None, info="waiting for a worker")
        self.job: dict[str, Any] = {"state": "queued"}
        self.loss: float | None = None
        self.eval: dict[str, Any] = {}
        self.metric_name = "f1_macro"

    def on_progress(self, job: dict[str, Any]) -> None:
        self.job.update(job)
        self.metric_name = job.get("best_metric_name") or self.metric_name
        self.refresh()

    def on_metric(self, point: dict[str, Any]) -> None:
        if point["kind"] == "train":
            self.loss = point.get("loss")
        elif point["kind"] == "eval":
            self.eval = point
            shown = {k: point[k] for k in ("loss", "accuracy", "f1_macro", "f1_micro", "token_accuracy",
                                           "perplexity")
                     if isinstance(point.get(k), int | float)}
            self.progress.console.print(f"  eval at step {point['step']} (epoch {point['epoch']:.2f}): "
                                        + ", ".join(f"{k} {fmt(v)}" for k, v in shown.items()))
        self.refresh()

    def refresh(self) -> None:
        job = self.job
        parts = [job["state"]]
        if job.get("total_steps"):
            parts.append(f"epoch {job.get('epoch', 0):.2f}")
            parts.append(f"step {job.get('step', 0)}/{job['total_steps']}")
        if self.loss is not None:
            parts.append(f"loss {fmt(self.loss)}")
        value = self.eval.get(self.metric_name)
        if isinstance(value, int | float):
            parts.append(f"{self.metric_name} {fmt(value)}")
        if job.get("micro_batch_size"):
            parts.append(f"batch {batch(job)}")
        if job.get("eta_s") is not None and job["state"] == "running":
            parts.append(f"ETA {_duration(job['eta_s'])}")
        self.progress.update(self.task, total=job.get("total_steps") or None,
                             completed=job.get("step") or 0, info=" · ".join(parts))


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def watch_job(api: Api, job_id: str, console: Console) -> dict[str, Any]:
    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), TaskProgressColumn(),
                        TextColumn("{task.fields[info]}"), console=console)
    last_id: str | None = None
    with progress:
        view = _View(job_id, progress)
        reconnection = Reconnection(progress.console)
        while True:
            try:
                for sse in api.events(job_id, last_id):
                    reconnection.answered()
                    data = json.loads(sse.data) if sse.data else {}
                    if sse.event in ("log", "metric"):
                        last_id = sse.id  # where a reconnection resumes
                    if sse.event == "log":
                        progress.console.print(f"[dim]{data['time'][11:19]}[/] [cyan]{data['kind']}[/] "
                                               f"{data['message']}", highlight=False)
                    elif sse.event == "metric":
                        view.on_metric(data)
                    elif sse.event == "progress":
                        view.on_progress(data)
                    elif sse.event == "end":
                        view.on_progress(data)
                        return data
            except httpx.TransportError as exc:
                if not reconnection.retry(f"stream interrupted ({type(exc).__name__})"):
                    raise ApiError(0, f"lost the event stream of {job_id} ({exc}); the job goes on: "
                                      f"`tuneserve jobs watch {job_id}` picks it up again") from exc
            else:
                # The server closed the stream without an `end` (it restarted): pick up again.
                if not reconnection.retry():
                    return dict(api.get(f"/jobs/{job_id}"))


def poll_experiment(api: Api, experiment_id: str, console: Console,
                     render: Callable[[dict[str, Any]], RenderableType]) -> dict[str, Any]:
    """Poll the experiment, showing `render` of it live, until no job of it is queued or running."""
    reconnection = Reconnection(console)
    exp = _get_experiment(api, experiment_id, reconnection)
    with Live(render(exp), console=console, refresh_per_second=2) as live:
        while exp["state"] in ("queued", "running"):
            time.sleep(EXPERIMENT_POLL_S)
            exp = _get_experiment(api, experiment_id, reconnection)
            live.update(render(exp))
    return exp


def _get_experiment(api: Api, experiment_id: str, reconnection: Reconnection) -> dict[str, Any]:
    while True:
        try:
            exp = dict(api.get(f"/experiments/{experiment_id}"))
        except ApiError as exc:
            if exc.status or not reconnection.retry("the server does not answer"):
                raise  # a refusal, or no answer for too long: the command says which
            continue
        reconnection.answered()
        return exp
