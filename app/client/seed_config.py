"""`tuneserve jobs create --config config.ini`: the seed training scripts' config file as a job.

Those scripts read `[Path]` (train/validation/test files) and `[Hyperparameters]` (model,
epochs, batch size, learning rate, max length) under a few spellings each. Every key is either
used or named back to the user as unused: a silently ignored `dropout = 0.3` would be a
different experiment from the one they think they ran.
"""

from __future__ import annotations

import configparser
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Spellings seen in the seed scripts and in Hugging Face's example scripts, per meaning.
PATH_KEYS = {
    "train": ("train_file", "train_path", "train_data", "train", "training_file", "train_data_path"),
    "validation": ("validation_file", "valid_file", "val_file", "dev_file", "eval_file", "validation_path",
                   "valid_path", "dev_path", "validation", "valid", "dev", "validation_data"),
    "test": ("test_file", "test_path", "test_data", "test"),
}
MODEL_KEYS = ("model", "model_name", "model_name_or_path", "base_model", "pretrained_model",
              "pretrained_model_name", "model_path")
HYPERPARAMETER_KEYS = {
    "epochs": ("epochs", "num_epochs", "num_train_epochs", "epoch", "n_epochs"),
    "batch_size": ("batch_size", "train_batch_size", "per_device_train_batch_size", "batch"),
    "learning_rate": ("learning_rate", "lr"),
    "max_seq_length": ("max_length", "max_len", "max_seq_length", "max_seq_len", "max_sequence_length"),
    "warmup_ratio": ("warmup_ratio",),
    "weight_decay": ("weight_decay",),
    "seed": ("seed", "random_seed"),
    "eval_batch_size": ("eval_batch_size", "per_device_eval_batch_size"),
    "max_grad_norm": ("max_grad_norm",),
    "lr_scheduler": ("lr_scheduler", "lr_scheduler_type", "scheduler"),
    "early_stopping_patience": ("early_stopping_patience", "patience"),
    "gradient_checkpointing": ("gradient_checkpointing",),
    "data_order": ("data_order",),
}
# Upload options some scripts keep beside the paths.
UPLOAD_KEYS = {"text_column": ("text_column", "text_col"), "label_column": ("label_column", "label_col"),
               "task": ("task",)}
INTEGER_FIELDS = {"batch_size", "max_seq_length", "seed", "eval_batch_size", "early_stopping_patience"}
FLOAT_FIELDS = {"epochs", "learning_rate", "warmup_ratio", "weight_decay", "max_grad_norm"}
BOOL_FIELDS = {"gradient_checkpointing"}


class SeedConfigError(ValueError):
    pass


@dataclass
class SeedConfig:
    files: dict[str, Path] = field(default_factory=dict)  # train / validation / test
    base_model: str | None = None
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    upload: dict[str, str] = field(default_factory=dict)
    used: list[str] = field(default_factory=list)  # "[Section] key -> what it became"
    unused: list[str] = field(default_factory=list)  # "[Section] key"


def _convert(name: str, raw: str, where: str) -> Any:
    try:
        if name in INTEGER_FIELDS:
            return int(float(raw)) if float(raw).is_integer() else int(raw)
        if name in FLOAT_FIELDS:
            return float(raw)
        if name in BOOL_FIELDS:
            return configparser.ConfigParser.BOOLEAN_STATES[raw.lower()]
    except (ValueError, KeyError):
        raise SeedConfigError(f"{where} = {raw!r} is not a valid {name}") from None
    return raw


def _resolve_path(raw: str, config_dir: Path, where: str) -> Path:
    """Relative paths as the seed scripts meant them: from the config file's folder, else from
    the current one."""
    path = Path(raw).expanduser()
    for candidate in ([path] if path.is_absolute() else [config_dir / path, Path.cwd() / path]):
        if candidate.is_file():
            return candidate.resolve()
    raise SeedConfigError(f"{where} = {raw!r}: no such file (looked beside the config file, "
                          f"{config_dir}, and in the current folder)")


def read_seed_config(path: Path) -> SeedConfig:
    parser = configparser.ConfigParser(interpolation=None)
    try:
        if not parser.read(path, encoding="utf-8"):
            raise SeedConfigError(f"cannot read {path}")
    except configparser.Error as exc:
        raise SeedConfigError(f"{path} is not an INI file: {exc}") from exc
    config = SeedConfig()
    wanted: dict[str, tuple[str, str]] = {}  # lower-case key -> (kind, field)
    for kind, table in (("path", PATH_KEYS), ("hp", HYPERPARAMETER_KEYS), ("upload", UPLOAD_KEYS)):
        for name, spellings in table.items():
            wanted.update(dict.fromkeys(spellings, (kind, name)))
    wanted.update(dict.fromkeys(MODEL_KEYS, ("model", "base_model")))

    for section in parser.sections():
        for key, raw in parser.items(section, raw=True):
            where = f"[{section}] {key}"
            kind, name = wanted.get(key.lower(), ("", ""))
            value = raw.strip().strip("\"'")
            if not kind or not value:
                config.unused.append(where if not kind else f"{where} (empty)")
                continue
            if kind == "path":
                if name in config.files:
                    config.unused.append(f"{where} (the {name} file was already given)")
                    continue
                config.files[name] = _resolve_path(value, path.parent, where)
                config.used.append(f"{where} -> {name} file")
            elif kind == "model":
                config.base_model = value
                config.used.append(f"{where} -> base_model")
            elif kind == "upload":
                config.upload[name] = value
                config.used.append(f"{where} -> {name}")
            else:
                config.hyperparameters[name] = _convert(name, value, where)
                config.used.append(f"{where} -> {name}")
    if "train" not in config.files:
        raise SeedConfigError(f"{path} names no training file: add `train_file = ...` under [Path]")
    return config
