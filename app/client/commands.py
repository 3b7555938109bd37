"""The client commands of `tuneserve`: datasets, jobs, metrics, predict, models.

Each command is one or two HTTP calls and a table (or `--json`, the server's body as it is).
A refusal prints the server's detail and exits 1; no answer at all exits 2; Ctrl-C during a
watch leaves the job running and exits 130.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console

from app.client import output as out
from app.client.api import DEFAULT_URL, Api, ApiError
from app.client.seed_config import SeedConfigError, read_seed_config
from app.client.watch import watch_job

TERMINAL = {"succeeded", "failed", "cancelled"}

console = Console(highlight=False, soft_wrap=False)
err = Console(stderr=True, highlight=False)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print the server's JSON instead of a table.")]


def _api(ctx: typer.Context) -> Api:
    """The client for this invocation, from --url/--api-key (or their environment variables). A
    caller may hand in the httpx client to use (an in-process test client) as the root `obj`."""
    root = ctx.find_root()
    if isinstance(root.obj, Api):
        return root.obj
    params = root.params
    # Duck-typed: Starlette's TestClient is an httpx-compatible client of another package.
    http = root.obj if hasattr(root.obj, "stream") else None
    root.obj = Api(params.get("url") or DEFAULT_URL, params.get("api_key"), http=http)
    return root.obj


def fail(message: str, code: int = 1) -> NoReturn:
    err.print(f"[red]error:[/] {message}", soft_wrap=True)
    raise typer.Exit(code)


def calls(func: Callable[..., Any]) -> Callable[..., Any]:
    """Server refusals and unreachable servers become one line on stderr and an exit code."""
    import functools

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except ApiError as exc:
            fail(f"{exc.detail} (HTTP {exc.status})" if exc.status else exc.detail, 1 if exc.status else 2)
        except SeedConfigError as exc:
            fail(str(exc))
    return wrapper


# --- datasets ---------------------------------------------------------------------------

datasets_app = typer.Typer(help="Upload, list, show and delete datasets.", no_args_is_help=True)


def _upload(api: Api, train: Path, validation: Path | None = None, test: Path | None = None,
            form: dict[str, Any] | None = None) -> dict[str, Any]:
    with ExitStack() as stack:
        files = {"file": (train.name, stack.enter_context(train.open("rb")))}
        for field, path in (("validation_file", validation), ("test_file", test)):
            if path is not None:
                files[field] = (path.name, stack.enter_context(path.open("rb")))
        data = {k: str(v) for k, v in (form or {}).items() if v is not None}
        return dict(api.post("/datasets", files=files, data=data))


def _dataset_summary(ds: dict[str, Any]) -> None:
    console.print(out.fields(f"dataset {ds['id']}", [
        ("name", ds["name"]), ("task", ds["task"]), ("format", f"{ds['format']} ({ds['encoding']})"),
        ("text column", ds.get("text_column")), ("label columns", ds.get("label_columns")),
        ("labels", ds.get("labels")), ("rows", ds.get("num_rows")),
        ("rejected rows", len(ds.get("rejected_rows") or [])),
    ]))
    for warning in ds.get("warnings") or []:
        console.print(f"[yellow]warning:[/] {warning}")


@datasets_app.command("upload")
@calls
def upload_dataset(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="csv, tsv, json, jsonl, parquet")],
    validation: Annotated[Path | None, typer.Option(exists=True, dir_okay=False)] = None,
    test: Annotated[Path | None, typer.Option(exists=True, dir_okay=False)] = None,
    name: str | None = None,
    task: Annotated[str | None, typer.Option(help="single_label, multi_label or chat")] = None,
    text_column: str | None = None,
    label_column: Annotated[str | None, typer.Option(help="one column, or several comma-separated")] = None,
    validation_split: float | None = None,
    seed: int | None = None,
    json_: JsonOpt = False,
) -> None:
    """Upload a file; says which columns, task and labels were understood and what is wrong."""
    ds = _upload(_api(ctx), file, validation, test, {
        "name": name, "task": task, "text_column": text_column, "label_column": label_column,
        "validation_split": validation_split, "seed": seed})
    out.print_json(console, ds) if json_ else _dataset_summary(ds)


@datasets_app.command("list")
@calls
def list_datasets(ctx: typer.Context, json_: JsonOpt = False) -> None:
    """Datasets, newest first."""
    body = _api(ctx).get("/datasets")
    if json_:
        return out.print_json(console, body)
    columns = ["id", "name", "task", "rows", "labels", "created"]
    console.print(out.table(f"{body['count']} datasets", columns, (
        [d["id"], d["name"], d["task"], d["num_rows"], d["labels"], out.when(d["created_at"])]
        for d in body["data"])))


@datasets_app.command("show")
@calls
def show_dataset(ctx: typer.Context, dataset_id: str, json_: JsonOpt = False) -> None:
    """One dataset: what was understood, the validation report and a preview."""
    ds = _api(ctx).get(f"/datasets/{dataset_id}")
    if json_:
        return out.print_json(console, ds)
    _dataset_summary(ds)
    distribution = ds.get("label_distribution") or {}
    if distribution:
        labels = sorted({label for split in distribution.values() for label in split})
        console.print(out.table("label distribution", ["split", *labels], (
            [split, *(counts.get(label, 0) for label in labels)] for split, counts in distribution.items())))
    rejected = ds.get("rejected_rows") or []
    if rejected:
        console.print(out.table(f"rejected rows ({len(rejected)}; first 10)", ["row", "reason"],
                                ([r["row"], r["reason"]] for r in rejected[:10])))
    report = ds.get("report") or {}
    if report:
        console.print(out.fields("validation report", report.items()))
    preview = ds.get("preview") or []
    if preview:
        columns = list(preview[0])
        console.print(out.table("preview", columns, ([row.get(c) for c in columns] for row in preview)))


@datasets_app.command("delete")
@calls
def delete_dataset(ctx: typer.Context, dataset_id: str) -> None:
    """Delete a dataset and its files (refused while a job uses it)."""
    _api(ctx).delete(f"/datasets/{dataset_id}")
    console.print(f"deleted {dataset_id}")


# --- jobs -----------------------------------------------------------------------------------

jobs_app = typer.Typer(help="Start, list, watch, cancel and delete fine-tuning jobs.", no_args_is_help=True)


def _parse_set(items: list[str]) -> dict[str, Any]:
    """`--set key=value`: the value as JSON when it parses (numbers, true, null), else a string."""
    import json

    values: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            fail(f"--set {item!r}: write it as key=value, e.g. --set warmup_ratio=0.06")
        try:
            values[key.strip()] = json.loads(raw)
        except ValueError:
            values[key.strip()] = raw
    return values


def _finish_watch(api: Api, job_id: str) -> None:
    try:
        job = watch_job(api, job_id, console)
    except KeyboardInterrupt:
        err.print(f"\nstopped watching; job {job_id} keeps running. `tuneserve jobs watch {job_id}` "
                  f"watches it again, `tuneserve jobs cancel {job_id}` stops it.")
        raise typer.Exit(130) from None
    _summary(api, job)
    if job["state"] != "succeeded":
        fail(f"job {job_id} {job['state']}" + (f": {job['error']}" if job.get("error") else ""))


def _summary(api: Api, job: dict[str, Any]) -> None:
    console.print(out.job_fields(job))
    if job["state"] != "succeeded":
        return
    metrics = api.get(f"/jobs/{job['id']}/metrics")
    summary = metrics.get("summary") or {}
    points = [(name, p) for name, p in (("best", summary.get("best")), ("final", summary.get("final"))) if p]
    if points:
        console.print(out.eval_table(f"evaluation (best by {summary.get('metric')})", [p for _, p in points],
                                     names=[name for name, _ in points]))
    comparison = out.comparison_table(metrics.get("comparison"))
    if comparison is not None:
        console.print(comparison)
    console.print(f"model [bold]{job['model_id']}[/]: `tuneserve predict {job['model_id']} \"some text\"`")


@jobs_app.command("create")
@calls
def create_job(
    ctx: typer.Context,
    dataset: Annotated[str | None, typer.Option(help="an uploaded dataset's id")] = None,
    config: Annotated[Path | None, typer.Option(
        exists=True, dir_okay=False,
        help="a seed script's config.ini: uploads its [Path] files and uses its [Hyperparameters]")] = None,
    train: Annotated[Path | None, typer.Option(exists=True, dir_okay=False,
                                               help="upload this file first")] = None,
    validation: Annotated[Path | None, typer.Option(exists=True, dir_okay=False)] = None,
    base_model: Annotated[str | None, typer.Option(
        help="hub name, local directory or a tuned model's id (default: the server's)")] = None,
    epochs: float | None = None,
    batch_size: Annotated[int | None, typer.Option(help="the effective batch")] = None,
    learning_rate: float | None = None,
    max_seq_length: int | None = None,
    set_: Annotated[list[str] | None, typer.Option(
        "--set", help="any other hyperparameter, key=value (repeatable)")] = None,
    watch: Annotated[bool, typer.Option(help="watch it live until it ends")] = False,
    json_: JsonOpt = False,
) -> None:
    """Start a fine-tune on a dataset id, a file, or a seed-style config.ini."""
    api = _api(ctx)
    sources = [s for s in (dataset, config, train) if s is not None]
    if len(sources) != 1:
        fail("give exactly one of --dataset ID, --train FILE or --config config.ini")
    hyperparameters: dict[str, Any] = {}
    if config is not None:
        seed = read_seed_config(config)
        for line in seed.used:
            err.print(f"{config.name}: {line}")
        if seed.unused:
            err.print(f"[yellow]{config.name}: not used[/] (tuneserve has no such setting, or it is "
                      f"the server's to decide): {', '.join(seed.unused)}")
        ds = _upload(api, seed.files["train"], seed.files.get("validation"), seed.files.get("test"),
                     seed.upload)
        err.print(f"uploaded {seed.files['train'].name} as dataset {ds['id']}: {ds['task']}, labels "
                  f"{ds['labels']}, rows {ds['num_rows']}")
        for warning in ds.get("warnings") or []:
            err.print(f"[yellow]warning:[/] {warning}")
        dataset, hyperparameters = ds["id"], dict(seed.hyperparameters)
        base_model = base_model or seed.base_model
    elif train is not None:
        ds = _upload(api, train, validation)
        err.print(f"uploaded {train.name} as dataset {ds['id']}: {ds['task']}, labels {ds['labels']}")
        dataset = ds["id"]
    options = {"epochs": epochs, "batch_size": batch_size, "learning_rate": learning_rate,
               "max_seq_length": max_seq_length}
    hyperparameters.update({k: v for k, v in options.items() if v is not None})
    hyperparameters.update(_parse_set(set_ or []))
    job = api.post("/jobs", json={"dataset_id": dataset, "base_model": base_model,
                                  "hyperparameters": hyperparameters})
    if json_ and not watch:
        return out.print_json(console, job)
    err.print(f"job [bold]{job['id']}[/] queued on {job['base_model']}")
    if watch:
        _finish_watch(api, job["id"])
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
    body = _api(ctx).get("/jobs", params=params)
    if json_:
        return out.print_json(console, body)
    console.print(out.table(f"{body['count']} jobs", ["id", "state", "progress", "base model", "best",
                                                      "model", "created"], (
        [j["id"], j["state"], f"{j['progress']:.0%}", j["base_model"],
         f"{j['best_metric_name']} {out.fmt(j['best_metric'])}" if j["best_metric"] is not None else None,
         j["model_id"], out.when(j["created_at"])] for j in body["data"])))


@jobs_app.command("show")
@calls
def show_job(ctx: typer.Context, job_id: str, json_: JsonOpt = False) -> None:
    """One job: state, progress, batch, best metric, error."""
    job = _api(ctx).get(f"/jobs/{job_id}")
    out.print_json(console, job) if json_ else console.print(out.job_fields(job))


@jobs_app.command("watch")
@calls
def watch(ctx: typer.Context, job_id: str) -> None:
    """Follow a job live until it ends (Ctrl-C stops watching, not the job)."""
    api = _api(ctx)
    _finish_watch(api, job_id)


@jobs_app.command("cancel")
@calls
def cancel_job(ctx: typer.Context, job_id: str, json_: JsonOpt = False) -> None:
    """Cancel: at once when queued, at the next optimizer step when running."""
    job = _api(ctx).post(f"/jobs/{job_id}/cancel")
    if json_:
        return out.print_json(console, job)
    if job["state"] == "cancelled":
        console.print(f"{job_id}: cancelled")
    else:
        console.print(f"{job_id}: cancel requested; it stops after the current optimizer step")


@jobs_app.command("resume")
@calls
def resume_job(
    ctx: typer.Context, job_id: str,
    watch: Annotated[bool, typer.Option(help="watch it live until it ends")] = False,
) -> None:
    """Continue a failed or cancelled job from its last good checkpoint."""
    api = _api(ctx)
    api.post(f"/jobs/{job_id}/resume")
    err.print(f"job {job_id} queued to resume from its last checkpoint")
    if watch:
        _finish_watch(api, job_id)


@jobs_app.command("delete")
@calls
def delete_job(
    ctx: typer.Context, job_id: str,
    delete_model: Annotated[bool, typer.Option(help="also delete the job's tuned model")] = False,
) -> None:
    """Delete a finished job with its events, metrics and checkpoints (its model stays unless asked)."""
    _api(ctx).request("DELETE", f"/jobs/{job_id}", params={"delete_model": "true"} if delete_model else None)
    console.print(f"deleted {job_id}" + (" and its model" if delete_model else ""))


# --- metrics, predict, models -----------------------------------------------------------------


def metrics(ctx: typer.Context, job_id: str, json_: JsonOpt = False) -> None:
    """A job's eval points, best and final, the last train loss and the comparison with baselines."""
    body = _api(ctx).get(f"/jobs/{job_id}/metrics")
    if json_:
        return out.print_json(console, body)
    if body["eval"]:
        console.print(out.eval_table(f"{job_id}: evaluations", body["eval"]))
    summary = body.get("summary") or {}
    if summary.get("best"):
        console.print(f"best {summary['metric']}: {out.fmt(summary['best'].get(summary['metric']))} "
                      f"at step {summary['best']['step']}")
    if body["train"]:
        last = body["train"][-1]
        console.print(f"train: {len(body['train'])} points; last at step {last['step']}: loss "
                      f"{out.fmt(last.get('loss'))}, learning rate {out.fmt(last.get('learning_rate'))}, "
                      f"{out.fmt(last.get('samples_per_second'))} samples/s")
    comparison = out.comparison_table(body.get("comparison"))
    if comparison is not None:
        console.print(comparison)
    if not body["eval"] and not body["train"]:
        console.print(f"{job_id} has no metric points yet")


def predict(
    ctx: typer.Context,
    model_id: str,
    texts: Annotated[list[str] | None, typer.Argument(help="texts to classify")] = None,
    file: Annotated[Path | None, typer.Option(exists=True, dir_okay=False,
                                              help="one text per line ('-' for stdin is not a file)")] = None,
    json_: JsonOpt = False,
) -> None:
    """Classify texts with a tuned model."""
    items = list(texts or [])
    if file is not None:
        items += [line for line in file.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not items and not sys.stdin.isatty():
        items = [line for line in sys.stdin.read().splitlines() if line.strip()]
    if not items:
        fail("no texts: give them as arguments, with --file, or on stdin")
    body = _api(ctx).post("/predict", json={"model_id": model_id, "texts": items})
    if json_:
        return out.print_json(console, body)
    rows = []
    for text, p in zip(items, body["predictions"], strict=True):
        labels = p.get("labels", [p.get("label")])
        top = max(p["scores"].values()) if p.get("scores") else None
        rows.append([text, labels, top])
    console.print(out.table(f"{model_id}", ["text", "label", "score"], rows))


def generate(
    ctx: typer.Context,
    model_id: str,
    message: Annotated[str | None, typer.Argument(help="the user's message (default: read stdin)")] = None,
    system: Annotated[str | None, typer.Option(help="a system message before it")] = None,
    max_new_tokens: int = 256,
    temperature: Annotated[float, typer.Option(help="0: greedy, deterministic")] = 0.7,
    top_p: float = 0.9,
    stream: Annotated[bool, typer.Option(help="print the reply as it is generated")] = True,
    json_: JsonOpt = False,
) -> None:
    """A tuned chat model's reply to a message, streamed as it is generated."""
    import json

    text = message if message is not None else (sys.stdin.read() if not sys.stdin.isatty() else "")
    if not text.strip():
        fail("no message: give it as an argument or on stdin")
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": text})
    body = {"model_id": model_id, "messages": messages, "max_new_tokens": max_new_tokens,
            "temperature": temperature, "top_p": top_p}
    api = _api(ctx)
    if json_ or not stream:
        reply = api.post("/generate", json={**body, "stream": False})
        return out.print_json(console, reply) if json_ else console.print(reply["message"]["content"])
    for sse in api.post_events("/generate", {**body, "stream": True}):
        data = json.loads(sse.data) if sse.data else {}
        if sse.event == "token":
            console.print(data.get("text", ""), end="", markup=False, highlight=False, soft_wrap=True)
        elif sse.event == "error":
            console.print()
            fail(f"generation failed: {data.get('detail')}")
        elif sse.event == "done":
            console.print()
            usage = data.get("usage") or {}
            err.print(f"[dim]{usage.get('prompt_tokens')} prompt + {usage.get('completion_tokens')} "
                      f"reply tokens, finish: {data.get('finish_reason')}[/]")


models_app = typer.Typer(help="List, show, download and delete tuned models.", no_args_is_help=True)


@models_app.command("list")
@calls
def list_models(ctx: typer.Context, json_: JsonOpt = False) -> None:
    """Tuned models, newest first."""
    body = _api(ctx).get("/models")
    if json_:
        return out.print_json(console, body)
    columns = ["id", "task", "base model", "labels", "job", "created"]
    console.print(out.table(f"{body['count']} models", columns, (
        [m["id"], m["task"], m["base_model"], m["labels"], m["job_id"], out.when(m["created_at"])]
        for m in body["data"])))


@models_app.command("show")
@calls
def show_model(ctx: typer.Context, model_id: str, json_: JsonOpt = False) -> None:
    """One tuned model with its metrics."""
    m = _api(ctx).get(f"/models/{model_id}")
    if json_:
        return out.print_json(console, m)
    flat = {k: v for k, v in (m.get("metrics") or {}).items() if isinstance(v, int | float)}
    console.print(out.fields(f"model {m['id']}", [
        ("task", m["task"]), ("base model", m["base_model"]), ("labels", m["labels"]), ("job", m["job_id"]),
        ("metrics", flat), ("created", out.when(m["created_at"]))]))


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
            size = _api(ctx).download(f"/models/{model_id}/download", fh,
                                      params={"merged": "true"} if merged else None)
        partial.replace(target)
    finally:
        partial.unlink(missing_ok=True)
    console.print(f"saved {target} ({size / 1e6:.1f} MB)")


@models_app.command("delete")
@calls
def delete_model(ctx: typer.Context, model_id: str) -> None:
    """Delete a tuned model (refused while a job continues from it)."""
    _api(ctx).delete(f"/models/{model_id}")
    console.print(f"deleted {model_id}")


# --- experiments ------------------------------------------------------------------------------

experiments_app = typer.Typer(help="Several base models on one dataset, ranked beside baselines.",
                              no_args_is_help=True)
EXPERIMENT_POLL_S = 2.0


def _parse_overrides(items: list[str]) -> dict[str, dict[str, Any]]:
    """`--override MODEL:key=value` -> {MODEL: {key: value}} (values as --set parses them)."""
    overrides: dict[str, dict[str, Any]] = {}
    for item in items:
        target, has_value, value = item.partition("=")
        model, sep, key = target.rpartition(":")  # the model may hold ':', the key does not
        if not (has_value and sep and model and key):
            fail(f"--override {item!r}: write it as MODEL:key=value, "
                 "e.g. --override klue/bert-base:learning_rate=3e-5")
        overrides.setdefault(model, {}).update(_parse_set([f"{key}={value}"]))
    return overrides


def _experiment_jobs(exp: dict[str, Any]) -> Any:
    return out.table(f"experiment {exp['id']}: {exp['state']} ({exp['progress']:.0%})",
                     ["base model", "job", "state", "step", "model"],
                     ([j["base_model"], j["job_id"], j["state"], f"{j['step']}/{j['total_steps'] or '?'}",
                       j["model_id"]] for j in exp["jobs"]))


def _experiment_result(exp: dict[str, Any]) -> None:
    metric = exp["primary_metric"]
    board = exp.get("leaderboard") or []
    if board:
        console.print(out.table(f"leaderboard by validation {metric}", ["rank", "kind", "name", metric,
                                                                          "test", "train s", "model"], (
            [r["rank"], r["kind"], r["name"], (r.get("validation") or {}).get(metric),
             (r.get("test") or {}).get(metric), r.get("training_time_s"), r.get("model_id")] for r in board)))
    rec = exp.get("recommendation")
    if rec:
        console.print(f"[bold]recommended:[/] {rec['message']}")


@experiments_app.command("create")
@calls
def create_experiment(
    ctx: typer.Context,
    base_model: Annotated[list[str], typer.Option(
        "--base-model", help="repeat for each model: hub name, local directory or tuned model id")],
    dataset: Annotated[str | None, typer.Option(help="an uploaded dataset's id")] = None,
    train: Annotated[Path | None, typer.Option(exists=True, dir_okay=False, help="upload this first")] = None,
    validation: Annotated[Path | None, typer.Option(exists=True, dir_okay=False)] = None,
    name: str | None = None,
    epochs: float | None = None,
    batch_size: int | None = None,
    learning_rate: float | None = None,
    max_seq_length: int | None = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="a shared hyperparameter, key=value")]
    = None,
    override: Annotated[list[str] | None, typer.Option(
        help="a hyperparameter for one model only, MODEL:key=value (repeatable)")] = None,
    watch: Annotated[bool, typer.Option(help="follow the jobs until all end, then show the leaderboard")]
    = False,
    json_: JsonOpt = False,
) -> None:
    """Fine-tune several base models on one dataset (same split and seed), ranked with baselines."""
    api = _api(ctx)
    if (dataset is None) == (train is None):
        fail("give exactly one of --dataset ID or --train FILE")
    if train is not None:
        ds = _upload(api, train, validation)
        err.print(f"uploaded {train.name} as dataset {ds['id']}: {ds['task']}, labels {ds['labels']}")
        dataset = ds["id"]
    options = {"epochs": epochs, "batch_size": batch_size, "learning_rate": learning_rate,
               "max_seq_length": max_seq_length}
    hyperparameters = {k: v for k, v in options.items() if v is not None} | _parse_set(set_ or [])
    exp = api.post("/experiments", json={
        "dataset_id": dataset, "name": name, "base_models": base_model, "hyperparameters": hyperparameters,
        "overrides": _parse_overrides(override or [])})
    if not watch:
        return out.print_json(console, exp) if json_ else console.print(_experiment_jobs(exp))
    _watch_experiment(api, exp["id"], json_)


def _watch_experiment(api: Api, experiment_id: str, json_: bool) -> None:
    from rich.live import Live

    try:
        exp = api.get(f"/experiments/{experiment_id}")
        with Live(_experiment_jobs(exp), console=console, refresh_per_second=2) as live:
            while exp["state"] in ("queued", "running"):
                time.sleep(EXPERIMENT_POLL_S)
                exp = api.get(f"/experiments/{experiment_id}")
                live.update(_experiment_jobs(exp))
    except KeyboardInterrupt:
        err.print(f"\nstopped watching; experiment {experiment_id} keeps running. "
                  f"`tuneserve experiments show {experiment_id}` shows it.")
        raise typer.Exit(130) from None
    if json_:
        out.print_json(console, exp)
    else:
        _experiment_result(exp)
    if exp["state"] != "succeeded":
        fail(f"experiment {experiment_id} {exp['state']}")


@experiments_app.command("list")
@calls
def list_experiments(ctx: typer.Context, json_: JsonOpt = False) -> None:
    """Experiments, newest first."""
    body = _api(ctx).get("/experiments")
    if json_:
        return out.print_json(console, body)
    console.print(out.table(f"{body['count']} experiments", ["id", "name", "state", "progress", "models",
                                                             "created"], (
        [e["id"], e["name"], e["state"], f"{e['progress']:.0%}", e["base_models"], out.when(e["created_at"])]
        for e in body["data"])))


@experiments_app.command("show")
@calls
def show_experiment(ctx: typer.Context, experiment_id: str, json_: JsonOpt = False) -> None:
    """One experiment: its jobs, the leaderboard beside the baselines, the recommended model."""
    exp = _api(ctx).get(f"/experiments/{experiment_id}")
    if json_:
        return out.print_json(console, exp)
    console.print(_experiment_jobs(exp))
    _experiment_result(exp)


@experiments_app.command("watch")
@calls
def watch_experiment(ctx: typer.Context, experiment_id: str, json_: JsonOpt = False) -> None:
    """Follow an experiment's jobs until all end, then show the leaderboard."""
    _watch_experiment(_api(ctx), experiment_id, json_)


@experiments_app.command("cancel")
@calls
def cancel_experiment(ctx: typer.Context, experiment_id: str) -> None:
    """Cancel every job of the experiment still queued or running."""
    exp = _api(ctx).post(f"/experiments/{experiment_id}/cancel")
    console.print(_experiment_jobs(exp))


@experiments_app.command("delete")
@calls
def delete_experiment(
    ctx: typer.Context, experiment_id: str,
    delete_models: Annotated[bool, typer.Option(help="also delete the tuned models of its jobs")] = False,
) -> None:
    """Delete a finished experiment and its jobs (their models stay unless asked)."""
    _api(ctx).request("DELETE", f"/experiments/{experiment_id}",
                      params={"delete_models": "true"} if delete_models else None)
    console.print(f"deleted {experiment_id}")


def register(root: typer.Typer) -> None:
    root.add_typer(datasets_app, name="datasets")
    root.add_typer(jobs_app, name="jobs")
    root.add_typer(models_app, name="models")
    root.add_typer(experiments_app, name="experiments")
    root.command("metrics")(calls(metrics))
    root.command("predict")(calls(predict))
    root.command("generate")(calls(generate))
