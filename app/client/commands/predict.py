"""`tuneserve predict` (a classifier's labels for texts) and `tuneserve generate` (a chat
model's reply)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from app.client import output as out
from app.client.commands.common import JsonOpt, api_of, console, err, fail


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
    body = api_of(ctx).post("/predict", json={"model_id": model_id, "texts": items})
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
