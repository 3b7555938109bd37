"""The `tuneserve` command. `tuneserve up`: the whole service on one machine, in one command
(app/supervisor.py: the API and a training worker as child processes, stopped on Ctrl-C without
losing the running job's work)."""

from __future__ import annotations

import argparse
import sys
from typing import Annotated

import typer

from app.client.commands import register
from app.client.plan import register as register_plan
from app.migrate import upgrade_head
from app.supervisor import up
from core.settings import get_settings


def _say(message: str) -> None:
    print(f"tuneserve: {message}", flush=True)


def keys(args: argparse.Namespace) -> int:
    """Create, list or revoke API keys, straight in the database (no running API needed)."""
    from app.auth import create_key, list_keys, revoke_key
    from core.db import session_scope

    settings = get_settings()
    upgrade_head(settings.database_url)
    with session_scope() as session:
        if args.keys_command == "create":
            row, key = create_key(session, name=args.name, is_admin=args.admin)
            _say(f"created {'admin ' if row.is_admin else ''}key {row.id} for {row.name!r}. "
                 "It is shown this once; only its hash is stored:")
            print(key)
            if not settings.auth:
                _say("note: TUNESERVE_AUTH is off here, so the API does not ask for keys yet")
            return 0
        if args.keys_command == "list":
            for row in list_keys(session):
                state = f"revoked {row.revoked_at:%Y-%m-%d}" if row.revoked_at else "active"
                print(f"{row.id}\t{row.name}\t{'admin' if row.is_admin else 'user'}\t{state}")
            return 0
        if revoke_key(session, key_id=args.key_id):
            _say(f"revoked {args.key_id}; requests with it now get 401")
            return 0
        _say(f"no active key {args.key_id!r}; `tuneserve keys list` shows them")
        return 1


app = typer.Typer(
    name="tuneserve", no_args_is_help=True, pretty_exceptions_enable=False,
    help="Fine-tune Hugging Face text models and serve them. `up` and `migrate` run the service "
         "here; the other commands are a client of a running server (--url, --api-key).",
)


@app.callback()
def _root(
    url: Annotated[str, typer.Option(envvar="TUNESERVE_URL", help="the server the client commands call")]
    = "http://127.0.0.1:8000",
    api_key: Annotated[str | None, typer.Option(
        envvar="TUNESERVE_API_KEY", help="sent as `Authorization: Bearer <key>` (TUNESERVE_AUTH=on)")] = None,
) -> None:
    """Options for the client commands; `up`, `migrate` and `keys` ignore them."""


@app.command("up")
def _up(host: str = "127.0.0.1", port: int = 8000, loglevel: str = "INFO") -> None:
    """Migrate, then run the API and a training worker (Ctrl-C stops both)."""
    raise typer.Exit(up(host, port, loglevel))


@app.command("migrate")
def _migrate() -> None:
    """Apply the database migrations and exit."""
    upgrade_head(get_settings().database_url)
    _say("database schema is at head")


keys_app = typer.Typer(help="API keys (TUNESERVE_AUTH=on): create, list, revoke.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")


@keys_app.command("create")
def _keys_create(
    name: Annotated[str, typer.Option(help="who the key is for, e.g. alice")],
    admin: Annotated[bool, typer.Option(help="sees and manages every tenant's work")] = False,
) -> None:
    """Make a key and print it once."""
    raise typer.Exit(keys(argparse.Namespace(keys_command="create", name=name, admin=admin)))


@keys_app.command("list")
def _keys_list() -> None:
    """Ids, names and roles of the keys (never the keys)."""
    raise typer.Exit(keys(argparse.Namespace(keys_command="list")))


@keys_app.command("revoke")
def _keys_revoke(
    key_id: Annotated[str, typer.Argument(help="the key's id (key_...), as `keys list` shows it")],
) -> None:
    """Stop a key from working."""
    raise typer.Exit(keys(argparse.Namespace(keys_command="revoke", key_id=key_id)))


register(app)
register_plan(app)


def main(argv: list[str] | None = None) -> int:
    """The console script. Returns the exit code instead of exiting, for callers and tests."""
    try:
        app(args=argv, prog_name="tuneserve")
    except SystemExit as done:
        return done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
