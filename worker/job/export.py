"""A checkpoint becomes a tuned model: its Hugging Face files (not the training state) copied
atomically into the model store with tuneserve.json beside them."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from core.store import MODEL_META_FILE, atomic_dir, read_model_meta, write_model_meta

# Resume-only files: a served model needs none of them.
TRAINING_ONLY = frozenset({"training_state.pt"})


def export_tuned_model(checkpoint_dir: Path, dest_dir: Path, meta: dict[str, Any]) -> Path:
    """Copy `checkpoint_dir`'s model files to `dest_dir`; `meta` (task, labels, thresholds,
    max_seq_length, base_model, ...) is merged over the checkpoint's own tuneserve.json."""
    checkpoint_dir, dest_dir = Path(checkpoint_dir), Path(dest_dir)
    # A full model has config.json; a LoRA adapter has adapter_config.json (its base is named there).
    if not any((checkpoint_dir / name).is_file() for name in ("config.json", "adapter_config.json")):
        raise FileNotFoundError(f"{checkpoint_dir} is not a Hugging Face model or adapter directory "
                                "(no config.json, no adapter_config.json)")
    merged = read_model_meta(checkpoint_dir) | meta
    with atomic_dir(dest_dir) as tmp:
        for path in checkpoint_dir.iterdir():
            if path.name in TRAINING_ONLY or path.name == MODEL_META_FILE:
                continue
            if path.is_dir():
                shutil.copytree(path, tmp / path.name)
            else:
                shutil.copy2(path, tmp / path.name)
        write_model_meta(tmp, merged)
    return dest_dir
