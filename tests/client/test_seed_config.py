"""The seed scripts' config.ini read as a job: every key used or named, paths found, bad values."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.client.seed_config import SeedConfigError, read_seed_config


def _project(tmp_path: Path, text: str) -> Path:
    (tmp_path / "data").mkdir()
    for name in ("train.tsv", "dev.tsv", "test.tsv"):
        (tmp_path / "data" / name).write_text("text\tlabel\n", encoding="utf-8")
    config = tmp_path / "config.ini"
    config.write_text(text, encoding="utf-8")
    return config


def test_every_key_is_used_or_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = _project(tmp_path, """
[Path]
train_path = data/train.tsv
valid_file = data/dev.tsv
test_file = data/test.tsv
save_dir = ./checkpoints
[Hyperparameters]
model_name_or_path = beomi/kcbert-base
num_train_epochs = 3
train_batch_size = 32
lr = 5e-5
max_len = 128.0
warmup_ratio = 0.06
gradient_checkpointing = yes
data_order = windowed
dropout = 0.3
fp16 = true
text_column = comments
""")
    monkeypatch.chdir(tmp_path.parent)  # relative paths are found beside the config file
    seed = read_seed_config(config)
    assert seed.files == {"train": (tmp_path / "data/train.tsv").resolve(),
                          "validation": (tmp_path / "data/dev.tsv").resolve(),
                          "test": (tmp_path / "data/test.tsv").resolve()}
    assert seed.base_model == "beomi/kcbert-base"
    assert seed.hyperparameters == {"epochs": 3.0, "batch_size": 32, "learning_rate": 5e-5,
                                    "max_seq_length": 128, "warmup_ratio": 0.06,
                                    "gradient_checkpointing": True, "data_order": "windowed"}
    assert seed.upload == {"text_column": "comments"}
    assert seed.unused == ["[Path] save_dir", "[Hyperparameters] dropout", "[Hyperparameters] fp16"]
    assert "[Hyperparameters] max_len -> max_seq_length" in seed.used


@pytest.mark.parametrize(("text", "phrase"), [
    ("[Hyperparameters]\nepochs = 1\n", "names no training file"),
    ("[Path]\ntrain_file = data/missing.tsv\n", "[Path] train_file = 'data/missing.tsv': no such file"),
    ("[Path]\ntrain_file = data/train.tsv\n[Hyperparameters]\nbatch_size = many\n",
     "[Hyperparameters] batch_size = 'many' is not a valid batch_size"),
    ("[Path]\ntrain_file = data/train.tsv\n[Hyperparameters]\nmax_length = 12.5\n",
     "max_length = '12.5' is not a valid max_seq_length"),
    ("train_file = data/train.tsv\n", "is not an INI file"),
])
def test_config_mistakes_are_named(tmp_path: Path, text: str, phrase: str) -> None:
    with pytest.raises(SeedConfigError) as caught:
        read_seed_config(_project(tmp_path, text))
    assert phrase in str(caught.value)


def test_a_repeated_file_key_is_named_not_silently_replaced(tmp_path: Path) -> None:
    seed = read_seed_config(_project(tmp_path, "[Path]\ntrain_file = data/train.tsv\n"
                                               "train_path = data/dev.tsv\n"))
    assert seed.files["train"].name == "train.tsv"
    assert seed.unused == ["[Path] train_path (the train file was already given)"]
