"""Data-order benchmark (issue 19, item 6): does the training data order cost quality?

Fine-tunes the bundled MiniLM through tuneserve's own loop, in this process, once per dataset x
data order x seed, and records the training speed and the evaluation quality of each run:

  hate_speech  the first N rows (default 2,000) of korean_hate_speech_train.tsv (text `comments`,
               3-class label `hate`), evaluated on the 471-row korean_hate_speech_dev.tsv
  sst2         the first N rows of sst2_train.tsv, evaluated on its last 872 rows (the shared data
               has no SST-2 dev file; bench/train_bench.py holds out the same rows)

The recipe is the hate-speech case's: lr 1e-4, 2 epochs, effective batch 32, max length 128, and
the service's defaults for the rest (linear schedule, 10% warmup, weight decay 0.01, clipping 1.0,
one evaluation per epoch, fp32 on CPU / bf16 on a GPU that has it). The data orders are the job's
`data_order` (worker/training/data_order.py): random (pools of 1 optimizer-step window),
windowed (pools of 4), grouped (pools of 50).

Per run: samples/s (rows trained / training wall time, the loop's time less its evaluations: the
micro-batch probe and checkpoint saves stay in, as in bench/train_bench.py), macro-F1 and accuracy
on the evaluation set after the last epoch (scikit-learn, from the task's metrics), whether the run
collapsed (one class predicted for every evaluation row), the best evaluation's figures (what the
service exports with load_best_model_at_end), the padding share of the order, and the run's wall
time (model load, tokenization and evaluation included). The table also gives each evaluation
set's majority-class macro-F1 (the most frequent training class predicted for every row): where a
collapsed run lands.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/order_bench.py --out bench/results/order.json   # the study
    HF_HUB_OFFLINE=1 .venv/bin/python bench/order_bench.py --rows 64 --seeds 42 --epochs 1   # smoke
    HF_HUB_OFFLINE=1 .venv/bin/python bench/order_bench.py --datasets hate_speech --orders random,grouped
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.train_bench import SHARED_DATA, load_split, run_tuneserve  # noqa: E402
from core.jobspec import DATA_ORDERS  # noqa: E402

SEEDS = (42, 7, 1, 2, 3)
ROWS = 2000
EPOCHS = 2.0
BATCH_SIZE = 32
MAX_LENGTH = 128
LEARNING_RATE = 1e-4
SST2_VAL_ROWS = 872

Split = list[tuple[str, int]]


@dataclass(frozen=True)
class Case:
    description: str
    load: Callable[[Path, int], tuple[Split, Split, list[str]]]  # (data dir, rows) -> train, eval, labels


def _read_tsv(path: Path, text: str, label: str) -> list[tuple[str, str]]:
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader)
        t, lab = header.index(text), header.index(label)
        return [(r[t], r[lab]) for r in reader if len(r) == len(header)]


def load_hate_speech(data: Path, rows: int) -> tuple[Split, Split, list[str]]:
    train = _read_tsv(data / "korean_hate_speech_train.tsv", "comments", "hate")[:rows]
    dev = _read_tsv(data / "korean_hate_speech_dev.tsv", "comments", "hate")
    labels = sorted({label for _, label in train})  # the upload's order (app/ingest/labels.py)
    index = {name: i for i, name in enumerate(labels)}
    return [(t, index[lab]) for t, lab in train], [(t, index[lab]) for t, lab in dev], labels


def load_sst2(data: Path, rows: int) -> tuple[Split, Split, list[str]]:
    train, val = load_split(data / "sst2_train.tsv", rows, SST2_VAL_ROWS)
    return train, val, ["negative", "positive"]


CASES = {
    "hate_speech": Case("Korean hate speech (hate: 3 classes), eval on the 471-row dev file",
                        load_hate_speech),
    "sst2": Case(f"SST-2 (2 classes), eval on the last {SST2_VAL_ROWS} rows of sst2_train.tsv", load_sst2),
}


# --------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------

def majority_f1(train: Split, evaluation: Split, num_labels: int) -> dict[str, Any]:
    """The most frequent training class predicted for every evaluation row: its macro-F1."""
    from sklearn.metrics import accuracy_score, f1_score

    majority = Counter(label for _, label in train).most_common(1)[0][0]
    truth = [label for _, label in evaluation]
    predicted = [majority] * len(truth)
    return {"class": majority,
            "f1_macro": float(f1_score(truth, predicted, labels=list(range(num_labels)), average="macro",
                                       zero_division=0)),
            "accuracy": float(accuracy_score(truth, predicted))}


def predicted_counts(metrics: dict[str, Any]) -> list[int]:
    """Predictions per class on the evaluation set: the confusion matrix' column sums."""
    matrix = metrics["confusion_matrix"]["matrix"]
    return [sum(row[j] for row in matrix) for j in range(len(matrix))]


def padding_share(lengths: list[int], batch_size: int, micro: int, seed: int, epochs: int,
                  order: str) -> float:
    """Pad tokens / all tokens the order's micro-batches carry (each padded to its longest row)."""
    from worker.training.data_order import epoch_windows
    from worker.training.micro_batch import micro_batches

    real = padded = 0
    for epoch in range(epochs):
        for window in epoch_windows(lengths, batch_size, seed, epoch, order):
            for rows, _ in micro_batches(window, micro):
                real += sum(lengths[i] for i in rows)
                padded += max(lengths[i] for i in rows) * len(rows)
    return 1 - real / padded


def one_run(case: str, order: str, seed: int, train: Split, evaluation: Split, labels: list[str],
            args: argparse.Namespace) -> dict[str, Any]:
    import math

    from core.jobspec import Hyperparameters

    hp = Hyperparameters(epochs=args.epochs, batch_size=BATCH_SIZE, max_seq_length=MAX_LENGTH,
                         learning_rate=LEARNING_RATE, seed=seed, data_order=order)
    started = time.perf_counter()
    run = run_tuneserve(train, evaluation, labels, hp, args.threads, args.device)
    wall_s = time.perf_counter() - started
    result, timings = run["result"], run["timings"]
    final, best = result.final_metrics, result.best_metrics
    counts = predicted_counts(final)
    samples = int(len(train) * args.epochs)
    lengths = [int(e["length"]) for e in run["task"].train_examples]
    return {
        "dataset": case, "order": order, "seed": seed,
        "samples": samples, "steps": result.global_step,
        "train_s": run["train_s"], "samples_per_s": samples / run["train_s"],
        "cores_busy": run["train_cpu_s"] / run["train_s"],
        "f1_macro": float(final["f1_macro"]), "accuracy": float(final["accuracy"]),
        "predicted_counts": counts, "collapsed": sum(1 for c in counts if c) == 1,
        "best_f1_macro": float(best.get("f1_macro", final["f1_macro"])),
        "best_accuracy": float(best.get("accuracy", final["accuracy"])),
        "best_collapsed": sum(1 for c in predicted_counts(best) if c) == 1 if best else None,
        "padding_share": padding_share(lengths, BATCH_SIZE, result.micro_batch_size, seed,
                                       math.ceil(args.epochs), order),
        "micro_batch_size": result.micro_batch_size, "grad_accum_steps": result.grad_accum_steps,
        "probe_s": timings["probe_s"], "checkpoint_s": timings["checkpoint_s"], "eval_s": timings["eval_s"],
        "wall_s": wall_s, "device": run["device"],
    }


# --------------------------------------------------------------------------------------------
# The table
# --------------------------------------------------------------------------------------------

def _std(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def summarize(runs: list[dict[str, Any]], majority: dict[str, dict[str, Any]]) -> str:
    lines = ["| dataset | order | samples/s | macro-F1 mean ± std | min / max | Δ vs random | collapses "
             "| accuracy | best-eval macro-F1 | padding | runs |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for case in dict.fromkeys(r["dataset"] for r in runs):
        of_case = [r for r in runs if r["dataset"] == case]
        random_f1 = [r["f1_macro"] for r in of_case if r["order"] == "random"]
        for order in dict.fromkeys(r["order"] for r in of_case):
            rs = [r for r in of_case if r["order"] == order]
            f1 = [r["f1_macro"] for r in rs]
            delta = (f"{statistics.mean(f1) - statistics.mean(random_f1):+.4f}"
                     if random_f1 and order != "random" else "—")
            lines.append(
                f"| {case} | {order} | {statistics.mean(r['samples_per_s'] for r in rs):.1f} "
                f"| {statistics.mean(f1):.4f} ± {_std(f1):.4f} | {min(f1):.4f} / {max(f1):.4f} | {delta} "
                f"| {sum(r['collapsed'] for r in rs)}/{len(rs)} "
                f"| {statistics.mean(r['accuracy'] for r in rs):.4f} "
                f"| {statistics.mean(r['best_f1_macro'] for r in rs):.4f} "
                f"| {100 * statistics.mean(r['padding_share'] for r in rs):.0f}% | {len(rs)} |")
    lines.append("")
    lines.append("Majority class (the most frequent training class for every evaluation row), for reference:")
    for case, m in majority.items():
        lines.append(f"- {case}: macro-F1 {m['f1_macro']:.4f}, accuracy {m['accuracy']:.4f} "
                     f"(class {m['label']!r})")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------

def _names(raw: str, allowed: Any, flag: str) -> list[str]:
    names = [n.strip() for n in raw.split(",") if n.strip()]
    unknown = [n for n in names if n not in allowed]
    if unknown or not names:
        raise SystemExit(f"{flag}: unknown {unknown}; choose from {','.join(allowed)}")
    return names


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", default=",".join(CASES), help=f"comma list of {','.join(CASES)}")
    parser.add_argument("--orders", default=",".join(DATA_ORDERS),
                        help=f"comma list of {','.join(DATA_ORDERS)}")
    parser.add_argument("--seeds", default=",".join(map(str, SEEDS)), help="comma list of seeds")
    parser.add_argument("--rows", type=int, default=ROWS, help=f"training rows from the top (default {ROWS})")
    parser.add_argument("--epochs", type=float, default=EPOCHS, help=f"default {EPOCHS:g}")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                        help="torch threads (default: all cores)")
    parser.add_argument("--device", default="cpu", help="cpu (default) | auto | cuda")
    parser.add_argument("--data-dir", default=str(SHARED_DATA),
                        help="the shared data folder (default ../shared/data; TUNESERVE_SHARED_DATA)")
    parser.add_argument("--out", default=None, help="write the results as JSON here (after every run)")
    args = parser.parse_args(argv)
    args.datasets = _names(args.datasets, CASES, "--datasets")
    args.orders = _names(args.orders, DATA_ORDERS, "--orders")
    try:
        args.seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        raise SystemExit(f"--seeds: {args.seeds!r} is not a comma list of integers") from None
    return args


def _write(out: Path, args: argparse.Namespace, runs: list[dict[str, Any]],
           majority: dict[str, dict[str, Any]], table: str | None) -> None:
    import torch
    import transformers

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                            text=True).stdout.strip()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "config": {"datasets": args.datasets, "orders": args.orders, "seeds": args.seeds, "rows": args.rows,
                   "epochs": args.epochs, "batch_size": BATCH_SIZE, "max_length": MAX_LENGTH,
                   "learning_rate": LEARNING_RATE, "threads": args.threads, "device": args.device},
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version(),
                    "torch": torch.__version__, "transformers": transformers.__version__, "commit": commit},
        "majority": majority, "runs": runs, "table": table,
    }, indent=2, default=str))


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # a bar per load and save, 30 runs
    import torch
    import transformers

    torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    total = len(args.datasets) * len(args.orders) * len(args.seeds)
    print(f"{total} runs: datasets {args.datasets} x orders {args.orders} x seeds {args.seeds}; {args.rows} "
          f"train rows, {args.epochs:g} epochs, batch {BATCH_SIZE}, max length {MAX_LENGTH}, lr "
          f"{LEARNING_RATE:g}; {args.threads} torch threads, device {args.device}", flush=True)
    runs: list[dict[str, Any]] = []
    majority: dict[str, dict[str, Any]] = {}
    out = Path(args.out) if args.out else None
    for case in args.datasets:
        train, evaluation, labels = CASES[case].load(Path(args.data_dir), args.rows)
        majority[case] = majority_f1(train, evaluation, len(labels))
        majority[case]["label"] = labels[majority[case]["class"]]
        print(f"{case}: {CASES[case].description}; {len(train)} train / {len(evaluation)} eval rows, "
              f"labels {labels}", flush=True)
        for order in args.orders:
            for seed in args.seeds:
                r = one_run(case, order, seed, train, evaluation, labels, args)
                runs.append(r)
                print(f"[{len(runs)}/{total}] {case} {order} seed {seed}: "
                      f"{r['samples_per_s']:.1f} samples/s, "
                      f"macro-F1 {r['f1_macro']:.4f}, accuracy {r['accuracy']:.4f}"
                      f"{' COLLAPSED' if r['collapsed'] else ''}, predicted {r['predicted_counts']}, "
                      f"micro {r['micro_batch_size']}x{r['grad_accum_steps']}, padding "
                      f"{100 * r['padding_share']:.0f}%, {r['cores_busy']:.2f} cores busy, "
                      f"run {r['wall_s']:.0f}s", flush=True)
                if out:
                    _write(out, args, runs, majority, None)
    table = summarize(runs, majority)
    print()
    print(table)
    if out:
        _write(out, args, runs, majority, table)
        print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
