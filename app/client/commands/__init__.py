"""The client commands of `tuneserve`, one module per resource: datasets, jobs, metrics, models,
experiments, predict/generate; `common` holds what they share.

Each command is one or two HTTP calls and a table (or `--json`, the server's body as it is).
A refusal prints the server's detail and exits 1; no answer at all exits 2; Ctrl-C during a
watch leaves the job running and exits 130.
"""

from __future__ import annotations

import typer

from app.client.commands.common import calls
from app.client.commands.datasets import datasets_app
from app.client.commands.experiments import experiments_app
from app.client.commands.jobs import jobs_app
from app.client.commands.metrics import metrics
from app.client.commands.models import models_app
from app.client.commands.predict import generate, predict


def register(root: typer.Typer) -> None:
    root.add_typer(datasets_app, name="datasets")
    root.add_typer(jobs_app, name="jobs")
    root.add_typer(models_app, name="models")
    root.add_typer(experiments_app, name="experiments")
    root.command("metrics")(calls(metrics))
    root.command("predict")(calls(predict))
    root.command("generate")(calls(generate))
