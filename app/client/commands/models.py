"""`tuneserve models`: list, show, download and delete tuned models."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from app.client import output as out
from app.client.commands.common import JsonOpt, add_list_command, api_of, calls, console, print_or_json

models_app = typer.Typer(help="List, show, download and delete tuned models.", no_args_is_help=True)


add_list_command(models_app, "/models", "models", ["id", "task", "base model", "labels", "job", "created"],
                 lambda m: [m["id"], m["task"], m["base_model"], m["labels"], m["job_id"],
                            out.when(m["created_at"])])


@models_app.command("show")
@calls
def show_model(ctx: typer.Context, model_id: str, json_: JsonOpt = False) -> None:
    """One tuned model with its metrics."""
    print_or_json(api_of(ctx).get(f"/models/{model_id}"), json_, lambda m: out.fields(f"model {m['id']}", [
        ("task", m["task"]), ("base model", m["base_model"]), ("labels", m["labels"]), ("job", m["job_id"]),
        ("metrics", {k: v for k, v in (m.get("metrics") or {}).items() if isinstance(v, int | float)}),
        ("created", out.when(m["created_at"]))]))


@models_app.command("download")
@calls
def download_model(
    ctx: typer.Context, model_id: str,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="default: <model id>.tar.gz")] = None,
    merged: Annotated[bool, typer.Option(help="a LoRA model merged into its base")] = False,
) -> None:
    """Download a tar.gz of the Hugging Face model directory (transformers loads it as it is)."""
    target = output or Path(f"{model_id}.tar.gz")
    partial = target.with_name(target.name + ".part")
    try:
        with partial.open("wb") as fh:
            size = api_of(ctx).download(f"/models/{model_id}/download", fh,
                                        params={"merged": "true"} if merged else None)
        partial.replace(target)
    finally:
        partial.unlink(missing_ok=True)
    console.print(f"saved {target} ({size / 1e6:.1f} MB)")


@models_app.command("delete")
@calls
def delete_model(ctx: typer.Context, model_id: str) -> None:
    """Delete a tuned model (refused while a job continues from it)."""
    api_of(ctx).delete(f"/models/{model_id}")
    console.print(f"deleted {model_id}")
