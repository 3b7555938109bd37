"""Generation benchmark: tuneserve's engine (core/serving/engine.py) against the ways a chat reply
is made without it, on one small random Llama and the same prompts for every peer, one run.

The model: 4 layers, hidden 256, a 4,000-token byte-level BPE trained on the prompts' file (built
once, seeded; random weights, so greedy replies rarely end early: every peer decodes about
max_new_tokens per prompt). Prompts: the first questions of korean_chatbot_qa.csv as user turns
through a ChatML template. Greedy decoding everywhere; tokens/s = generated tokens / wall time.

  a  report generation (what the base-vs-tuned report does), N prompts:
       engine          generate_many: continuous batching, length-sorted, token budget
       hf-padded       model.generate() on left-padded, length-sorted batches of the engine's row limit
       hf-continuous   transformers' own continuous batching, model.generate_batch()
       loop            model.generate() once per prompt (what the report did before)
       pipeline        pipeline("text-generation") once per prompt
  b  POST /generate over HTTP (uvicorn in its own process, streaming SSE), R requests at 1, 8 and
     32 concurrent clients: tokens/s, p50/p95 time to first token and per request. 1 client is
     "the same requests one at a time".
  c  4 LoRA adapters of one base, K prompts each:
       mixed           all 4K on the engine at once (one batch, peft's adapter_names)
       per-adapter     the engine, one adapter's K prompts after another's
       one-by-one      set_adapter + model.generate() per request (what /generate did before)
       one-adapter-batch  the same 4K requests all on one adapter, at once: the batch without the mix

    .venv/bin/python bench/generate_bench.py            # N=128, R=32, K=16, 64 new tokens
    .venv/bin/python bench/generate_bench.py --quick    # N=32, R=16, K=4, 32 new tokens
    .venv/bin/python bench/generate_bench.py --parts a --device cuda
    .venv/bin/python bench/generate_bench.py --threads 1   # on a shared, loaded CPU (see BENCHMARKS.md)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
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

from bench.chat_bench import build_small_llama  # noqa: E402 - after the path is set

SHARED_DATA = Path(os.environ.get("TUNESERVE_SHARED_DATA", REPO.parent / "shared" / "data"))
DATA = SHARED_DATA / "korean_chatbot_qa.csv"
FALLBACK_DATA = REPO / "tests" / "fixtures" / "korean_chatbot_qa_slice.csv"
SEED = 42


def questions(n: int) -> list[str]:
    import pandas as pd

    path = DATA if DATA.is_file() else FALLBACK_DATA
    qs = [str(q) for q in pd.read_csv(path)["Q"]]
    return [qs[i % len(qs)] for i in range(n)]


def build_model(directory: Path) -> Path:
    """The chat benchmarks' small Llama, its tokenizer trained on the chatbot corpus's Q/A pairs."""
    import pandas as pd

    path = DATA if DATA.is_file() else FALLBACK_DATA
    frame = pd.read_csv(path).iloc[:4000]
    build_small_llama(directory, [*map(str, frame["Q"]), *map(str, frame["A"])], max_position_embeddings=512)
    return directory


def build_adapters(base: Path, root: Path, count: int) -> list[Path]:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from core.store import write_model_meta

    out = []
    for i in range(count):
        torch.manual_seed(SEED + i)
        model = get_peft_model(AutoModelForCausalLM.from_pretrained(base), LoraConfig(
            r=16, lora_alpha=32, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
            init_lora_weights=False))
        directory = root / f"adapter{i}"
        model.save_pretrained(directory)
        AutoTokenizer.from_pretrained(base).save_pretrained(directory)
        write_model_meta(directory, {"task": "chat", "base_model": str(base), "adapter": True})
        out.append(directory)
    return out


def _rate(tokens: int, seconds: float) -> dict[str, float]:
    return {"tokens": tokens, "seconds": round(seconds, 3), "tokens_per_s": round(tokens / seconds, 1)}


# --- a: report generation --------------------------------------------------------------------
def part_a(model_dir: Path, n: int, new_tokens: int, device: str) -> dict[str, Any]:
    import torch
    from transformers import GenerationConfig, pipeline

    from core.serving.engine import GenerationParams, generate_many
    from core.serving.generation import ChatModels, ChatSpec
    from core.settings import Settings

    settings = Settings()
    runtime = ChatModels(device).runtime(ChatSpec("bench", model_dir, adapter=False, base_path=None))
    model, tokenizer = runtime.base.model, runtime.tokenizer
    prompts = [[{"role": "user", "content": q}] for q in questions(n)]
    ids = [runtime.prompt_ids(p) for p in prompts]
    greedy = {"do_sample": False, "temperature": None, "top_p": None, "top_k": None,
              "eos_token_id": runtime.eos_ids, "pad_token_id": tokenizer.pad_token_id}
    results: dict[str, Any] = {"prompts": n, "max_new_tokens": new_tokens,
                               "prompt_tokens_mean": round(statistics.mean(map(len, ids)), 1),
                               "engine_rows": settings.generate_max_batch_rows,
                               "engine_batch_tokens": settings.generate_max_batch_tokens}

    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    generate_many(runtime, ids[:4], GenerationParams(max_new_tokens=4), settings)  # warm-up
    started = time.perf_counter()
    replies = generate_many(runtime, ids, GenerationParams(max_new_tokens=new_tokens), settings)
    sync()
    results["engine"] = _rate(sum(r.completion_tokens for r in replies), time.perf_counter() - started)
    engine_texts = [r.text for r in replies]

    rows = settings.generate_max_batch_rows
    order = sorted(range(n), key=lambda i: len(ids[i]))
    tokens = 0
    started = time.perf_counter()
    with torch.inference_mode():
        for start in range(0, n, rows):
            batch = [ids[i] for i in order[start:start + rows]]
            width = max(map(len, batch))
            input_ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(b)) + b for b in batch])
            mask = torch.tensor([[0] * (width - len(b)) + [1] * len(b) for b in batch])
            out = model.generate(input_ids=input_ids.to(model.device), attention_mask=mask.to(model.device),
                                 max_new_tokens=new_tokens, **greedy)
            new = out[:, width:]
            tokens += int(((new != tokenizer.pad_token_id) & ~torch.isin(
                new, torch.tensor(runtime.eos_ids, device=new.device))).sum())
    sync()
    results["hf-padded"] = _rate(tokens, time.perf_counter() - started)

    try:
        started = time.perf_counter()
        outputs = model.generate_batch(inputs=ids, generation_config=GenerationConfig(
            max_new_tokens=new_tokens, do_sample=False, eos_token_id=runtime.eos_ids,
            pad_token_id=tokenizer.pad_token_id), progress_bar=False)
        sync()
        tokens = sum(len([t for t in o.generated_tokens if t not in runtime.eos_ids])
                     for o in outputs.values())
        results["hf-continuous"] = _rate(tokens, time.perf_counter() - started)
    except Exception as error:  # noqa: BLE001 - reported as the figure
        results["hf-continuous"] = {"error": f"{type(error).__name__}: {str(error)[:300]}"}

    tokens, same = 0, 0
    started = time.perf_counter()
    with torch.inference_mode():
        for i, prompt in enumerate(ids):
            inputs = torch.tensor([prompt], device=model.device)
            out = model.generate(input_ids=inputs, attention_mask=torch.ones_like(inputs),
                                 max_new_tokens=new_tokens, **greedy)[0, len(prompt):].tolist()
            out = [t for t in out if t not in runtime.eos_ids]
            tokens += len(out)
            same += tokenizer.decode(out, skip_special_tokens=True) == engine_texts[i]
    sync()
    results["loop"] = _rate(tokens, time.perf_counter() - started)
    results["engine_replies_equal_to_loop"] = f"{same}/{n}"

    generator = pipeline("text-generation", model=model, tokenizer=tokenizer)
    tokens = 0
    started = time.perf_counter()
    for prompt, prompt_ids in zip(prompts, ids, strict=True):
        out = generator(prompt, max_new_tokens=new_tokens, return_tensors=True, **greedy)
        new = out[0]["generated_token_ids"][len(prompt_ids):]
        tokens += len([t for t in new if t not in runtime.eos_ids])
    sync()
    results["pipeline"] = _rate(tokens, time.perf_counter() - started)
    engine_rate = results["engine"]["tokens_per_s"]
    results["engine_vs"] = {peer: round(engine_rate / results[peer]["tokens_per_s"], 2)
                            for peer in ("hf-padded", "hf-continuous", "loop", "pipeline")
                            if "tokens_per_s" in results[peer]}
    return results


# --- b: /generate over HTTP ------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _register(model_dir: Path, work: Path) -> dict[str, str]:
    """Settings for a fresh data dir, migrated, with the model registered as the worker would."""
    env = {"TUNESERVE_DATA_DIR": str(work / "var"), "TUNESERVE_MODELS_DIR": str(work / "models"),
           "TUNESERVE_DATABASE_URL": f"sqlite:///{work / 'bench.sqlite'}", "TUNESERVE_AUTH": "off",
           "TUNESERVE_GENERATE_MAX_NEW_TOKENS": "512"}
    os.environ.update(env)
    from app.migrate import upgrade_head
    from core.db import session_scope
    from core.settings import get_settings
    from core.tables import TunedModel

    get_settings.cache_clear()
    upgrade_head(get_settings().database_url)
    with session_scope() as session:
        session.add(TunedModel(id="mdl_bench", job_id=None, base_model="bench-llama", task="chat", labels=[],
                               metrics={}, max_seq_length=512, path=str(model_dir)))
    return env


async def _one(client: Any, payload: dict[str, Any]) -> dict[str, float]:
    started = time.perf_counter()
    first = None
    done: dict[str, Any] = {}
    async with client.stream("POST", "/generate", json=payload) as response:
        if response.status_code != 200:
            raise RuntimeError(f"{response.status_code}: {(await response.aread())[:300]!r}")
        event = ""
        async for line in response.aiter_lines():
            if line.startswith("event:"):
                event = line[6:].strip()
                if event == "token" and first is None:
                    first = time.perf_counter()
            elif line.startswith("data:") and event == "done":
                done = json.loads(line[5:])
    end = time.perf_counter()
    return {"ttft_s": (first or end) - started, "total_s": end - started,
            "tokens": done["usage"]["completion_tokens"]}


async def _load(url: str, payloads: list[dict[str, Any]], clients: int) -> dict[str, Any]:
    import httpx

    gate = asyncio.Semaphore(clients)

    async def limited(client: Any, payload: dict[str, Any]) -> dict[str, float]:
        async with gate:
            return await _one(client, payload)

    limits = httpx.Limits(max_connections=clients + 4)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:
        await _one(client, payloads[0])  # warm: the model is loaded
        started = time.perf_counter()
        runs = await asyncio.gather(*(limited(client, p) for p in payloads))
        wall = time.perf_counter() - started

    def pct(values: list[float], q: float) -> float:
        values = sorted(values)
        return round(values[min(len(values) - 1, int(q * len(values)))] * 1000, 1)

    ttft, total = [r["ttft_s"] for r in runs], [r["total_s"] for r in runs]
    tokens = int(sum(r["tokens"] for r in runs))
    return {"clients": clients, "requests": len(runs), **_rate(tokens, wall),
            "ttft_p50_ms": pct(ttft, 0.5), "ttft_p95_ms": pct(ttft, 0.95),
            "request_p50_ms": pct(total, 0.5), "request_p95_ms": pct(total, 0.95)}


async def _healthz(url: str, clients: int) -> dict[str, Any]:
    """`clients` concurrent GET /healthz, each on its own new connection: the HTTP floor."""
    import httpx

    async with httpx.AsyncClient(base_url=url, limits=httpx.Limits(max_connections=clients + 4)) as client:
        await client.get("/healthz")

        async def one() -> float:
            started = time.perf_counter()
            (await client.get("/healthz")).raise_for_status()
            return time.perf_counter() - started

        started = time.perf_counter()
        times = sorted(await asyncio.gather(*(one() for _ in range(clients))))
        wall = time.perf_counter() - started
    return {"clients": clients, "wall_ms": round(wall * 1000, 1),
            "p50_ms": round(times[len(times) // 2] * 1000, 1),
            "p95_ms": round(times[int(0.95 * len(times))] * 1000, 1)}


def part_b(model_dir: Path, work: Path, requests: int, new_tokens: int, device: str) -> dict[str, Any]:
    env = {**os.environ, **_register(model_dir, work), "TUNESERVE_PREDICT_DEVICE": device,
           "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    port = _free_port()
    log = (work / "api.log").open("wb")
    server = subprocess.Popen([sys.executable, "-m", "uvicorn", "app.main:create_app", "--factory",
                               "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"],
                              env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        import httpx

        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
        qs = questions(requests)
        payloads = [{"model_id": "mdl_bench", "messages": [{"role": "user", "content": q}],
                     "max_new_tokens": new_tokens, "temperature": 0, "stream": True} for q in qs]
        runs = {str(c): asyncio.run(_load(url, payloads, c)) for c in (1, 8, 32)}
        # What the 32-client time to first token is made of: the same 32 requests asking for one
        # token (HTTP, lookup, template and prefill, no decoding), and 32 GET /healthz on fresh
        # connections (HTTP alone, client and server on the same cores).
        one_token = [{**p, "max_new_tokens": 1} for p in payloads]
        runs["32_one_token"] = asyncio.run(_load(url, one_token, 32))
        runs["32_healthz"] = asyncio.run(_healthz(url, 32))
    finally:
        server.terminate()
        server.wait(30)
        log.close()
    one = runs["1"]
    runs["at_32_vs_1"] = {"tokens_per_s": round(runs["32"]["tokens_per_s"] / one["tokens_per_s"], 2),
                          "ttft_p50": round(runs["32"]["ttft_p50_ms"] / one["ttft_p50_ms"], 2)}
    return runs


# --- c: adapters of one base ---------------------------------------------------------------------
def part_c(model_dir: Path, work: Path, per_adapter: int, new_tokens: int, device: str) -> dict[str, Any]:
    import torch

    from core.serving.engine import Engine, GenerationParams, generate_many
    from core.serving.generation import ChatModels, ChatSpec
    from core.settings import Settings

    settings = Settings()
    models = ChatModels(device)
    adapters = build_adapters(model_dir, work, 4)
    runtimes = [models.runtime(ChatSpec(f"lora{i}", a, adapter=True, base_path=str(model_dir)))
                for i, a in enumerate(adapters)]
    ids = [runtimes[0].prompt_ids([{"role": "user", "content": q}]) for q in questions(per_adapter)]
    params = GenerationParams(max_new_tokens=new_tokens)
    generate_many(runtimes[0], ids[:2], GenerationParams(max_new_tokens=2), settings)  # warm-up

    async def together(mix: list[Any]) -> int:
        engine = Engine(settings)
        streams = [engine.submit(r, i, params) for i in ids for r in mix]
        replies = [await s.text() for s in streams]
        await engine.aclose()
        return sum(r.completion_tokens for r in replies)

    started = time.perf_counter()
    tokens = asyncio.run(together(runtimes))
    elapsed = time.perf_counter() - started
    results: dict[str, Any] = {"adapters": 4, "prompts_per_adapter": per_adapter,
                               "max_new_tokens": new_tokens, "mixed": _rate(tokens, elapsed)}
    # The same 4K requests all on ONE adapter, the same way: what a batch that size costs without
    # the mix, so "mixed vs per-adapter" can be read as batching gain, less what mixing costs.
    started = time.perf_counter()
    tokens = asyncio.run(together([runtimes[0]] * len(runtimes)))
    results["one-adapter-batch"] = _rate(tokens, time.perf_counter() - started)
    started = time.perf_counter()
    tokens = sum(r.completion_tokens for rt in runtimes for r in generate_many(rt, ids, params, settings))
    results["per-adapter"] = _rate(tokens, time.perf_counter() - started)
    model, tokenizer = runtimes[0].base.model, runtimes[0].tokenizer
    tokens = 0
    started = time.perf_counter()
    with torch.inference_mode():
        for prompt in ids:
            for rt in runtimes:
                model.set_adapter(rt.adapter)
                inputs = torch.tensor([prompt], device=model.device)
                out = model.generate(input_ids=inputs, attention_mask=torch.ones_like(inputs),
                                     max_new_tokens=new_tokens, do_sample=False, temperature=None, top_p=None,
                                     top_k=None, eos_token_id=rt.eos_ids, pad_token_id=tokenizer.pad_token_id)
                tokens += len([t for t in out[0, len(prompt):].tolist() if t not in rt.eos_ids])
    results["one-by-one"] = _rate(tokens, time.perf_counter() - started)
    rate = results["mixed"]["tokens_per_s"]
    results["mixed_vs"] = {p: round(rate / results[p]["tokens_per_s"], 2)
                           for p in ("one-adapter-batch", "per-adapter", "one-by-one")}
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller counts: a smoke run of every part")
    parser.add_argument("--parts", default="a,b,c")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, help="also write the figures here as JSON")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch CPU threads here and in the API process (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        # Read by torch when it loads, here and in the API process part b starts.
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
    n, requests, per_adapter, new_tokens = (32, 16, 4, 32) if args.quick else (128, 32, 16, 64)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import torch

    figures: dict[str, Any] = {"machine": {"python": platform.python_version(), "torch": torch.__version__,
                                           "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
                                           "device": args.device}}
    with tempfile.TemporaryDirectory(prefix="generate-bench-") as tmp:
        work = Path(tmp)
        model_dir = build_model(work / "model")
        parts = set(args.parts.split(","))
        if "a" in parts:
            figures["a"] = part_a(model_dir, n, new_tokens, args.device)
            print(json.dumps({"a": figures["a"]}, indent=1), flush=True)  # noqa: T201
        if "c" in parts:
            figures["c"] = part_c(model_dir, work, per_adapter, new_tokens, args.device)
            print(json.dumps({"c": figures["c"]}, indent=1), flush=True)  # noqa: T201
        if "b" in parts:
            figures["b"] = part_b(model_dir, work, requests, new_tokens, args.device)
            print(json.dumps({"b": figures["b"]}, indent=1), flush=True)  # noqa: T201
    if args.out:
        args.out.write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
