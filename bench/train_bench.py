"""Training benchmark (issue 3, item 11): tuneserve's loop against three peers, one machine, one run.

Fine-tunes the bundled MiniLM on SST-2 (first N rows of sst2_train.tsv; validation: the last 872
rows of the same file), 1 epoch, effective batch 16, max length 128, lr 5e-5, seed 42, linear
schedule with 10% warmup, weight decay 0.01, gradient clipping at 1.0, fp32 on CPU. Peers:

  a  tuneserve: worker.training.loop.run_training + worker.families.classification.task
     .build_classification_task on a parquet dataset directory, in-memory RecordingSink, the
     loop's defaults (micro-batch probe,
     length-grouped windows, dynamic padding, one evaluation at the end of the epoch followed by
     its checkpoint save: the service always saves one, so it is counted)
  b  seed-style HF Trainer: padding="max_length" to 128, default collator, batch 16
  c  strong HF Trainer: DataCollatorWithPadding + train_sampling_strategy="group_by_length"
  d  bare PyTorch: forward/backward/clip/fused-AdamW step over the same length-grouped windows as
     (a) (worker.training.loop.epoch_windows), each padded to its own longest row

Each peer runs in its own subprocess (peak RSS is per peer) with the same torch thread count.
samples/s = training rows / training wall time. Training time starts when the peer's train call
starts (trainer.train(), run_training, the bare loop's first batch) and ends after the last
optimizer step: warm-up (the first steps) is INCLUDED for every peer, and so are (a)'s micro-batch
probe and its end-of-run checkpoint save. Model loading, tokenization and the final validation
pass are excluded for every peer.

    .venv/bin/python bench/train_bench.py                 # the full benchmark (4,000 rows)
    .venv/bin/python bench/train_bench.py --quick         # smoke run: 400 rows, 200 validation rows
    .venv/bin/python bench/train_bench.py --only a,d --threads 2 --out bench/results/run.json
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

SHARED_DATA = Path(os.environ.get("TUNESERVE_SHARED_DATA", REPO.parent / "shared" / "data"))
DEFAULT_DATA = SHARED_DATA / "sst2_train.tsv"
PEERS = {
    "a": "tuneserve loop",
    "b": "seed Trainer (max_length)",
    "c": "strong Trainer (dynamic, grouped)",
    "d": "bare PyTorch loop",
}
LABELS = ["negative", "positive"]

# The recipe, shared by every peer.
EPOCHS = 1
BATCH_SIZE = 16
MAX_LENGTH = 128
LEARNING_RATE = 5e-5
SEED = 42
WARMUP_RATIO = 0.1
WEIGHT_DECAY = 0.01
MAX_GRAD_NORM = 1.0
EVAL_BATCH_SIZE = 32  # evaluation is not timed; a larger batch just makes the run shorter

# Targets for (a), from the issue.
TARGET_VS_SEED = 5.0
TARGET_VS_STRONG = 1.1
TARGET_VS_BARE = 0.90
TARGET_ACCURACY_POINTS = 1.5


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------

def load_split(path: Path, rows: int, val_rows: int) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """(train, validation) as (sentence, label): the first `rows` rows and the last `val_rows`."""
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader)
        text_col, label_col = header.index("sentence"), header.index("label")
        data = [(r[text_col], int(r[label_col])) for r in reader if len(r) == len(header)]
    if rows + val_rows > len(data):
        raise SystemExit(f"{path} has {len(data)} rows: cannot take {rows} train + {val_rows} validation")
    return data[:rows], data[len(data) - val_rows:]


# --------------------------------------------------------------------------------------------
# Children: one peer each
# --------------------------------------------------------------------------------------------

def _setup_child(args: argparse.Namespace) -> Any:
    import torch
    import transformers

    torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()
    transformers.set_seed(SEED)
    return torch


def _device(torch: Any, requested: str) -> Any:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def _load_model(torch: Any, path: str) -> Any:
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(SEED)  # the new head: the same initial weights in every peer
    return AutoModelForSequenceClassification.from_pretrained(
        path, num_labels=len(LABELS), id2label=dict(enumerate(LABELS)),
        label2id={name: i for i, name in enumerate(LABELS)})


def write_dataset_dir(directory: Path, train: list, val: list) -> Path:
    """train.parquet and validation.parquet per the dataset contract (row, text, label index)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    directory.mkdir(parents=True, exist_ok=True)
    for name, split in (("train", train), ("validation", val)):
        table = pa.table({"row": pa.array(range(len(split)), pa.int64()),
                          "text": pa.array([t for t, _ in split], pa.string()),
                          "label": pa.array([label for _, label in split], pa.int64())})
        pq.write_table(table, directory / f"{name}.parquet")
    return directory


@contextmanager
def loop_timings() -> Iterator[dict[str, float]]:
    """Seconds the loop spends evaluating (wall and CPU), saving checkpoints and probing, timed
    from outside without changing what it does; put back on exit, so runs in one process can
    each time their own."""
    import worker.training.loop as loop

    timings = {"eval_s": 0.0, "checkpoint_s": 0.0, "probe_s": 0.0, "eval_cpu_s": 0.0}

    def timed(name: str, fn: Any) -> Any:
        def wrapper(*a: Any, **kw: Any) -> Any:
            started, cpu = time.perf_counter(), time.process_time()
            try:
                return fn(*a, **kw)
            finally:
                timings[name] += time.perf_counter() - started
                if name == "eval_s":
                    timings["eval_cpu_s"] += time.process_time() - cpu
        return wrapper

    saved = loop.evaluate, loop.save_checkpoint, loop.Trainer.probe
    loop.evaluate = timed("eval_s", loop.evaluate)
    loop.save_checkpoint = timed("checkpoint_s", loop.save_checkpoint)
    loop.Trainer.probe = timed("probe_s", loop.Trainer.probe)  # type: ignore[method-assign]
    try:
        yield timings
    finally:
        loop.evaluate, loop.save_checkpoint, loop.Trainer.probe = saved  # type: ignore[method-assign]


def run_tuneserve(train: list, val: list, labels: list[str], hp: Any, threads: int,
                  device: str) -> dict[str, Any]:
    """One classification run through the entry points the worker task uses (parquet dataset
    directory, build_classification_task, run_training, an in-memory RecordingSink): its result,
    sink, task and timings. train_s is the loop's wall time less its evaluations; the probe and the
    checkpoint saves stay in (the service always does them)."""
    import worker.training.loop as loop
    from core.settings import Settings
    from core.store import bundled_model_path
    from worker.families.classification.task import build_classification_task
    from worker.training.recording import RecordingSink

    with tempfile.TemporaryDirectory(prefix="tuneserve-bench-") as tmp, loop_timings() as timings:
        tmp_path = Path(tmp)
        dataset_dir = write_dataset_dir(tmp_path / "dataset", train, val)
        settings = Settings(data_dir=tmp_path / "var", models_dir=tmp_path / "models", torch_threads=threads)
        config = loop.TrainConfig.from_hyperparameters(hp, settings)
        config.device = device
        task = build_classification_task(dataset_dir, labels, False, str(bundled_model_path()), config)
        sink = RecordingSink()
        started, cpu = time.perf_counter(), time.process_time()
        result = loop.run_training(task, config, tmp_path / "run", sink)
        total_s, total_cpu_s = time.perf_counter() - started, time.process_time() - cpu
    return {"result": result, "sink": sink, "timings": timings, "task": task,
            "device": str(loop.pick_device(config.device)), "train_s": total_s - timings["eval_s"],
            "train_cpu_s": total_cpu_s - timings["eval_cpu_s"]}


def run_a(args: argparse.Namespace, train: list, val: list) -> dict[str, Any]:
    """tuneserve's own loop, through the same entry points the worker task uses."""
    _setup_child(args)
    from core.jobspec import Hyperparameters

    hp = Hyperparameters(epochs=EPOCHS, batch_size=BATCH_SIZE, max_seq_length=MAX_LENGTH,
                         learning_rate=LEARNING_RATE, seed=SEED, warmup_ratio=WARMUP_RATIO,
                         weight_decay=WEIGHT_DECAY, max_grad_norm=MAX_GRAD_NORM, lr_scheduler="linear",
                         eval_strategy="epoch", precision="auto")
    run = run_tuneserve(train, val, LABELS, hp, args.threads, args.device)
    result, timings = run["result"], run["timings"]
    probe = run["sink"].events_of("batch_probe")
    return {
        "train_s": run["train_s"], "train_cpu_s": run["train_cpu_s"],
        "samples": len(train), "steps": result.global_step,
        "accuracy": float(result.final_metrics["accuracy"]),
        "eval_s": timings["eval_s"], "probe_s": timings["probe_s"], "checkpoint_s": timings["checkpoint_s"],
        "micro_batch_size": result.micro_batch_size, "grad_accum_steps": result.grad_accum_steps,
        "probe": probe[0] if probe else None,
        "device": run["device"],
    }


def _trainer_args(args: argparse.Namespace, torch: Any, out: str, **extra: Any) -> Any:
    from transformers import TrainingArguments

    device = _device(torch, args.device)
    bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    return TrainingArguments(
        output_dir=out, num_train_epochs=EPOCHS, per_device_train_batch_size=BATCH_SIZE,
        per_device_eval_batch_size=EVAL_BATCH_SIZE, learning_rate=LEARNING_RATE, seed=SEED,
        warmup_steps=WARMUP_RATIO, weight_decay=WEIGHT_DECAY, max_grad_norm=MAX_GRAD_NORM,
        lr_scheduler_type="linear", eval_strategy="no", save_strategy="no", report_to="none",
        disable_tqdm=True, use_cpu=device.type == "cpu", bf16=bf16, **extra)


def _run_trainer(args: argparse.Namespace, train: list, val: list, strong: bool) -> dict[str, Any]:
    torch = _setup_child(args)
    import numpy as np
    from datasets import Dataset
    from transformers import AutoTokenizer, DataCollatorWithPadding, Trainer

    from core.store import bundled_model_path

    path = str(bundled_model_path())
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = _load_model(torch, path)

    def tokenize(batch: dict[str, list]) -> Any:
        if strong:
            return tokenizer(batch["sentence"], truncation=True, max_length=MAX_LENGTH)
        return tokenizer(batch["sentence"], padding="max_length", truncation=True, max_length=MAX_LENGTH)

    def dataset(split: list) -> Any:
        ds = Dataset.from_dict({"sentence": [t for t, _ in split], "label": [label for _, label in split]})
        return ds.map(tokenize, batched=True, remove_columns=["sentence"])

    train_ds, val_ds = dataset(train), dataset(val)
    with tempfile.TemporaryDirectory(prefix="tuneserve-bench-") as out:
        if strong:
            training_args = _trainer_args(args, torch, out, train_sampling_strategy="group_by_length")
            trainer = Trainer(model=model, args=training_args, train_dataset=train_ds,
                              data_collator=DataCollatorWithPadding(tokenizer), processing_class=tokenizer)
        else:  # the tutorials' script: no collator, no tokenizer given: default_data_collator
            trainer = Trainer(model=model, args=_trainer_args(args, torch, out), train_dataset=train_ds)
        started, cpu = time.perf_counter(), time.process_time()
        trained = trainer.train()
        train_s, train_cpu_s = time.perf_counter() - started, time.process_time() - cpu
        started = time.perf_counter()
        prediction = trainer.predict(val_ds)
        eval_s = time.perf_counter() - started
    accuracy = float((np.argmax(prediction.predictions, axis=-1) == prediction.label_ids).mean())
    return {"train_s": train_s, "train_cpu_s": train_cpu_s, "samples": len(train),
            "steps": trained.global_step, "accuracy": accuracy,
            "eval_s": eval_s, "trainer_train_runtime_s": trained.metrics.get("train_runtime"),
            "device": str(trainer.args.device)}


def run_b(args: argparse.Namespace, train: list, val: list) -> dict[str, Any]:
    return _run_trainer(args, train, val, strong=False)


def run_c(args: argparse.Namespace, train: list, val: list) -> dict[str, Any]:
    return _run_trainer(args, train, val, strong=True)


def run_d(args: argparse.Namespace, train: list, val: list) -> dict[str, Any]:
    """The limit: nothing but forward, backward, clip, AdamW step, schedule, over the same windows."""
    torch = _setup_child(args)
    from contextlib import nullcontext

    from transformers import AutoTokenizer, get_linear_schedule_with_warmup

    from core.store import bundled_model_path
    from worker.training.data_order import epoch_windows

    device = _device(torch, args.device)
    path = str(bundled_model_path())
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = _load_model(torch, path).to(device)
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16)
                if device.type == "cuda" and torch.cuda.is_bf16_supported() else nullcontext())

    def encode(split: list) -> tuple[list[list[int]], list[int]]:
        ids = tokenizer([t for t, _ in split], truncation=True, max_length=MAX_LENGTH)["input_ids"]
        return ids, [label for _, label in split]

    def batch_of(ids: list[list[int]], labels: list[int], indices: list[int]) -> dict[str, Any]:
        width = max(len(ids[i]) for i in indices)
        input_ids = torch.full((len(indices), width), tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(indices), width), dtype=torch.long)
        for row, i in enumerate(indices):
            input_ids[row, :len(ids[i])] = torch.tensor(ids[i])
            mask[row, :len(ids[i])] = 1
        return {"input_ids": input_ids.to(device), "attention_mask": mask.to(device),
                "labels": torch.tensor([labels[i] for i in indices], device=device)}

    train_ids, train_labels = encode(train)
    val_ids, val_labels = encode(val)
    windows = epoch_windows([len(x) for x in train_ids], BATCH_SIZE, SEED, 0)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        [{"params": [p for p in params if p.ndim >= 2], "weight_decay": WEIGHT_DECAY},
         {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}],
        # Fused AdamW on CPU too (torch >= 2.4): the Trainer's default optimizer since torch 2.8, and
        # several times faster than the per-tensor loop on CPU; this peer is the machine's limit.
        lr=LEARNING_RATE, fused=True)
    total = len(windows) * EPOCHS
    scheduler = get_linear_schedule_with_warmup(optimizer, math.ceil(WARMUP_RATIO * total), total)

    model.train()
    started, cpu = time.perf_counter(), time.process_time()
    for window in windows:
        batch = batch_of(train_ids, train_labels, window)
        with autocast:
            loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, MAX_GRAD_NORM)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
    train_s, train_cpu_s = time.perf_counter() - started, time.process_time() - cpu

    started = time.perf_counter()
    model.eval()
    order = sorted(range(len(val_ids)), key=lambda i: len(val_ids[i]))
    correct = 0
    with torch.no_grad(), autocast:
        for start in range(0, len(order), EVAL_BATCH_SIZE):
            indices = order[start:start + EVAL_BATCH_SIZE]
            batch = batch_of(val_ids, val_labels, indices)
            predicted = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            correct += int((predicted.argmax(-1) == batch["labels"]).sum())
    eval_s = time.perf_counter() - started
    return {"train_s": train_s, "train_cpu_s": train_cpu_s, "samples": len(train), "steps": len(windows),
            "accuracy": correct / len(val_ids), "eval_s": eval_s, "device": str(device)}


def child_main(args: argparse.Namespace) -> None:
    train, val = load_split(Path(args.data), args.rows, args.val_rows)
    result = {"a": run_a, "b": run_b, "c": run_c, "d": run_d}[args.child](args, train, val)
    result["samples_per_s"] = result["samples"] / result["train_s"]
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    import torch

    result["torch_threads"] = torch.get_num_threads()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        result["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
    Path(args.result_file).write_text(json.dumps(result, default=str))


# --------------------------------------------------------------------------------------------
# Parent: run the children one after the other, print the table
# --------------------------------------------------------------------------------------------

def run_peer(peer: str, args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        result_file = Path(f.name)
    command = [sys.executable, str(Path(__file__).resolve()), "--child", peer,
               "--result-file", str(result_file),
               "--rows", str(args.rows), "--val-rows", str(args.val_rows), "--threads", str(args.threads),
               "--data", str(args.data), "--device", args.device]
    threads = str(args.threads)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    print(f"[{peer}] {PEERS[peer]} ...", flush=True)
    started = time.perf_counter()
    try:
        proc = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout)[-4000:]
            print(f"[{peer}] FAILED (exit {proc.returncode}):\n{tail}", flush=True)
            return {"error": f"exit {proc.returncode}", "stderr_tail": tail}
        result: dict[str, Any] = json.loads(result_file.read_text())
    finally:
        result_file.unlink(missing_ok=True)
    result["wall_s"] = time.perf_counter() - started
    # CPU time / wall time well under --threads: the peer was starved (a busy machine); compare
    # peers only from a run where this figure is about the same for all of them.
    busy = result["train_cpu_s"] / result["train_s"]
    print(f"[{peer}] {result['samples_per_s']:.1f} samples/s, train {result['train_s']:.1f}s "
          f"(CPU {result['train_cpu_s']:.0f}s, {busy:.2f} cores busy), "
          f"accuracy {result['accuracy']:.4f}, peak RSS {result['peak_rss_mb']:.0f} MB "
          f"(process {result['wall_s']:.0f}s)", flush=True)
    return result


def _fmt(value: float | None, spec: str, suffix: str = "") -> str:
    return "—" if value is None else f"{value:{spec}}{suffix}"


def report(results: dict[str, dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    ok = {p: r for p, r in results.items() if "samples_per_s" in r}
    speed = {p: r["samples_per_s"] for p, r in ok.items()}
    lines = ["| peer | samples/s | × (b) seed Trainer | × (c) strong Trainer | % of (d) bare loop "
             "| val accuracy | peak RSS MB | cores busy |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for peer, name in PEERS.items():
        if peer not in results:
            continue
        r = results[peer]
        if peer not in ok:
            lines.append(f"| ({peer}) {name} | failed | | | | | | |")
            continue
        s = speed[peer]
        vs_b = s / speed["b"] if "b" in speed else None
        vs_c = s / speed["c"] if "c" in speed else None
        vs_d = 100 * s / speed["d"] if "d" in speed else None
        lines.append(f"| ({peer}) {name} | {s:.1f} | {_fmt(vs_b, '.2f', '×')} | {_fmt(vs_c, '.2f', '×')} "
                     f"| {_fmt(vs_d, '.0f', '%')} | {100 * r['accuracy']:.2f}% | {r['peak_rss_mb']:.0f} "
                     f"| {r['train_cpu_s'] / r['train_s']:.2f} |")
    verdicts: dict[str, Any] = {}
    if "a" in ok:
        a = ok["a"]
        checks = []
        if "b" in speed:
            checks.append(("vs_seed_trainer", speed["a"] / speed["b"], TARGET_VS_SEED,
                           f"≥ {TARGET_VS_SEED:g}× (b)", "×"))
        if "c" in speed:
            checks.append(("vs_strong_trainer", speed["a"] / speed["c"], TARGET_VS_STRONG,
                           f"≥ {TARGET_VS_STRONG:g}× (c)", "×"))
        if "d" in speed:
            checks.append(("vs_bare_loop", speed["a"] / speed["d"], TARGET_VS_BARE,
                           f"≥ {100 * TARGET_VS_BARE:.0f}% of (d)", ""))
        lines.append("")
        lines.append("Targets for (a):")
        for key, value, target, label, unit in checks:
            shown = f"{100 * value:.0f}%" if key == "vs_bare_loop" else f"{value:.2f}{unit}"
            verdicts[key] = {"value": value, "target": target, "met": value >= target}
            lines.append(f"- {label}: {shown} — {'met' if value >= target else 'MISSED'}")
        for peer in ("b", "c"):
            if peer in ok:
                gap = 100 * (a["accuracy"] - ok[peer]["accuracy"])
                met = gap >= -TARGET_ACCURACY_POINTS
                verdicts[f"accuracy_vs_{peer}"] = {"points": gap, "met": met}
                lines.append(f"- accuracy within {TARGET_ACCURACY_POINTS:g} points of ({peer}): "
                             f"{gap:+.2f} points — {'met' if met else 'MISSED'}")
        lines.append(f"- (a) breakdown: probe {a.get('probe_s', 0):.1f}s and checkpoint save "
                     f"{a.get('checkpoint_s', 0):.1f}s inside its {a['train_s']:.1f}s of training; "
                     f"micro-batch {a.get('micro_batch_size')} × {a.get('grad_accum_steps')}")
    return "\n".join(lines), verdicts


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=4000, help="training rows (default 4000)")
    parser.add_argument("--val-rows", type=int, default=872, help="validation rows, from the end of the file")
    parser.add_argument("--quick", action="store_true", help="smoke run: 400 train rows, 200 validation rows")
    parser.add_argument("--only", default="a,b,c,d", help="peers to run, e.g. a,d (default all)")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                        help="torch threads for every peer (default: all cores)")
    parser.add_argument("--device", default="cpu", help="cpu (default, the issue's setting) | auto | cuda")
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="SST-2 train TSV (label, sentence)")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    parser.add_argument("--child", choices=sorted(PEERS), help=argparse.SUPPRESS)
    parser.add_argument("--result-file", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.rows, args.val_rows = min(args.rows, 400), min(args.val_rows, 200)
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.child:
        child_main(args)
        return
    peers = [p.strip() for p in args.only.split(",") if p.strip()]
    unknown = [p for p in peers if p not in PEERS]
    if unknown:
        raise SystemExit(f"--only: unknown peers {unknown}; choose from {','.join(PEERS)}")
    print(f"SST-2: {args.rows} train rows, {args.val_rows} validation rows (end of file); 1 epoch, batch "
          f"{BATCH_SIZE}, max length {MAX_LENGTH}, lr {LEARNING_RATE:g}, seed {SEED}; {args.threads} torch "
          f"threads, device {args.device}; {os.cpu_count()} CPUs visible", flush=True)
    results = {peer: run_peer(peer, args) for peer in PEERS if peer in peers}
    table, verdicts = report(results)
    print()
    print(table)
    if args.out:
        import torch
        import transformers

        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                                text=True).stdout.strip()
        out.write_text(json.dumps({
            "config": {"rows": args.rows, "val_rows": args.val_rows, "epochs": EPOCHS,
                       "batch_size": BATCH_SIZE,
                       "max_length": MAX_LENGTH, "learning_rate": LEARNING_RATE, "seed": SEED,
                       "threads": args.threads, "device": args.device, "quick": args.quick},
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                        "processor": platform.processor(), "python": platform.python_version(),
                        "torch": torch.__version__, "transformers": transformers.__version__,
                        "commit": commit},
            "peers": results, "targets": verdicts, "table": table,
        }, indent=2, default=str))
        print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
