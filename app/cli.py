"""The `tuneserve` command. `tuneserve up`: the whole service on one machine, in one command.

Applies the migrations, then runs the API (uvicorn) and one training worker (Celery, solo
pool) as child processes, restarts the worker if it dies (its job resumes from the last
checkpoint), and stops both on Ctrl-C.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from types import FrameType
from typing import Annotated

import typer

from app.client.commands import register
from app.client.plan import register as register_plan
from app.migrate import upgrade_head
from core.settings import get_settings

# A worker that dies faster than this after its start is failing to start, not crashing:
# stop instead of restarting it in a tight loop.
MIN_WORKER_UPTIME_S = 10.0
STOP_GRACE_S = 15.0


def _say(message: str) -> None:
    print(f"tuneserve: {message}", flush=True)


def _api_command(host: str, port: int) -> list[str]:
    return [sys.executable, "-m", "uvicorn", "app.main:app", "--host", host, "--port", str(port)]


def _worker_command(loglevel: str) -> list[str]:
    return [sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker", "--pool", "solo",
            "--concurrency", "1", "--queues", "training", "--loglevel", loglevel,
            "--hostname", f"tuneserve-{os.getpid()}@%h"]


def _stop(proc: subprocess.Popen[bytes] | None, sig: int) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout=STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def up(host: str, port: int, loglevel: str) -> int:
    settings = get_settings()
    settings.ensure_dirs()
    upgrade_head(settings.database_url)
    env = dict(os.environ)
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    # Children must not re-run the migrations concurrently: they were applied just above.
    env["TUNESERVE_AUTO_MIGRATE"] = "false"
    db = settings.database_url.split("@")[-1]
    _say(f"database {db}; broker {settings.broker_url.split('@')[-1]}; models in {settings.models_dir}")

    stopping = False

    def _on_signal(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)

    # New sessions: Ctrl-C reaches only this supervisor, which stops the children in order.
    api = subprocess.Popen(_api_command(host, port), env=env, start_new_session=True)
    worker = subprocess.Popen(_worker_command(loglevel), env=env, start_new_session=True)
    worker_started = time.monotonic()
    _say(f"API on http://{host}:{port} (docs at /docs); worker pid {worker.pid}. Ctrl-C stops both.")
    code = 0
    while not stopping:
        time.sleep(0.5)
        if api.poll() is not None:
            _say(f"the API exited with code {api.returncode}; stopping")
            code = api.returncode or 1
            break
        if worker.poll() is not None:
            if time.monotonic() - worker_started < MIN_WORKER_UPTIME_S:
                _say(f"the worker exited with code {worker.returncode} right after starting; stopping")
                code = worker.returncode or 1
                break
            _say(f"the worker exited with code {worker.returncode}; starting a new one "
                 "(a running job resumes from its last checkpoint)")
            worker = subprocess.Popen(_worker_command(loglevel), env=env, start_new_session=True)
            worker_started = time.monotonic()
    _say("stopping the worker (a running job resumes from its last checkpoint next time) and the API")
    # SIGQUIT is Celery's cold shutdown: it does not wait for a training job to finish.
    _stop(worker, signal.SIGQUIT)
    _stop(api, signal.SIGTERM)
    _say("stopped")
    return code


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
