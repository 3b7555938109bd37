"""What the client prints: tables for people (rich), JSON for scripts."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

from rich.console import Console
from rich.table import Table

# Eval figures worth a column, in this order, when a job has them (the rest: --json); few
# enough to fit an 80-column terminal.
EVAL_COLUMNS = ("loss", "accuracy", "f1_macro", "f1_weighted", "f1_micro", "subset_accuracy",
                "hamming_loss", "token_accuracy", "perplexity")

HEADLINE_HYPERPARAMETERS = ("epochs", "batch_size", "learning_rate", "max_seq_length")


def print_json(console: Console, value: Any) -> None:
    # Plain print (no highlighting or wrapping), so a script can pipe it into jq.
    console.print_json(json.dumps(value, ensure_ascii=False), highlight=False)


def fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if value and (abs(value) < 1e-3 or abs(value) >= 1e4):
            return f"{value:.4g}"
        return f"{value:.4f}".rstrip("0").rstrip(".")
    if isinstance(value, list):
        return ", ".join(fmt(v) for v in value)
    if isinstance(value, dict):
        return ", ".join(f"{k} {fmt(v)}" for k, v in value.items())
    return str(value)


def when(value: str | None) -> str:
    return value.replace("T", " ")[:19] if value else "-"


def table(title: str | None, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> Table:
    out = Table(title=title, title_justify="left", show_lines=False)
    for column in columns:
        # Ids stay whole, so they can be copied; long texts fold instead.
        out.add_column(column, overflow="fold", no_wrap=column in ("id", "job", "model"))
    for row in rows:
        out.add_row(*(fmt(v) for v in row))
    return out


def fields(title: str | None, pairs: Iterable[tuple[str, Any]]) -> Table:
    """A two-column key/value table for one object."""
    out = Table(title=title, title_justify="left", show_header=False)
    out.add_column(style="bold")
    out.add_column(overflow="fold")
    for key, value in pairs:
        out.add_row(key, fmt(value))
    return out


def batch(job: dict[str, Any]) -> str:
    micro, accum = job.get("micro_batch_size"), job.get("grad_accum_steps")
    return f"{micro} x {accum}" if micro and accum else "-"


def job_fields(job: dict[str, Any]) -> Table:
    hp = job.get("hyperparameters") or {}
    pairs: list[tuple[str, Any]] = [
        ("job", job["id"]), ("state", job["state"]), ("dataset", job["dataset_id"]),
        ("base model", job["base_model"]),
        ("step", f"{job['step']}/{job['total_steps'] or '?'} ({job['progress']:.0%})"),
        ("epoch", round(job["epoch"], 2)),
        ("micro-batch x accumulation", batch(job)),
        ("hyperparameters", ", ".join(f"{k} {fmt(hp[k])}" for k in HEADLINE_HYPERPARAMETERS if k in hp)),
    ]
    if job.get("best_metric") is not None:
        pairs.append((f"best {job['best_metric_name']}", job["best_metric"]))
    if job.get("device"):
        pairs.append(("device", job["device"]))
    pairs += [("model", job.get("model_id")), ("created", when(job["created_at"])),
              ("finished", when(job.get("finished_at")))]
    if job.get("error"):
        pairs.append(("error", job["error"]))
    return fields(None, pairs)


def eval_table(title: str, points: list[dict[str, Any]], names: list[str] | None = None) -> Table:
    """Eval points as rows; `names` labels each row (e.g. best, final) in a first column."""
    present = [c for c in EVAL_COLUMNS if any(isinstance(p.get(c), int | float) for p in points)]
    rows = [[p["step"], round(p["epoch"], 2), *(p.get(c) for c in present)] for p in points]
    if names:
        labelled = ([name, *row] for name, row in zip(names, rows, strict=True))
        return table(title, ["eval", "step", "epoch", *present], labelled)
    return table(title, ["step", "epoch", *present], rows)


def comparison_table(comparison: dict[str, Any] | None) -> Table | None:
    """One row per split and metric, one column per side the comparison scored: `tuned` and the
    `tfidf` and `majority` baselines for classification (any other family's sides as they come)."""
    splits = (comparison or {}).get("splits") or {}
    sides: list[str] = []
    for figures in splits.values():
        # A side holds the same metrics as `tuned` (not the deltas, nor the disagreement list).
        metrics = [m for m, v in (figures.get("tuned") or {}).items() if isinstance(v, int | float)]
        sides += [k for k, v in figures.items()
                  if isinstance(v, dict) and not k.startswith("delta") and k not in sides
                  and any(isinstance(v.get(m), int | float) for m in metrics)]
    rows = []
    for split, figures in splits.items():
        tuned = figures.get("tuned") or {}
        for metric in tuned:
            if isinstance(tuned[metric], int | float):
                rows.append([split, metric, *((figures.get(side) or {}).get(metric) for side in sides)])
    title = "tuned vs baselines" if "tfidf" in sides else " vs ".join(sides)
    return table(title, ["split", "metric", *sides], rows) if rows else None


def per_class_table(title: str, figures: dict[str, Any]) -> Table | None:
    """scikit-learn's classification report from an evaluation's figures: per class (per label
    for multi-label, with its threshold) precision, recall, F1 and support, then the averages."""
    classes = figures.get("per_class") or figures.get("per_label")
    if not isinstance(classes, dict) or not classes:
        return None
    thresholds = any("threshold" in v for v in classes.values())
    rows: list[list[Any]] = [
        [name, v.get("precision"), v.get("recall"), v.get("f1"), v.get("support"),
         *([v.get("threshold")] if thresholds else [])] for name, v in classes.items()]
    total = sum(int(v.get("support") or 0) for v in classes.values())
    pad = [None] if thresholds else []
    # The summary rows as classification_report writes them; a figure the job lacks stays blank.
    if "accuracy" in figures:
        rows.append(["accuracy", None, None, figures["accuracy"], total, *pad])
    if "f1_macro" in figures:
        rows.append(["macro avg", figures.get("precision_macro"), figures.get("recall_macro"),
                     figures["f1_macro"], total, *pad])
    if "f1_micro" in figures:
        rows.append(["micro avg", None, None, figures["f1_micro"], total, *pad])
    if "f1_weighted" in figures:
        rows.append(["weighted avg", None, None, figures["f1_weighted"], total, *pad])
    columns = ["label" if thresholds else "class", "precision", "recall", "f1", "support"]
    return table(title, columns + (["threshold"] if thresholds else []), rows)


def confusion_table(title: str, figures: dict[str, Any]) -> Table | None:
    """The confusion matrix: a row per true label, a column per predicted label."""
    confusion = figures.get("confusion_matrix") or {}
    labels, matrix = confusion.get("labels"), confusion.get("matrix")
    if not labels or not matrix:
        return None
    return table(title, ["true \\ predicted", *labels],
                 ([label, *counts] for label, counts in zip(labels, matrix, strict=True)))


# A chat report's scores, in the order and with the names of the dashboard's chat job page.
CHAT_SCORES = (("bleu", "BLEU"), ("chrf", "chrF"), ("cosine_similarity", "cosine (MiniLM)"))
# Example replies printed side by side; the report keeps a few more (--json has them all).
CHAT_EXAMPLES_SHOWN = 2


def chat_report(comparison: dict[str, Any] | None) -> list[Table | str]:
    """A chat job's base-vs-tuned report as the dashboard's job page shows it: the scores of the
    base and the tuned model with the change, what was scored (count, cap, decoding), then
    example replies of both beside the reference. Empty for any other comparison."""
    if not comparison or "splits" in comparison or "decoding" not in comparison:
        return []
    if not isinstance(comparison.get("tuned"), dict):
        return [f"base vs tuned: nothing scored ({comparison.get('prompts', 0)} held-out prompts)"]
    base, tuned, delta = comparison.get("base") or {}, comparison["tuned"], comparison.get("delta") or {}
    names = {"bleu": f"BLEU ({comparison.get('bleu_tokenize')})"}
    scores = table("base vs tuned", ["metric", "base", "tuned", "change"],
                   ([names.get(key, name), base.get(key), tuned.get(key), delta.get(key)]
                    for key, name in CHAT_SCORES))
    scored = f"{comparison.get('prompts')} of {comparison.get('prompts_in_split')}"
    if comparison.get("max_prompts"):
        scored += f" (capped at {comparison['max_prompts']})"
    facts: list[tuple[str, Any]] = [
        ("split", comparison.get("split")), ("prompts scored", scored),
        ("decoding", f"{comparison.get('decoding')}, at most {comparison.get('max_new_tokens')} new tokens")]
    if comparison.get("generation_s") is not None:
        facts.append(("generation time", f"{fmt(comparison['generation_s'])} s"))
    examples = comparison.get("examples") or []
    shown = table(f"example replies ({min(len(examples), CHAT_EXAMPLES_SHOWN)} of {len(examples)}; "
                  "--json has all)" if len(examples) > CHAT_EXAMPLES_SHOWN else "example replies",
                  ["row", "prompt", "reference", "base", "tuned"],
                  ([e.get("row"), e.get("prompt"), e.get("reference"), e.get("base"), e.get("tuned")]
                   for e in examples[:CHAT_EXAMPLES_SHOWN]))
    return [scores, fields(None, facts), *([shown] if examples else [])]
