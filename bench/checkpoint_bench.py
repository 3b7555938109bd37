"""What a checkpoint costs: a training run that checkpoints after every optimizer step
(checkpoint_interval_s=0), with each save timed where the loop calls it, beside the time of the
optimizer steps of the same run. A checkpoint's share of a checkpoint interval is the overhead
of checkpointing by time.

The model is the bundled all-MiniLM-L6-v2 with a 2-label head on SST-2 rows, through the real
classification task and training loop (fused AdamW, so a checkpoint holds the weights plus two
moment buffers), written through the same atomic save as in service. The sink is in memory, so
the SQL row of each checkpoint (one INSERT) is not counted.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/checkpoint_bench.py --out bench/results/checkpoint.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "sst2_train.tsv"


def write_dataset(source: Path, rows: int, directory: Path) -> Path:
    """train.parquet / validation.parquet (row, text, label) from the first rows of SST-2."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    lines = source.read_text(encoding="utf-8").splitlines()[1:rows + 1]
    labels = [int(line.split("\t", 1)[0]) for line in lines]
    texts = [line.split("\t", 1)[1] for line in lines]
    cut = int(len(lines) * 0.9)
    for split, part in (("train", slice(0, cut)), ("validation", slice(cut, None))):
        pq.write_table(pa.table({"row": list(range(len(texts)))[part], "text": texts[part],
                                 "label": labels[part]}), directory / f"{split}.parquet")
    return directory


def one_run(dataset_dir: Path, steps: int, threads: int) -> dict[str, Any]:
    import worker.training.loop
    from core.store import bundled_model_path, dir_size_bytes
    from worker.families.classification.task import build_classification_task
    from worker.training.config import TrainConfig
    from worker.training.recording import RecordingSink

    config = TrainConfig(max_steps=steps, batch_size=16, micro_batch_size=16, learning_rate=5e-5,
                         max_seq_length=128, eval_strategy="steps", eval_steps=5, logging_steps=1,
                         device="cpu", torch_threads=threads, checkpoint_interval_s=0.0,
                         # The service's default: the last 2 and the best are kept while it runs.
                         keep_last_checkpoints=2)
    task = build_classification_task(dataset_dir, ["negative", "positive"], False,
                                     str(bundled_model_path()), config)
    save_s: list[float] = []
    held_bytes: list[int] = []  # the job's checkpoints on disk between two saves (after rotation)
    save = worker.training.loop.save_checkpoint

    def timed_save(trainer: Any, root: Path) -> Path:
        held_bytes.append(dir_size_bytes(root) if root.is_dir() else 0)
        started = time.perf_counter()
        path = save(trainer, root)
        save_s.append(time.perf_counter() - started)
        return path

    worker.training.loop.save_checkpoint = timed_save  # the loop's own call, timed
    try:
        with tempfile.TemporaryDirectory() as run_dir:
            sink = RecordingSink()
            result = worker.training.loop.run_training(task, config, Path(run_dir), sink)
            assert result.last_checkpoint is not None
            size = dir_size_bytes(result.last_checkpoint)
            state = (result.last_checkpoint / "training_state.pt").stat().st_size
    finally:
        worker.training.loop.save_checkpoint = save
    step_s = [16 / p[2]["samples_per_second"] for p in sink.train_points]
    return {"steps": steps, "save_s": save_s, "step_s": step_s, "checkpoint_bytes": size,
            "training_state_bytes": state, "held_bytes": held_bytes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20, help="optimizer steps (default 20)")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        dataset_dir = write_dataset(Path(args.data), 1200, Path(tmp))
        load_before = os.getloadavg()[0]
        run = one_run(dataset_dir, args.steps, args.threads)
        load_after = os.getloadavg()[0]
    saves, steps = sorted(run["save_s"]), sorted(run["step_s"])
    cost_s = statistics.median(saves)
    summary = {
        "checkpoint_s_median": cost_s, "checkpoint_s_min": saves[0], "checkpoint_s_max": saves[-1],
        "step_s_median": statistics.median(steps), "step_s_min": steps[0],
        "checkpoints": len(saves), "checkpoint_mb": run["checkpoint_bytes"] / 2**20,
        "training_state_mb": run["training_state_bytes"] / 2**20,
        # Disk the running job's checkpoints take (the last 2 and the best, only the newest with
        # its optimizer state): the largest figure between two saves.
        "checkpoints_held_mb_max": max(run["held_bytes"]) / 2**20,
        "overhead_at_600_s": cost_s / 600, "overhead_at_60_s": cost_s / 60,
        "threads": args.threads, "load_average_1m": [load_before, load_after], "run": run,
    }
    print(json.dumps({k: v for k, v in summary.items() if k != "run"}, indent=2))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
