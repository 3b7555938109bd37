"""Resume: a run interrupted anywhere continues from its last checkpoint to the very weights an
uninterrupted run reaches (model, optimizer, scheduler, RNG, data position, micro-batch)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.worker.helpers import build_task, make_config, max_weight_diff, record_windows, weights
from worker.training.loop import run_training
from worker.training.recording import RecordingSink

# 36 rows, batch 8: 5 steps per epoch (the last one short), 2 epochs = 10 steps; a checkpoint
# every 3 steps, across the epoch boundary. The micro-batch is forced: no probe in record_windows.
RUN = {"epochs": 2, "batch_size": 8, "micro_batch_size": 4, "eval_strategy": "steps", "eval_steps": 3,
       "lr_scheduler": "cosine", "warmup_ratio": 0.2}


@pytest.fixture(scope="module")
def resume_dataset_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.worker.helpers import write_dataset

    return write_dataset(tmp_path_factory.mktemp("resume-dataset"), 36, 12, seed=3)


def _run(dataset_dir: Path, model_dir: Path, run_dir: Path, sink: Any = None, **overrides: Any):  # type: ignore[no-untyped-def]
    config = make_config(**(RUN | overrides))
    task = build_task(dataset_dir, model_dir, config)
    windows = record_windows(task)
    sink = sink or RecordingSink()
    result = run_training(task, config, run_dir, sink)
    return task, sink, result, windows


class CrashingSink(RecordingSink):
    """The worker dies: an exception out of the loop right after step `crash_at`."""

    def __init__(self, crash_at: int) -> None:
        super().__init__()
        self.crash_at = crash_at

    def train_point(self, step: int, epoch: float, values: dict[str, Any]) -> None:
        super().train_point(step, epoch, values)
        if step == self.crash_at:
            raise KeyboardInterrupt("worker killed")


def test_resume_after_cancel_reaches_the_uninterrupted_weights(
    resume_dataset_dir: Path, dropout_model_dir: Path, tmp_path: Path
) -> None:
    """With dropout ON: the same weights prove the RNG stream was restored too."""
    full, full_sink, full_result, full_windows = _run(resume_dataset_dir, dropout_model_dir,
                                                      tmp_path / "full")

    # Cancelled at step 4, between evaluations (3 and 6): it checkpoints where it stopped.
    first, first_sink, first_result, first_windows = _run(
        resume_dataset_dir, dropout_model_dir, tmp_path / "run", RecordingSink(stop_when=lambda s: s >= 4))
    assert first_result.cancelled and first_result.global_step == 4
    assert [c["step"] for c in first_sink.checkpoints] == [3, 4]

    second, sink, result, windows = _run(resume_dataset_dir, dropout_model_dir, tmp_path / "run")
    (resumed,) = sink.events_of("resumed")
    assert resumed["step"] == 4 and result.resumed_from_step == 4
    assert "batch_probe" not in sink.kinds()
    assert result.global_step == full_result.global_step == 10 and not result.cancelled
    # The data position: steps 5..10 use the same windows as the uninterrupted run.
    assert windows == full_windows[4:] and first_windows == full_windows[:4]
    assert [p[0] for p in sink.train_points] == list(range(5, 11))
    assert max_weight_diff(weights(full.model), weights(second.model)) < 1e-6
    assert result.final_metrics["loss"] == pytest.approx(full_result.final_metrics["loss"], abs=1e-6)
    # The train loss since the last evaluation travelled in the checkpoint: the evaluation at
    # step 6 compares the same mean of steps 4..6 with its loss as the uninterrupted run did.
    assert sink.eval_points[0][0] == 6
    assert sink.eval_points[0][2]["train_loss"] == pytest.approx(full_sink.eval_points[1][2]["train_loss"])
    assert sink.eval_points[0][2]["fit"] == full_sink.eval_points[1][2]["fit"]


def test_resume_after_a_crash_keeps_the_adapted_micro_batch(
    resume_dataset_dir: Path, model_dir: Path, tmp_path: Path
) -> None:
    full, _, _, _ = _run(resume_dataset_dir, model_dir, tmp_path / "full", micro_batch_size=8)

    with pytest.raises(KeyboardInterrupt):
        _run(resume_dataset_dir, model_dir, tmp_path / "run", CrashingSink(crash_at=8), micro_batch_size=8,
             fault_oom_above_micro_batch=2, fault_oom_from_step=2)
    checkpoints = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert checkpoints == ["step-3", "step-5", "step-6"]  # evaluations, and the end of epoch 1

    # The new worker has no fault settings: the micro-batch comes from the checkpoint, not a probe.
    second, sink, result, _ = _run(resume_dataset_dir, model_dir, tmp_path / "run")
    assert sink.events_of("resumed")[0]["step"] == 6
    assert (result.micro_batch_size, result.grad_accum_steps) == (2, 4)
    assert {p[2]["micro_batch_size"] for p in sink.train_points} == {2}
    assert max_weight_diff(weights(full.model), weights(second.model)) < 1e-5


def test_a_finished_run_resumes_to_its_result_without_training(
    small_dataset_dir: Path, model_dir: Path, tmp_path: Path
) -> None:
    """A worker that died after the last checkpoint but before the model was registered."""
    _, _, first, _ = _run(small_dataset_dir, model_dir, tmp_path, epochs=1, eval_strategy="epoch")
    _, sink, again, windows = _run(small_dataset_dir, model_dir, tmp_path, epochs=1, eval_strategy="epoch")
    assert windows == [] and sink.train_points == []
    assert again.global_step == first.global_step and again.resumed_from_step == first.global_step
    assert again.last_checkpoint == first.last_checkpoint and again.best_checkpoint == first.best_checkpoint
    assert again.final_metrics == first.final_metrics


def test_a_half_written_checkpoint_is_ignored(small_dataset_dir: Path, model_dir: Path,
                                              tmp_path: Path) -> None:
    stale = tmp_path / "checkpoints" / ".tmp-step-9-deadbeef"
    stale.mkdir(parents=True)
    (stale / "config.json").write_text("{")
    (tmp_path / "checkpoints" / "step-7").mkdir()  # no training_state.pt: incomplete
    _, sink, result, _ = _run(small_dataset_dir, model_dir, tmp_path, epochs=1, eval_strategy="epoch")
    assert "resumed" not in sink.kinds() and result.resumed_from_step is None
    assert not stale.exists()
