"""The model store on a real directory: the checkpoint layout, listing and pruning, atomic
writes, the model metadata file, and what every from_pretrained is allowed to load."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModel, BertConfig, BertModel

from core import store
from core.store import (
    CHECKPOINT_PREFIX,
    MODEL_META_FILE,
    TRAINING_STATE_FILE,
    atomic_dir,
    checkpoints_dir,
    job_dir,
    latest_resumable_checkpoint,
    list_checkpoints,
    model_dir,
    prune_checkpoints,
)


def _checkpoint(root: Path, step: int, *, resumable: bool = True) -> Path:
    """A checkpoint directory as the loop leaves it: weights, and the training state if resumable."""
    path = root / f"{CHECKPOINT_PREFIX}{step}"
    path.mkdir(parents=True)
    (path / "model.safetensors").write_bytes(b"w" * 10)
    if resumable:
        (path / TRAINING_STATE_FILE).write_bytes(b"s" * 20)
    return path


def test_layout_puts_checkpoints_under_the_job_and_models_apart(tmp_path: Path) -> None:
    assert job_dir(tmp_path, "job_1") == tmp_path / "jobs" / "job_1"
    assert checkpoints_dir(tmp_path, "job_1") == tmp_path / "jobs" / "job_1" / "checkpoints"
    assert model_dir(tmp_path, "mdl_1") == tmp_path / "models" / "mdl_1"
    assert store.checkpoint_step(Path("x") / "step-120") == 120


def test_checkpoints_are_listed_by_step_number_skipping_temporaries_and_strays(tmp_path: Path) -> None:
    root = tmp_path / "checkpoints"
    for step in (10, 9, 100):
        _checkpoint(root, step)
    _checkpoint(root, 50, resumable=False)  # kept for its weights only
    # A half-written save, a replaced one, and files that only look like checkpoints.
    (root / ".tmp-step-200-abcd1234").mkdir()
    (root / ".old-step-10-abcd1234").mkdir()
    (root / "step-7.bak").mkdir()
    (root / "notes.txt").write_text("x")

    # 9 < 10 < 100: by number, not by name ("step-10" < "step-9" as text).
    assert [p.name for p in list_checkpoints(root)] == ["step-9", "step-10", "step-100"]
    assert [p.name for p in list_checkpoints(root, resumable_only=False)] == [
        "step-9", "step-10", "step-50", "step-100"]
    assert latest_resumable_checkpoint(root) == (100, root / "step-100")


def test_a_missing_or_empty_checkpoint_root_lists_nothing(tmp_path: Path) -> None:
    assert list_checkpoints(tmp_path / "absent") == []
    assert latest_resumable_checkpoint(tmp_path / "absent") is None
    _checkpoint(tmp_path / "weights-only", 3, resumable=False)
    assert latest_resumable_checkpoint(tmp_path / "weights-only") is None


def test_prune_keeps_the_state_of_some_and_the_weights_of_others(tmp_path: Path) -> None:
    root = tmp_path / "checkpoints"
    for step in (1, 2, 3, 4):
        _checkpoint(root, step)

    removed = prune_checkpoints(root, keep_state={4}, keep_weights={2})

    assert sorted(removed) == [root / "step-1", root / "step-3"]
    assert sorted(p.name for p in root.iterdir()) == ["step-2", "step-4"]
    assert (root / "step-4" / TRAINING_STATE_FILE).is_file()
    # Step 2 is kept for its weights: its optimizer state (the larger part) is gone.
    assert (root / "step-2" / "model.safetensors").is_file()
    assert not (root / "step-2" / TRAINING_STATE_FILE).exists()
    assert latest_resumable_checkpoint(root) == (4, root / "step-4")
    # Pruning again with the same sets removes nothing more.
    assert prune_checkpoints(root, keep_state={4}, keep_weights={2}) == []


def test_atomic_dir_appears_whole_or_not_at_all(tmp_path: Path) -> None:
    final = tmp_path / "checkpoints" / "step-5"
    with atomic_dir(final) as tmp:
        (tmp / "a.txt").write_text("new")
        # While it is written, readers see no step-5 (and the loop's listing skips the temporary).
        assert not final.exists()
        assert list_checkpoints(final.parent, resumable_only=False) == []
    assert (final / "a.txt").read_text() == "new"
    assert [p.name for p in final.parent.iterdir()] == ["step-5"]


def test_atomic_dir_replaces_an_existing_directory_in_one_step(tmp_path: Path) -> None:
    final = tmp_path / "step-5"
    final.mkdir()
    (final / "old.txt").write_text("old")
    with atomic_dir(final) as tmp:
        (tmp / "new.txt").write_text("new")
    assert sorted(p.name for p in final.iterdir()) == ["new.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["step-5"]  # no .old- or .tmp- left behind


def test_a_failed_write_leaves_the_previous_directory_as_it_was(tmp_path: Path) -> None:
    final = tmp_path / "step-5"
    final.mkdir()
    (final / "old.txt").write_text("old")
    with pytest.raises(OSError, match="disk full"), atomic_dir(final) as tmp:
        (tmp / "half.txt").write_text("half")
        raise OSError("disk full")
    assert sorted(p.name for p in final.iterdir()) == ["old.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["step-5"]


def test_model_meta_round_trips_unicode_and_is_empty_when_absent(tmp_path: Path) -> None:
    assert store.read_model_meta(tmp_path) == {}
    meta = {"task": "single_label", "labels": ["정상", "욕설"], "thresholds": None, "max_seq_length": 128}
    store.write_model_meta(tmp_path, meta)
    assert store.read_model_meta(tmp_path) == meta
    # Written as readable UTF-8 (someone opens it on the volume), not \\u escapes.
    assert "정상" in (tmp_path / MODEL_META_FILE).read_text(encoding="utf-8")


def test_dir_size_counts_every_file_below(tmp_path: Path) -> None:
    _checkpoint(tmp_path / "checkpoints", 1)
    (tmp_path / "checkpoints" / "step-1" / "sub").mkdir()
    (tmp_path / "checkpoints" / "step-1" / "sub" / "x.bin").write_bytes(b"x" * 7)
    assert store.dir_size_bytes(tmp_path) == 10 + 20 + 7
    assert store.dir_size_bytes(tmp_path / "absent") == 0


def test_dir_size_leaves_out_a_file_that_cannot_be_read_rather_than_failing(tmp_path: Path) -> None:
    """The API sums a job's disk while its worker rotates checkpoints: a file gone mid-walk (here a
    link to nothing, which stat cannot follow) is left out of the sum, not a 500."""
    (tmp_path / "kept.bin").write_bytes(b"x" * 5)
    (tmp_path / "gone").symlink_to(tmp_path / "removed-while-walking")
    assert store.dir_size_bytes(tmp_path) == 5


def test_the_bundled_model_resolves_by_every_name_to_its_directory() -> None:
    path = store.bundled_model_path()
    assert (path / "config.json").is_file()
    for name in store.BUNDLED_MODEL_NAMES:
        assert store.resolve_base_model(name) == str(path)
    # Anything else (a hub name, a local path) passes through unchanged.
    assert store.resolve_base_model("klue/bert-base") == "klue/bert-base"
    assert store.resolve_base_model("/models/mine") == "/models/mine"


def _tiny_bert() -> BertModel:
    torch.manual_seed(0)
    return BertModel(BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=1, num_attention_heads=1,
                                intermediate_size=16, max_position_embeddings=16))


def test_load_options_load_safetensors_and_refuse_a_pickled_checkpoint(tmp_path: Path) -> None:
    model = _tiny_bert()
    safe = tmp_path / "safe"
    model.save_pretrained(safe)
    loaded = AutoModel.from_pretrained(str(safe), **store.load_options(trust_remote_code=False))
    assert torch.equal(loaded.embeddings.word_embeddings.weight, model.embeddings.word_embeddings.weight)

    # The same weights as a pickle only: unpickling can run code, so from_pretrained must refuse.
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text(json.dumps(model.config.to_dict()))
    torch.save(model.state_dict(), pickled / "pytorch_model.bin")
    with pytest.raises(OSError, match="safetensors"):
        AutoModel.from_pretrained(str(pickled), **store.load_options(trust_remote_code=False))
    assert store.load_options(trust_remote_code=True)["trust_remote_code"] is True
    assert store.tokenizer_options(trust_remote_code=False) == {"trust_remote_code": False}
