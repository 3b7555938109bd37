"""`tuneserve up`: the API (uvicorn) and one training worker (Celery, solo pool) as child
processes of one supervisor, which restarts the worker if it dies (its job resumes from the last
checkpoint) and stops both on Ctrl-C without losing the running job's work.

Stopping: the first Ctrl-C (or SIGTERM) asks the worker to stop after its current optimizer
step; it writes a checkpoint there and queues the job again, so the next `tuneserve up` resumes
at that step. A second Ctrl-C stops the worker at once (the job resumes from its last
checkpoint). Whatever happened to this process's stdout (a closed pipe, a terminal gone), the
children are stopped: their output goes through this process, which drops what it cannot
write, and they are sent SIGTERM by the kernel if this process dies.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from types import FrameType
from typing import IO

from app.migrate import upgrade_head
from core.settings import get_settings

# A worker that dies faster than this after its start is failing to start, not crashing:
# stop instead of restarting it in a tight loop.
MIN_WORKER_UPTIME_S = 10.0
# How long the worker gets to finish its optimizer step and write the checkpoint there.
WORKER_STOP_GRACE_S = 120.0
API_STOP_GRACE_S = 15.0
PR_SET_PDEATHSIG = 1


class Output:
    """This process's stdout, which may go away (a closed pipe): writes that fail are dropped,
    never raised, so the supervisor always gets to stop its children."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.broken = False

    def write(self, data: bytes) -> None:
        if self.broken:
            return
        with self.lock:
            try:
                sys.stdout.buffer.write(data)
                sys.stdout.buffer.flush()
            except (OSError, ValueError):
                self.broken = True

    def say(self, message: str) -> None:
        self.write(f"tuneserve: {message}\n".encode())

    def forward(self, stream: IO[bytes]) -> None:
        """Copy a child's output here line by line until it closes (drained even when dropped,
        so the child never blocks on a full pipe)."""
        for line in iter(stream.readline, b""):
            self.write(line)


def _die_with_parent() -> None:
    """In the child, before exec: the kernel sends SIGTERM if the supervisor dies (Linux)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: the children outlive a killed supervisor
        pass


def api_command(host: str, port: int) -> list[str]:
    return [sys.executable, "-m", "uvicorn", "app.main:app", "--host", host, "--port", str(port)]


def worker_command(loglevel: str) -> list[str]:
    return [sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker", "--pool", "solo",
            "--concurrency", "1", "--queues", "training", "--loglevel", loglevel,
            "--hostname", f"tuneserve-{os.getpid()}@%h"]


def _spawn(command: list[str], env: dict[str, str], out: Output) -> subprocess.Popen[bytes]:
    # A new session: Ctrl-C reaches only this supervisor, which stops the children in order.
    proc = subprocess.Popen(command, env=env, start_new_session=True, preexec_fn=_die_with_parent,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.stdout is not None
    threading.Thread(target=out.forward, args=(proc.stdout,), daemon=True).start()
    return proc


class Signals:
    def __init__(self) -> None:
        self.count = 0

    def __call__(self, signum: int, _frame: FrameType | None) -> None:
        self.count += 1


def _wait(proc: subprocess.Popen[bytes], timeout_s: float, until: threading.Event | None = None,
          signals: Signals | None = None, seen: int = 0) -> bool:
    """Wait for `proc` to exit; False on timeout or when another signal arrives."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return True
        if signals is not None and signals.count > seen:
            return False
        time.sleep(0.2)
    return proc.poll() is not None


def _stop_worker(worker: subprocess.Popen[bytes], signals: Signals, out: Output) -> None:
    if worker.poll() is not None:
        return
    seen = min(signals.count, 1)  # the signal that started the stop (none: the API exited)
    if signals.count <= seen:
        worker.send_signal(signal.SIGTERM)  # stop after the current step, checkpoint, queue the job
        if _wait(worker, WORKER_STOP_GRACE_S, signals=signals, seen=seen):
            return
    if signals.count > seen:
        out.say("stopping the worker at once (the job resumes from its last checkpoint)")
    worker.send_signal(signal.SIGQUIT)  # the worker's stop at once
    if not _wait(worker, API_STOP_GRACE_S):
        worker.kill()
        worker.wait()


def _stop_api(api: subprocess.Popen[bytes]) -> None:
    if api.poll() is not None:
        return
    api.send_signal(signal.SIGTERM)
    if not _wait(api, API_STOP_GRACE_S):
        api.kill()
        api.wait()


def up(host: str, port: int, loglevel: str) -> int:
    out = Output()
    settings = get_settings()
    settings.ensure_dirs()
    upgrade_head(settings.database_url)
    env = dict(os.environ)
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.setdefault("PYTHONUNBUFFERED", "1")  # the children's lines reach the terminal as they come
    # Children must not re-run the migrations concurrently: they were applied just above.
    env["TUNESERVE_AUTO_MIGRATE"] = "false"
    db = settings.database_url.split("@")[-1]
    out.say(f"database {db}; broker {settings.broker_url.split('@')[-1]}; models in {settings.models_dir}")

    signals = Signals()
    signal.signal(signal.SIGINT, signals)
    signal.signal(signal.SIGTERM, signals)
    signal.signal(signal.SIGHUP, signals)  # the terminal went away: stop as on Ctrl-C

    api = _spawn(api_command(host, port), env, out)
    worker = _spawn(worker_command(loglevel), env, out)
    worker_started = time.monotonic()
    out.say(f"API on http://{host}:{port} (docs at /docs); worker pid {worker.pid}. Ctrl-C stops both.")
    code = 0
    try:
        while not signals.count:
            time.sleep(0.5)
            if api.poll() is not None:
                out.say(f"the API exited with code {api.returncode}; stopping")
                code = api.returncode or 1
                break
            if worker.poll() is not None:
                if time.monotonic() - worker_started < MIN_WORKER_UPTIME_S:
                    out.say(f"the worker exited with code {worker.returncode} right after starting; stopping")
                    code = worker.returncode or 1
                    break
                out.say(f"the worker exited with code {worker.returncode}; starting a new one "
                        "(a running job resumes from its last checkpoint)")
                worker = _spawn(worker_command(loglevel), env, out)
                worker_started = time.monotonic()
        out.say("stopping: the worker finishes its optimizer step and checkpoints there (Ctrl-C again "
                "to stop at once); a running job resumes where it stopped at the next start")
    finally:
        _stop_worker(worker, signals, out)
        _stop_api(api)
    out.say("stopped")
    return code
