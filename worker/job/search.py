"""A search experiment's trial, seen from the worker's job plumbing (never from the training loop):
each evaluation goes to the experiment's Optuna study, the pruner's verdict stops the job at once,
and when the job has ended the study is told how and the next trials are queued."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

from core import search
from core.db import session_scope
from core.queue import TRAIN_TASK, enqueue
from core.settings import get_settings
from core.tables import Experiment, Job

log = logging.getLogger("tuneserve.worker.job.search")


@dataclass
class Trial:
    """The job's trial: reports evaluations; `pruned` once the pruner said stop."""

    job_id: str
    experiment_id: str
    number: int
    metric: str
    pruned: bool = False

    @classmethod
    def of_job(cls, job_id: str) -> Trial | None:
        with session_scope() as session:
            job = session.get(Job, job_id)
            if job is None or job.search_trial is None or job.experiment_id is None:
                return None
            experiment = session.get(Experiment, job.experiment_id)
            if experiment is None or experiment.search is None:
                return None
            return cls(job_id=job_id, experiment_id=experiment.id, number=int(job.search_trial),
                       metric=experiment.primary_metric)

    def report(self, step: int, values: dict[str, Any]) -> str | None:
        """The evaluation's metric to the study; the pruning message when the pruner stops the trial.
        A study that cannot be reached must not fail the job: the trial then just runs on."""
        value = values.get(self.metric)
        if not isinstance(value, int | float) or not math.isfinite(value) or self.pruned:
            return None
        try:
            with session_scope() as session:
                experiment = session.get(Experiment, self.experiment_id)
                assert experiment is not None and experiment.search is not None
                session.expunge(experiment)
            pruner = experiment.search["pruner"]
            stop = search.report(get_settings().database_url, experiment, self.number, step, float(value))
        except Exception:
            log.warning("job %s: reporting trial %d to the study failed", self.job_id, self.number,
                        exc_info=True)
            return None
        if not stop:
            return None
        self.pruned = True
        return (f"Trial {self.number} pruned at step {step}: {self.metric} {value:.4f} is worse than the "
                f"search's other trials at that step ({pruner} pruner); the job stops "
                "here.")


def trial_ended(job_id: str) -> None:
    """Tell the study how the trial ended, then queue the next trials (at most `parallel` at once),
    unless the search's budget is spent (then this trial's events say so). Called once the job's
    final state is written; a second call for the same job changes nothing."""
    settings = get_settings()
    try:
        with session_scope() as session:
            job = session.get(Job, job_id)
            if job is None or job.search_trial is None or job.experiment_id is None:
                return
            experiment = session.get(Experiment, job.experiment_id)
            if experiment is None or experiment.search is None:
                return
            state, value = search.job_finished(session, job)
            search.tell(settings.database_url, experiment, int(job.search_trial), state, value)
        with session_scope() as session:
            new = search.queue_trials(session, settings.database_url, str(job.experiment_id),
                                      ended_job_id=job_id)
        for new_id in new:
            enqueue(TRAIN_TASK, new_id)
        if new:
            log.info("job %s: trial ended; queued trial job(s) %s", job_id, new)
    except Exception:
        log.exception("job %s: the search could not go on from this trial", job_id)
