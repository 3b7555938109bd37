"""`tuneserve predict` (a classifier's labels for texts, or for every row of a file) and
`tuneserve generate` (a chat model's reply)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.filesize import decimal

from app.client import output as out
from app.client.api import Api
from app.client.commands.common import JsonOpt, api_of, console, err, fail
from app.client.predict_file import FORMATS, default_output, format_for, predict_file, score_written


def predict(
    ctx: typer.Context,
    model_id: str,
    texts: Annotated[list[str] | None, typer.Argument(help="texts to classify (or one per line on stdin)")]
    = None,
    file: Annotated[Path | None, typer.Option(
        exists=True, dir_okay=False,
        help="score a whole file (csv, tsv, jsonl, parquet), as an upload is read")] = None,
    output: Annotated[Path | None, typer.Option(
        "--output", "-o", help="with --file: where the scored rows go (default: <file>.predictions.csv)")]
    = None,
    format_: Annotated[str | None, typer.Option(
        "--format", help="with --file: csv or jsonl (default: from the output's suffix, else csv)")] = None,
    text_column: Annotated[str | None, typer.Option(
        help="with --file: the column to classify (default: inferred as uploads infer it)")] = None,
    json_: JsonOpt = False,
) -> None:
    """Classify texts with a tuned model, or every row of a file (--file in.tsv -o out.csv)."""
    if file is not None:
        return _predict_file(api_of(ctx), model_id, file, output, format_, text_column, bool(texts) or json_)
    if output is not None or format_ is not None or text_column is not None:
        fail("-o, --format and --text-column go with --file")
    items = list(texts or [])
    if not items and not sys.stdin.isatty():
        items = [line for line in sys.stdin.read().splitlines() if line.strip()]
    if not items:
        fail("no texts: give them as arguments, on stdin (one per line), or a file with --file")
    body = api_of(ctx).post("/predict", json={"model_id": model_id, "texts": items})
    if json_:
        return out.print_json(console, body)
    rows = []
    for text, p in zip(items, body["predictions"], strict=True):
        labels = p.get("labels", [p.get("label")])
        top = max(p["scores"].values()) if p.get("scores") else None
        rows.append([text, labels, top])
    console.print(out.table(f"{model_id}", ["text", "label", "score"], rows))


def _predict_file(api: Api, model_id: str, source: Path, output: Path | None, fmt: str | None,
                  text_column: str | None, conflicting: bool) -> None:
    if conflicting:
        fail("--file scores the file's rows into -o: give no texts and no --json with it "
             "(--format jsonl writes JSON lines)")
    if fmt is not None and fmt not in FORMATS:
        fail(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}")
    chosen = format_for(output, fmt) if output is not None else (fmt or "csv")
    target = output or default_output(source, chosen)
    if target.resolve() == source.resolve():
        fail(f"-o {target} is the input file; name another output")
    written = predict_file(api, model_id, source, target, chosen, text_column, err)
    short = (f" (the server announced {written.expected_rows})"
             if written.expected_rows is not None and written.expected_rows != written.rows else "")
    console.print(f"wrote {written.rows} scored rows to {target}{short} ({decimal(written.size_bytes)})")
    scores = score_written(target, chosen, written)
    if scores is not None:
        console.print(f"against the file's {written.true_label_column!r} column, {scores['rows']} rows: "
                      f"accuracy {scores['accuracy']:.4f}, macro F1 {scores['f1_macro']:.4f}")
        labels = scores["labels"]
        console.print(out.table("confusion matrix (rows: true, columns: predicted)", ["true", *labels],
                                [[label, *row] for label, row in zip(labels, scores["confusion_matrix"],
                                                                     strict=True)]))


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
    text = message if message is not None else (sys.stdin.read() if not sys.stdin.isatty() else "")
    if not text.strip():
        fail("no message: give it as an argument or on stdin")
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": text})
    body = {"model_id": model_id, "messages": messages, "max_new_tokens": max_new_tokens,
            "temperature": temperature, "top_p": top_p}
    api = api_of(ctx)
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
