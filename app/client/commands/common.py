"""What every client command shares: the consoles, the API client of the invocation, how a
refusal or an unreachable server ends a command, the hyperparameter options of `jobs create`
and `experiments create`, and what Ctrl-C does to a watch."""

from __future__ import annotations

import functools
import inspect
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console

from app.client import output as out
from app.client.api import DEFAULT_URL, Api, ApiError
from app.client.seed_config import SeedConfigError

console = Console(highlight=False, soft_wrap=False)
err = Console(stderr=True, highlight=False)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print the server's JSON instead of a table.")]
WatchOpt = Annotated[bool, typer.Option(help="watch it live until it ends")]


def api_of(ctx: typer.Context) -> Api:
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
    """Server refusals and unreachable servers become one line on stderr and an exit code:
    1 for a refusal, 2 for no answer at all."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except ApiError as exc:
            fail(f"{exc.detail} (HTTP {exc.status})" if exc.status else exc.detail, 1 if exc.status else 2)
        except SeedConfigError as exc:
            fail(str(exc))
    return wrapper


def print_or_json(body: Any, json_: bool, render: Callable[[Any], Any]) -> None:
    """The server's body as JSON with --json, else what `render` makes of it."""
    if json_:
        out.print_json(console, body)
    else:
        console.print(render(body))


def print_page(body: dict[str, Any], json_: bool, noun: str, columns: list[str],
               row: Callable[[dict[str, Any]], list[Any]]) -> None:
    """A list route's page ({data, count}): one table row per item, or the JSON."""
    print_or_json(body, json_, lambda page: out.table(f"{page['count']} {noun}", columns,
                                                      (row(item) for item in page["data"])))


def add_list_command(app: typer.Typer, path: str, noun: str, columns: list[str],
                     row: Callable[[dict[str, Any]], list[Any]]) -> None:
    """`<resource> list`: GET `path` (newest first), a table of `columns` made by `row`."""

    @app.command("list", help=f"{noun.capitalize()}, newest first.")
    @calls
    def list_items(ctx: typer.Context, json_: JsonOpt = False) -> None:
        print_page(api_of(ctx).get(path), json_, noun, columns, row)


@contextmanager
def ctrl_c_stops_watching(what: str, hint: str) -> Iterator[None]:
    """Ctrl-C during a watch stops the watch, not the work: say so, and how to pick it up, and
    exit 130 (the shell's code for an interrupt)."""
    try:
        yield
    except KeyboardInterrupt:
        err.print(f"\nstopped watching; {what} keeps running. {hint}")
        raise typer.Exit(130) from None


def parse_set(items: list[str]) -> dict[str, Any]:
    """`--set key=value`: the value as JSON when it parses (numbers, true, null), else a string."""
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


def _number_or_word(value: str) -> float | str:
    """--learning-rate 3e-5 or --learning-rate auto; the service says what else is wrong."""
    try:
        return float(value)
    except ValueError:
        return value


# The hyperparameters a command line names most; `--set` reaches every other one.
_HYPERPARAMETER_OPTIONS = {
    "epochs": Annotated[float | None, typer.Option(help="passes over the training split")],
    "batch_size": Annotated[int | None, typer.Option(help="the effective batch")],
    "learning_rate": Annotated[str | None, typer.Option(
        help='the peak learning rate, or "auto": chosen by a range test before training')],
    "max_seq_length": Annotated[int | None, typer.Option(help="tokens per text; longer ones are cut")],
    "set_": Annotated[list[str] | None, typer.Option(
        "--set", help="any other hyperparameter, key=value (repeatable)")],
}


def hyperparameter_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Gives a command --epochs, --batch-size, --learning-rate, --max-seq-length and --set in
    place of its `hyperparameters` parameter, which receives what was given as one dict."""
    signature = inspect.signature(command, eval_str=True)
    if "hyperparameters" not in signature.parameters:
        raise TypeError(f"{command.__name__} has no `hyperparameters` parameter to receive the options")
    options = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=annotation)
               for name, annotation in _HYPERPARAMETER_OPTIONS.items()]
    parameters: list[inspect.Parameter] = []
    for parameter in signature.parameters.values():
        if parameter.name == "hyperparameters":
            parameters += options
        else:
            # Keyword-only, so that the options may sit among parameters of any kind.
            parameters.append(parameter.replace(kind=inspect.Parameter.KEYWORD_ONLY))

    @functools.wraps(command)
    def wrapper(**kwargs: Any) -> Any:
        given = {name: kwargs.pop(name) for name in _HYPERPARAMETER_OPTIONS}
        extra = given.pop("set_")
        if given["learning_rate"] is not None:
            given["learning_rate"] = _number_or_word(given["learning_rate"])
        hyperparameters = {k: v for k, v in given.items() if v is not None} | parse_set(extra or [])
        return command(**kwargs, hyperparameters=hyperparameters)

    # Typer reads the command's parameters from these two.
    wrapper.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
    wrapper.__annotations__ = {p.name: p.annotation for p in parameters} | {
        "return": signature.return_annotation}
    return wrapper
