"""`tuneserve up`: the whole service on one machine, in one command.

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

from app.migrate import upgrade_head
from app.settings import get_settings

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
    from app.db import session_scope

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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tuneserve", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    up_parser = sub.add_parser("up", help="migrate, then run the API and a training worker")
    up_parser.add_argument("--host", default="127.0.0.1")
    up_parser.add_argument("--port", type=int, default=8000)
    up_parser.add_argument("--loglevel", default="INFO")
    sub.add_parser("migrate", help="apply the database migrations and exit")
    keys_parser = sub.add_parser("keys", help="API keys (TUNESERVE_AUTH=on): create, list, revoke")
    keys_sub = keys_parser.add_subparsers(dest="keys_command", required=True)
    create = keys_sub.add_parser("create", help="make a key and print it once")
    create.add_argument("--name", required=True, help="who the key is for, e.g. alice")
    create.add_argument("--admin", action="store_true", help="sees and manages every tenant's work")
    keys_sub.add_parser("list", help="ids, names and roles of the keys (never the keys)")
    revoke = keys_sub.add_parser("revoke", help="stop a key from working")
    revoke.add_argument("key_id", help="the key's id (key_...), as `keys list` shows it")
    args = parser.parse_args(argv)
    if args.command == "keys":
        return keys(args)
    if args.command == "migrate":
        upgrade_head(get_settings().database_url)
        _say("database schema is at head")
        return 0
    return up(args.host, args.port, args.loglevel)


if __name__ == "__main__":
    sys.exit(main())
