"""Search experiments: the space (validated), one Optuna study per experiment in the service's own
database (Optuna's RDBStorage on the same SQLAlchemy URL), and how trials become jobs.

Shared by the API (which validates the space, creates the study and queues the first `parallel`
trials) and the worker's job plumbing (which reports each evaluation to the study, tells it how a
trial ended, and queues the next trials). Each trial is an ordinary job: jobs.search_trial holds
its Optuna trial number.

Who asks for the next trial: the worker whose trial just ended (worker/job/search.py), under a
row lock on the experiment, right after it wrote the trial's final state. So up to `parallel`
trials are queued or running at any time without a scheduler process, and a trial a dead worker
left is resumed by the lease sweep like any job: it is still RUNNING in the study, its repeated
evaluations are the same steps (Optuna keeps the first value of a step), and it is told once.

A budget (`budget: {steps, wall_time_s}`) is checked by the same asker, before it asks: once the
trials' optimizer steps (their sum) or the wall time since the experiment was created reach it, no
trial is asked any more, the search records that the budget ended it, and the trials never asked
are skipped. Trials already queued or running finish: a budget bounds what the search starts, so
it can be overrun by at most the trials active when it ran out (stopping them midway would leave
results nobody can compare).
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Sequence
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from core.jobspec import Hyperparameters
from core.jobstate import ACTIVE_STATES, JobState
from core.tables import Experiment, Job, JobEvent, utcnow

log = logging.getLogger("tuneserve.core.search")

# The hyperparameters a search may vary, and "base_model" (a choice among the experiment's
# base_models, added to the space by itself when there are several).
SEARCHABLE = ("learning_rate", "epochs", "lora_r", "lora_alpha", "lora_dropout", "warmup_ratio",
              "weight_decay", "batch_size", "max_seq_length", "lr_scheduler", "max_grad_norm", "data_order")
INTEGER = {"lora_r", "lora_alpha", "batch_size", "max_seq_length"}
BASE_MODEL = "base_model"


class Range(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    low: float
    high: float
    log: bool = False
    step: float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _check(self) -> Range:
        if not self.low < self.high:
            raise ValueError(f"low {self.low} must be below high {self.high}")
        if self.log and self.low <= 0:
            raise ValueError(f"a log range needs low > 0 (got {self.low})")
        if self.log and self.step is not None:
            raise ValueError("a log range takes no step")
        return self


Choices = Annotated[list[float | int | str], Field(min_length=1, max_length=100)]


class Budget(BaseModel):
    """What the whole search may spend; either or both. Once spent, no new trial starts."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    steps: int | None = Field(None, gt=0, description="Optimizer steps of all trials together.")
    wall_time_s: float | None = Field(None, gt=0, description="Seconds since the experiment was created.")

    @model_validator(mode="after")
    def _check(self) -> Budget:
        if self.steps is None and self.wall_time_s is None:
            raise ValueError("a budget names steps, wall_time_s or both (leave budget out for none)")
        return self


class SearchSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    space: dict[str, Range | Choices] = Field(
        ..., min_length=1,
        description=f"Per hyperparameter ({', '.join(SEARCHABLE)}): a range {{low, high, log, step}} "
        "or a list of values to choose from.")
    trials: int = Field(8, ge=1, le=200, description="How many trials (jobs) the search runs.")
    sampler: Literal["tpe", "random", "grid"] = "tpe"
    pruner: Literal["successive_halving", "median", "none"] = "median"
    parallel: int = Field(2, ge=1, le=32, description="Trials queued or running at once.")
    budget: Budget | None = Field(
        None, description="Optional: once the trials' optimizer steps (summed) or the seconds since the "
        "experiment was created reach it, no further trial starts (running ones finish) and the trials "
        "left are skipped.")

    @model_validator(mode="after")
    def _check(self) -> SearchSpec:
        unknown = sorted(set(self.space) - set(SEARCHABLE))
        if unknown:
            raise ValueError(f"space names {unknown}, which cannot be searched; choose among "
                             f"{list(SEARCHABLE)}")
        if self.sampler == "grid":
            ranges = sorted(k for k, v in self.space.items() if isinstance(v, Range))
            if ranges:
                raise ValueError(f"the grid sampler needs a list of values for every parameter; "
                                 f"{ranges} are ranges")
        return self


def validate_against(spec: SearchSpec, shared: dict[str, Any]) -> str | None:
    """Every end of every range and every listed value must be a valid job setting on top of the
    shared hyperparameters: None, or what is wrong, naming the parameter."""
    for name, dimension in spec.space.items():
        values = [dimension.low, dimension.high] if isinstance(dimension, Range) else dimension
        for value in values:
            if name in INTEGER and isinstance(value, float) and not value.is_integer():
                return f"search.space.{name}: {value} is not a whole number"
            if name in INTEGER and isinstance(value, float):
                value = int(value)
            try:
                Hyperparameters.model_validate({**shared, name: value})
            except ValidationError as error:
                problems = "; ".join(e["msg"] for e in error.errors())
                return f"search.space.{name}: {value!r} is not a valid {name} ({problems})"
    return None


def grid_size(space: dict[str, Any]) -> int:
    return math.prod(len(v) for v in space.values())


# --------------------------------------------------------------------------------------------
# The study
# --------------------------------------------------------------------------------------------

def study_name(experiment_id: str) -> str:
    return f"tuneserve-{experiment_id}"


@functools.lru_cache(maxsize=4)
def storage(database_url: str) -> Any:
    """Optuna's tables in the service's database (created on first use); one per process and URL.
    A PostgreSQL URL's `options=-csearch_path=...` reaches psycopg as it does for the service."""
    import optuna

    kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if database_url.startswith("sqlite"):
        kwargs = {"connect_args": {"timeout": 30}}
    # Optuna keeps its schema revision in alembic's default table, alembic_version, which in this
    # database holds tuneserve's own revision (migrated before any experiment exists): Optuna then
    # leaves that table alone, but its compatibility check reads our revision as its own and
    # refuses. Its tables (studies, trials, ...) are created at first use as Optuna defines them,
    # so the check is skipped; an Optuna release that changes its schema is a dependency upgrade
    # to pair with a migration here.
    return optuna.storages.RDBStorage(database_url, engine_kwargs=kwargs, skip_compatibility_check=True)


def _sampler(search: dict[str, Any], seed: int) -> Any:
    import optuna

    if search["sampler"] == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if search["sampler"] == "grid":
        return optuna.samplers.GridSampler(search["space"], seed=seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(2, min(10, search["trials"] // 3)))


def _pruner(search: dict[str, Any]) -> Any:
    import optuna

    if search["pruner"] == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner()
    if search["pruner"] == "median":
        # One finished trial is enough to compare against: searches here are short.
        return optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=0)
    return optuna.pruners.NopPruner()


def load_study(database_url: str, experiment: Experiment, seed: int = 0) -> Any:
    """The experiment's study. The sampler is seeded by the seed and the number of trials so far:
    every process loads the study afresh, and one fixed seed would draw the same first point in
    each of them."""
    import optuna

    search = experiment.search or {}
    direction: Literal["maximize", "minimize"] = (
        "maximize" if search.get("greater_is_better", True) else "minimize")
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # not a line per load of the study
    study = optuna.create_study(study_name=study_name(experiment.id), storage=storage(database_url),
                                direction=direction, load_if_exists=True, pruner=_pruner(search))
    study.sampler = _sampler(search, seed + len(study.get_trials(deepcopy=False)))
    return study


def delete_study(database_url: str, experiment_id: str) -> None:
    """The experiment's study and its trials (gone with the experiment); none is no error."""
    import optuna

    try:
        optuna.delete_study(study_name=study_name(experiment_id), storage=storage(database_url))
    except KeyError:
        pass


def _distribution(name: str, dimension: Any) -> Any:
    import optuna

    d = optuna.distributions
    if isinstance(dimension, list):
        return d.CategoricalDistribution(dimension)
    if name in INTEGER:
        return d.IntDistribution(int(dimension["low"]), int(dimension["high"]), log=dimension["log"],
                                 step=int(dimension.get("step") or 1))
    return d.FloatDistribution(dimension["low"], dimension["high"], log=dimension["log"],
                               step=dimension.get("step"))


def _trial_of(study: Any, number: int) -> Any:
    import optuna

    trial_id = study._storage.get_trial_id_from_study_id_trial_number(study._study_id, number)
    return optuna.trial.Trial(study, trial_id)


# --------------------------------------------------------------------------------------------
# Trials as jobs
# --------------------------------------------------------------------------------------------

def queue_trials(session: Session, database_url: str, experiment_id: str,
                 ended_job_id: str | None = None) -> list[str]:
    """Ask the study for trials until `parallel` are queued or running or `trials` were asked, one
    job each; returns the new job ids (the caller enqueues them after its commit). The experiment
    row is locked meanwhile (PostgreSQL), so two workers ending trials at once do not both ask.
    When the budget is spent instead, nothing is asked and the search records why (an event on
    `ended_job_id` too, the trial whose end found it spent)."""
    experiment = session.scalars(select(Experiment).where(Experiment.id == experiment_id)
                                 .with_for_update()).one()
    search = experiment.search
    if search is None or experiment.cancel_requested or search.get("budget_ended"):
        return []
    asked = session.scalar(select(func.count()).select_from(Job)
                           .where(Job.experiment_id == experiment_id)) or 0
    active = session.scalar(select(func.count()).select_from(Job).where(
        Job.experiment_id == experiment_id, Job.state.in_([str(s) for s in ACTIVE_STATES]))) or 0
    room = min(search["parallel"] - active, search["trials"] - asked)
    if search["sampler"] == "grid":
        room = min(room, grid_size(search["space"]) - asked)
    if room > 0 and search.get("budget"):
        jobs = session.scalars(select(Job).where(Job.experiment_id == experiment_id)).all()
        ended = budget_ended(search["budget"], spent(experiment, jobs))
        if ended is not None:
            _end_by_budget(session, experiment, ended, skipped=planned_trials(search) - asked,
                           ended_job_id=ended_job_id)
            return []
    # Every ask first, then the job rows: on SQLite the rows' write lock would block Optuna's own
    # connection writing the trials.
    asks = []
    for _ in range(max(0, room)):
        study = load_study(database_url, experiment, seed=int(experiment.hyperparameters.get("seed", 42)))
        asks.append(study.ask({name: _distribution(name, dim) for name, dim in search["space"].items()}))
    new: list[str] = []
    for trial in asks:
        params = dict(trial.params)
        name = str(params.pop(BASE_MODEL, experiment.base_models[0]))
        base_model, base_model_id = search["resolved"][name]
        hp = {**search["per_model"][name], **{k: (int(v) if k in INTEGER else v) for k, v in params.items()}}
        job = Job(dataset_id=experiment.dataset_id, tenant_id=experiment.tenant_id, base_model=base_model,
                  base_model_id=base_model_id, task=experiment.task, experiment_id=experiment.id,
                  best_metric_name=experiment.primary_metric, search_trial=trial.number,
                  hyperparameters=Hyperparameters.model_validate(hp).model_dump(mode="json"))
        session.add(job)
        session.flush()
        shown = ", ".join(f"{k}={v}" for k, v in trial.params.items())
        session.add(JobEvent(job_id=job.id, kind="queued",
                             message=f"Trial {trial.number} of search {experiment.id} queued: {shown}.",
                             data={"trial": trial.number, "params": trial.params}))
        experiment.job_ids = [*experiment.job_ids, job.id]
        new.append(job.id)
    return new


# --------------------------------------------------------------------------------------------
# The budget
# --------------------------------------------------------------------------------------------

def planned_trials(search: dict[str, Any]) -> int:
    """How many trials the search would run unspent: `trials`, or fewer when a grid is smaller."""
    if search["sampler"] == "grid":
        return min(search["trials"], grid_size(search["space"]))
    return int(search["trials"])


def spent(experiment: Experiment, jobs: Sequence[Job], now: datetime | None = None) -> dict[str, Any]:
    """What the search has spent: its trials' optimizer steps (summed; a running trial's as last
    written), and the wall time from the experiment's creation to now, or to the last trial's end
    once none is queued or running."""
    now = now or utcnow()
    active = any(job.state in {str(s) for s in ACTIVE_STATES} for job in jobs)
    ends = [job.finished_at for job in jobs if job.finished_at is not None]
    until = now if active or not ends else max(ends)
    return {"steps": sum(job.step or 0 for job in jobs),
            "wall_time_s": round(max(0.0, (until - experiment.created_at).total_seconds()), 3)}


def budget_ended(budget: dict[str, Any], used: dict[str, Any]) -> dict[str, Any] | None:
    """None while the budget lasts; else which part ran out, in figures and words."""
    steps, wall_time_s = budget.get("steps"), budget.get("wall_time_s")
    if steps is not None and used["steps"] >= steps:
        reason, words = "steps", f"{used['steps']} optimizer steps of the {steps} budgeted"
    elif wall_time_s is not None and used["wall_time_s"] >= wall_time_s:
        reason, words = "wall_time_s", f"{used['wall_time_s']:g} s of the {wall_time_s:g} s budgeted"
    else:
        return None
    return {"reason": reason, "spent": used, "message": f"The search's budget is spent ({words}): no "
            "further trial starts; trials already running finish."}


def _end_by_budget(session: Session, experiment: Experiment, ended: dict[str, Any], *, skipped: int,
                   ended_job_id: str | None) -> None:
    assert experiment.search is not None
    message = f"{ended['message']} {skipped} trial(s) skipped."
    record = {**ended, "message": message, "skipped": skipped, "at": utcnow().isoformat()}
    experiment.search = {**experiment.search, "budget_ended": record}  # a new dict: the JSON is rewritten
    log.info("experiment %s: %s", experiment.id, message)
    if ended_job_id is not None:
        session.add(JobEvent(job_id=ended_job_id, kind="search_budget_spent",
                             message=f"Search {experiment.id}: {message}", data=record))


def trial_outcomes(session: Session, experiment: Experiment, jobs: Sequence[Job]) -> dict[str, list[int]]:
    """Trial numbers by how they ended: finished (succeeded), pruned, failed, cancelled, active
    (queued or running), and skipped (never started: the budget ran out first; the numbers they
    would have had)."""
    pruned = set(session.scalars(select(JobEvent.job_id).where(
        JobEvent.job_id.in_([job.id for job in jobs]), JobEvent.kind == "pruned")).all())
    out: dict[str, list[int]] = {k: [] for k in ("finished", "pruned", "failed", "cancelled", "active",
                                                 "skipped")}
    trials = sorted((j for j in jobs if j.search_trial is not None), key=lambda j: int(j.search_trial or 0))
    for job in trials:
        if job.state == JobState.SUCCEEDED:
            kind = "finished"
        elif job.id in pruned:
            kind = "pruned"
        elif job.state == JobState.FAILED:
            kind = "failed"
        elif job.state == JobState.CANCELLED:
            kind = "cancelled"
        else:
            kind = "active"
        out[kind].append(int(job.search_trial or 0))
    search = experiment.search or {}
    if search.get("budget_ended"):
        asked = len(jobs)
        out["skipped"] = list(range(asked, planned_trials(search)))
    return out


def report(database_url: str, experiment: Experiment, trial_number: int, step: int,
           value: float) -> bool:
    """One evaluation of a trial to the study; True when the pruner says stop. A step already
    reported (a resumed trial redoing it) keeps its first value: Optuna ignores the repeat."""
    import optuna

    study = load_study(database_url, experiment)
    frozen = study._storage.get_trial(
        study._storage.get_trial_id_from_study_id_trial_number(study._study_id, trial_number))
    if frozen.state != optuna.trial.TrialState.RUNNING:
        return False
    trial = _trial_of(study, trial_number)
    if step not in frozen.intermediate_values:
        trial.report(value, step)
    return bool(trial.should_prune())


def tell(database_url: str, experiment: Experiment, trial_number: int, state: str,
         value: float | None) -> None:
    """How a trial ended (complete with its best validation value, pruned, or failed); a trial
    already told (a second attempt at the same outcome) is left as it is."""
    import optuna

    study = load_study(database_url, experiment)
    frozen = study._storage.get_trial(
        study._storage.get_trial_id_from_study_id_trial_number(study._study_id, trial_number))
    if frozen.state != optuna.trial.TrialState.RUNNING:
        return
    states = optuna.trial.TrialState
    if state == "complete" and value is not None and math.isfinite(value):
        study.tell(trial_number, value)
    elif state == "pruned":
        study.tell(trial_number, state=states.PRUNED)
    else:
        study.tell(trial_number, state=states.FAIL)


def summary(database_url: str, experiment: Experiment) -> dict[str, Any]:
    """Trials by state, each parameter's importance (Optuna's evaluator, once 2 trials completed)."""
    import optuna

    study = load_study(database_url, experiment)
    trials = study.get_trials(deepcopy=False)
    counts: dict[str, int] = {}
    for t in trials:
        counts[t.state.name.lower()] = counts.get(t.state.name.lower(), 0) + 1
    completed = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    importance: dict[str, float] | None = None
    if len(completed) >= 2:
        try:
            importance = {k: float(v) for k, v in optuna.importance.get_param_importances(study).items()}
        except Exception as exc:  # e.g. every completed trial drew the same values
            log.info("experiment %s: no parameter importance (%s)", experiment.id, exc)
    return {"study": study_name(experiment.id), "trials": counts, "importance": importance,
            "points": [{"trial": t.number, "params": t.params, "value": t.value} for t in completed]}


def job_finished(session: Session, job: Job) -> tuple[str, float | None]:
    """What the study is told of a trial's job that ended: (complete|pruned|fail, its value)."""
    if job.state == JobState.SUCCEEDED:
        return "complete", job.best_metric
    pruned = session.scalar(select(func.count()).select_from(JobEvent).where(
        JobEvent.job_id == job.id, JobEvent.kind == "pruned")) or 0
    return ("pruned" if pruned else "fail"), None
