"""One attempt at a job between its claim and its outcome: read the job's row, build its
TrainingTask through the dataset task's family, run the loop, register the tuned model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import update
from sqlalchemy.orm import Session

from core import store
from core.db import session_scope
from core.jobspec import Hyperparameters
from core.jobstate import JobState
from core.settings import get_settings
from core.tables import Dataset, Job, TunedModel
from worker.families import family_for
from worker.job.outcome import compare_quietly, register_model
from worker.job.plan import apply_plan, cap_device_memory, plan_event, plan_job
from worker.job.sink import SqlSink
from worker.training.config import TrainConfig
from worker.training.errors import TrainingError
from worker.training.loop import run_training


def base_model_source(session: Session, job: Job) -> str | None:
    """What from_pretrained loads for the job's base model: a tuned model's directory, the
    bundled model's path, or the hub name / local path as given. None when the tuned model
    it names was deleted."""
    if job.base_model_id:
        tuned = session.get(TunedModel, job.base_model_id)
        return str(tuned.path) if tuned is not None else None
    return store.resolve_base_model(job.base_model)


def memory_plan(job_id: str, sink: SqlSink, base_model: str, source: str, task: str, hp: Hyperparameters,
                config: TrainConfig, earlier: dict[str, Any] | None) -> TrainConfig:
    """Plan the job's memory before its model loads (or keep the plan an earlier attempt trained
    with), record it on the job and as an event, and apply its choices; fails the job when
    nothing fits."""
    settings = get_settings()
    cap_device_memory(config, settings)
    resumed = earlier is not None and bool(earlier.get("fits"))
    plan = earlier if resumed else plan_job(base_model, source, task, hp, config, settings)
    if plan is not None:
        if not resumed:
            with session_scope() as session:
                session.execute(update(Job).where(Job.id == job_id).values(memory_plan=plan))
        sink.event(*plan_event(plan, resumed))
    return apply_plan(config, plan)


def run_job(job_id: str, sink: SqlSink) -> tuple[JobState, dict[str, Any]]:
    """Train the job to its end (or its cancel); returns the final state and the row's fields."""
    settings = get_settings()
    with session_scope() as session:
        job = session.get(Job, job_id)
        assert job is not None
        dataset = session.get(Dataset, job.dataset_id) if job.dataset_id else None
        if dataset is None:
            return JobState.FAILED, {"error": "The job's dataset was deleted before the job ran; upload "
                                     "the data again and start a new job.", "error_kind": "data"}
        base_model_path = base_model_source(session, job)
        if base_model_path is None:
            raise TrainingError(f"Base model {job.base_model_id} was deleted before the job ran; "
                                "start the job again from another model.")
        hp = Hyperparameters.model_validate(job.hyperparameters)
        dataset_dir, labels, task = Path(dataset.storage_path), list(dataset.labels), dataset.task
        shown_name, earlier_plan = job.base_model, job.memory_plan

    family = family_for(task)
    config = TrainConfig.from_hyperparameters(hp, settings)
    config = memory_plan(job_id, sink, shown_name, base_model_path, task, hp, config, earlier_plan)
    training_task = family.build_training_task(dataset_dir, labels, task, base_model_path, config)
    if sink.should_stop():  # cancelled (or stopped) while the model loaded: before the probe's work
        return JobState.CANCELLED, {}
    job_dir = store.job_dir(settings.models_dir, job_id)
    # What the model and data are (a new head, LoRA's size, tokens an epoch): said once, by the
    # attempt that trains from the start. A resumed attempt restores its weights from a checkpoint,
    # and a second "a new classification head" would read as if they had been reset.
    if not store.list_checkpoints(store.checkpoints_dir(settings.models_dir, job_id)):
        for kind, message, data in family.setup_events(training_task, config):
            sink.event(kind, message, data)
    result = run_training(training_task, config, job_dir, sink)
    if result.cancelled:
        return JobState.CANCELLED, {}
    checkpoint = result.best_checkpoint if hp.load_best_model_at_end and result.best_checkpoint else None
    checkpoint = checkpoint or result.last_checkpoint
    if checkpoint is None:
        return JobState.FAILED, {"error": "Training ended without a checkpoint to export (no optimizer "
                                 "step ran).", "error_kind": "bug"}
    model_id = register_model(job_id, Path(checkpoint), result, labels, task, hp)
    sink.event("model_ready", f"Tuned model {model_id} is ready to serve.", {"model_id": model_id,
               "checkpoint": str(checkpoint)})
    compare_quietly(job_id, task, model_id, sink)
    return JobState.SUCCEEDED, {"model_id": model_id, "progress": 1.0}
