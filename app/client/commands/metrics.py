"""`tuneserve metrics`, and the result shown when a watched job ends: evaluations, the train
loss and the comparison with the baselines, or a chat job's base-vs-tuned report
(GET /jobs/{id}/metrics)."""

from __future__ import annotations

from typing import Any

import typer

from app.client import output as out
from app.client.api import Api
from app.client.commands.common import JsonOpt, api_of, console


def print_job_result(api: Api, job: dict[str, Any]) -> None:
    """The job; when it succeeded, its best and final evaluations, the comparison and its model."""
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
    for part in out.chat_report(metrics.get("comparison")):
        console.print(part)
    command = "generate" if job.get("task") == "chat" else "predict"
    console.print(f"model [bold]{job['model_id']}[/]: `tuneserve {command} {job['model_id']} \"some text\"`")


def metrics(ctx: typer.Context, job_id: str, json_: JsonOpt = False) -> None:
    """A job's eval points, best and final, the last train loss, the comparison with baselines and
    the per-class report (precision, recall, F1, support) with the confusion matrix; for a chat
    job, the base-vs-tuned report (BLEU, chrF, cosine, what was scored, example replies)."""
    body = api_of(ctx).get(f"/jobs/{job_id}/metrics")
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
    for part in out.chat_report(body.get("comparison")):
        console.print(part)
    for title, figures in _reports(body):
        for report in (out.per_class_table(f"per class {title}", figures),
                       out.confusion_table(f"confusion matrix {title}", figures)):
            if report is not None:
                console.print(report)
    if not body["eval"] and not body["train"] and not body.get("comparison"):
        console.print(f"{job_id} has no metric points yet")


def _reports(body: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """Whose per-class figures to show: the tuned model's on each split the comparison scored
    (the final model on every row), else the best evaluation's."""
    splits = (body.get("comparison") or {}).get("splits") or {}
    scored = [(f"on the {split} split (tuned model)", figures["tuned"]) for split, figures in splits.items()
              if isinstance(figures.get("tuned"), dict)]
    if scored:
        return scored
    best = (body.get("summary") or {}).get("best")
    return [(f"at the best evaluation (step {best['step']})", best)] if best else []
