"""`tuneserve jobs`: start, list, watch, cancel, resume and delete fine-tuning jobs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from app.client import output as out
from app.client.api import Api
from app.client.commands.common import (
    JsonOpt,
    WatchOpt,
    api_of,
    calls,
    console,
    ctrl_c_stops_watching,
    err,
    fail,
    hyperparameter_options,
    print_or_json,
    print_page,
)
from app.client.commands.datasets import InputFile, upload, upload_for_training
from app.client.commands.metrics import print_job_result
from app.client.seed_config import read_seed_config
from app.client.watch import watch_job

jobs_app = typer.Typer(help="Start, list, watch, cancel and delete fine-tuning jobs.", no_args_is_help=True)


def finish_watch(api: Api, job_id: str) -> None:
    """Watch the job to its end, then show its result; a job that did not succeed exits 1."""
    with ctrl_c_stops_watching(f"job {job_id}", f"`tuneserve jobs watch {job_id}` watches it again, "
                                                f"`tuneserve jobs cancel {job_id}` stops it."):
        job = watch_job(api, job_id, console)
    print_job_result(api, job)
    if job["state"] != "succeeded":
        fail(f"job {job_id} {job['state']}" + (f": {job['error']}" if job.get("error") else ""))


def _from_seed_config(api: Api, config: Path) -> tuple[str, dict[str, Any], str | None]:
    """Upload a seed script's [Path] files: (dataset id, its [Hyperparameters], its model_name)."""
    seed = read_seed_config(config)
    for line in seed.used:
        err.print(f"{config.name}: {line}")
    if seed.unused:
        err.print(f"[yellow]{config.name}: not used[/] (tuneserve has no such setting, or it is "
                  f"the server's to decide): {', '.join(seed.unused)}")
    ds = upload(api, seed.files["train"], seed.files.get("validation"), seed.files.get("test"), seed.upload)
    err.print(f"uploaded {seed.files['train'].name} as dataset {ds['id']}: {ds['task']}, labels "
              f"{ds['labels']}, rows {ds['num_rows']}")
    for warning in ds.get("warnings") or []:
        err.print(f"[yellow]warning:[/] {warning}")
    return ds["id"], dict(seed.hyperparameters), seed.base_model


@jobs_app.command("create")
@calls
@hyperparameter_options
def create_job(
    ctx: typer.Context,
    dataset: Annotated[str | None, typer.Option(help="an uploaded dataset's id")] = None,
    config: Annotated[Path | None, typer.Option(
        exists=True, dir_okay=False,
        help="a seed script's config.ini: uploads its [Path] files and uses its [Hyperparameters]")] = None,
    train: Annotated[Path | None, typer.Option(exists=True, dir_okay=False,
                                               help="upload this file first")] = None,
    validation: InputFile = None,
    base_model: Annotated[str | None, typer.Option(
        help="hub name, local directory or a tuned model's id (default: the server's)")] = None,
    hyperparameters: dict[str, Any] | None = None,
    watch: WatchOpt = False,
    json_: JsonOpt = False,
) -> None:
    """Start a fine-tune on a dataset id, a file, or a seed-style config.ini."""
    api = api_of(ctx)
    sources = [s for s in (dataset, config, train) if s is not None]
    if len(sources) != 1:
        fail("give exactly one of --dataset ID, --train FILE or --config config.ini")
    chosen: dict[str, Any] = {}
    if config is not None:
        dataset, chosen, seed_model = _from_seed_config(api, config)
        base_model = base_model or seed_model
    elif train is not None:
        dataset = upload_for_training(api, train, validation)
    # The command line's hyperparameters over the config's.
    job = api.post("/jobs", json={"dataset_id": dataset, "base_model": base_model,
                                  "hyperparameters": chosen | (hyperparameters or {})})
    if json_ and not watch:
        return out.print_json(console, job)
    err.print(f"job [bold]{job['id']}[/] queued on {job['base_model']}")
    if watch:
        finish_watch(api, job["id"])
        if json_:
            out.print_json(console, api.get(f"/jobs/{job['id']}"))
    else:
        console.print(job["id"])


@jobs_app.command("list")
@calls
def list_jobs(
    ctx: typer.Context,
    state: Annotated[str | None, typer.Option(help="queued, running, succeeded, failed or cancelled")] = None,
    dataset: str | None = None,
    limit: int = 50,
    json_: JsonOpt = False,
) -> None:
    """Jobs, newest first."""
    params = {k: v for k, v in {"state": state, "dataset_id": dataset, "limit": limit}.items()
              if v is not None}
    print_page(api_of(ctx).get("/jobs", params=params), json_, "jobs",
               ["id", "state", "progress", "base model", "best", "model", "created"],
               lambda j: [j["id"], j["state"], f"{j['progress']:.0%}", j["base_model"],
                          f"{j['best_metric_name']} {out.fmt(j['best_metric'])}"
                          if j["best_metric"] is not None else None,
                          j["model_id"], out.when(j["created_at"])])


@jobs_app.command("show")
@calls
def show_job(ctx: typer.Context, job_id: str, json_: JsonOpt = False) -> None:
    """One job: state, progress, batch, best metric, error."""
    print_or_json(api_of(ctx).get(f"/jobs/{job_id}"), json_, out.job_fields)


@jobs_app.command("watch")
@calls
def watch(ctx: typer.Context, job_id: str) -> None:
    """Follow a job live until it ends (Ctrl-C stops watching, not the job)."""
    finish_watch(api_of(ctx), job_id)


@jobs_app.command("cancel")
@calls
def cancel_job(ctx: typer.Context, job_id: str, json_: JsonOpt = False) -> None:
    """Cancel: at once when queued, at the next optimizer step when running."""
    job = api_of(ctx).post(f"/jobs/{job_id}/cancel")
    if json_:
        return out.print_json(console, job)
    if job["state"] == "cancelled":
        console.print(f"{job_id}: cancelled")
    else:
        console.print(f"{job_id}: cancel requested; it stops after the current optimizer step")


@jobs_app.command("resume")
@calls
def resume_job(ctx: typer.Context, job_id: str, watch: WatchOpt = False) -> None:
    """Continue a failed or cancelled job from its last good checkpoint."""
    api = api_of(ctx)
    job = api.post(f"/jobs/{job_id}/resume")
    step = job.get("resume_from_step") if isinstance(job, dict) else None
    where = f"from its checkpoint at step {step}" if step else "from the start (it has no checkpoint)"
    err.print(f"job {job_id} queued to resume {where}")
    if watch:
        finish_watch(api, job_id)


@jobs_app.command("delete")
@calls
def delete_job(
    ctx: typer.Context, job_id: str,
    delete_model: Annotated[bool, typer.Option(help="also delete the job's tuned model")] = False,
) -> None:
    """Delete a finished job with its events, metrics and checkpoints (its model stays unless asked)."""
    api_of(ctx).delete(f"/jobs/{job_id}", params={"delete_model": "true"} if delete_model else None)
    console.print(f"deleted {job_id}" + (" and its model" if delete_model else ""))
