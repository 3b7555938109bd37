"""`tuneserve experiments`: several base models fine-tuned on one dataset, ranked beside the
baselines."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Group

from app.client import output as out
from app.client.api import Api
from app.client.commands.common import (
    JsonOpt,
    add_list_command,
    api_of,
    calls,
    console,
    ctrl_c_stops_watching,
    fail,
    hyperparameter_options,
    parse_set,
    print_or_json,
)
from app.client.commands.datasets import InputFile, upload_for_training
from app.client.watch import poll_experiment

experiments_app = typer.Typer(help="Several base models on one dataset, ranked beside baselines.",
                              no_args_is_help=True)


def _parse_overrides(items: list[str]) -> dict[str, dict[str, Any]]:
    """`--override MODEL:key=value` -> {MODEL: {key: value}} (values as --set parses them)."""
    overrides: dict[str, dict[str, Any]] = {}
    for item in items:
        target, has_value, value = item.partition("=")
        model, sep, key = target.rpartition(":")  # the model may hold ':', the key does not
        if not (has_value and sep and model and key):
            fail(f"--override {item!r}: write it as MODEL:key=value, "
                 "e.g. --override klue/bert-base:learning_rate=3e-5")
        overrides.setdefault(model, {}).update(parse_set([f"{key}={value}"]))
    return overrides


def _jobs_table(exp: dict[str, Any]) -> Any:
    return out.table(f"experiment {exp['id']}: {exp['state']} ({exp['progress']:.0%})",
                     ["base model", "job", "state", "step", "model"],
                     ([j["base_model"], j["job_id"], j["state"], f"{j['step']}/{j['total_steps'] or '?'}",
                       j["model_id"]] for j in exp["jobs"]))


def _result(exp: dict[str, Any]) -> Group:
    """The leaderboard beside the baselines and the recommended model."""
    metric = exp["primary_metric"]
    parts: list[Any] = []
    board = exp.get("leaderboard") or []
    if board:
        parts.append(out.table(f"leaderboard by validation {metric}", ["rank", "kind", "name", metric,
                                                                         "test", "train s", "model"], (
            [r["rank"], r["kind"], r["name"], (r.get("validation") or {}).get(metric),
             (r.get("test") or {}).get(metric), r.get("training_time_s"), r.get("model_id")] for r in board)))
    rec = exp.get("recommendation")
    if rec:
        parts.append(f"[bold]recommended:[/] {rec['message']}")
    return Group(*parts)


@experiments_app.command("create")
@calls
@hyperparameter_options
def create_experiment(
    ctx: typer.Context,
    base_model: Annotated[list[str], typer.Option(
        "--base-model", help="repeat for each model: hub name, local directory or tuned model id")],
    dataset: Annotated[str | None, typer.Option(help="an uploaded dataset's id")] = None,
    train: Annotated[Path | None, typer.Option(exists=True, dir_okay=False, help="upload this first")] = None,
    validation: InputFile = None,
    name: str | None = None,
    hyperparameters: dict[str, Any] | None = None,
    override: Annotated[list[str] | None, typer.Option(
        help="a hyperparameter for one model only, MODEL:key=value (repeatable)")] = None,
    watch: Annotated[bool, typer.Option(help="follow the jobs until all end, then show the leaderboard")]
    = False,
    json_: JsonOpt = False,
) -> None:
    """Fine-tune several base models on one dataset (same split and seed), ranked with baselines."""
    api = api_of(ctx)
    if (dataset is None) == (train is None):
        fail("give exactly one of --dataset ID or --train FILE")
    if train is not None:
        dataset = upload_for_training(api, train, validation)
    exp = api.post("/experiments", json={
        "dataset_id": dataset, "name": name, "base_models": base_model, "hyperparameters": hyperparameters,
        "overrides": _parse_overrides(override or [])})
    if not watch:
        return print_or_json(exp, json_, _jobs_table)
    _watch(api, exp["id"], json_)


def _watch(api: Api, experiment_id: str, json_: bool) -> None:
    with ctrl_c_stops_watching(f"experiment {experiment_id}",
                               f"`tuneserve experiments show {experiment_id}` shows it."):
        exp = poll_experiment(api, experiment_id, console, _jobs_table)
    print_or_json(exp, json_, _result)
    if exp["state"] != "succeeded":
        fail(f"experiment {experiment_id} {exp['state']}")


add_list_command(experiments_app, "/experiments", "experiments",
                 ["id", "name", "state", "progress", "models", "created"],
                 lambda e: [e["id"], e["name"], e["state"], f"{e['progress']:.0%}", e["base_models"],
                            out.when(e["created_at"])])


@experiments_app.command("show")
@calls
def show_experiment(ctx: typer.Context, experiment_id: str, json_: JsonOpt = False) -> None:
    """One experiment: its jobs, the leaderboard beside the baselines, the recommended model."""
    print_or_json(api_of(ctx).get(f"/experiments/{experiment_id}"), json_,
                  lambda exp: Group(_jobs_table(exp), _result(exp)))


@experiments_app.command("watch")
@calls
def watch_experiment(ctx: typer.Context, experiment_id: str, json_: JsonOpt = False) -> None:
    """Follow an experiment's jobs until all end, then show the leaderboard."""
    _watch(api_of(ctx), experiment_id, json_)


@experiments_app.command("cancel")
@calls
def cancel_experiment(ctx: typer.Context, experiment_id: str) -> None:
    """Cancel every job of the experiment still queued or running."""
    console.print(_jobs_table(api_of(ctx).post(f"/experiments/{experiment_id}/cancel")))


@experiments_app.command("delete")
@calls
def delete_experiment(
    ctx: typer.Context, experiment_id: str,
    delete_models: Annotated[bool, typer.Option(help="also delete the tuned models of its jobs")] = False,
) -> None:
    """Delete a finished experiment and its jobs (their models stay unless asked)."""
    api_of(ctx).delete(f"/experiments/{experiment_id}",
                       params={"delete_models": "true"} if delete_models else None)
    console.print(f"deleted {experiment_id}")
