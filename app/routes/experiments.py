"""The /experiments resource: several base models fine-tuned on one dataset, one job each, and a
leaderboard beside the majority and TF-IDF baselines that names the model to use."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, HTTPException, Query, Response, status
from pydantic import ValidationError
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from app import leaderboard as board
from app.auth import Principal
from app.base_models import UnusableBaseModel, resolve_base_model
from app.crud import experiments as crud
from app.crud import jobs as jobs_crud
from app.deps import Authenticated, PrincipalDep, RemovalDep, SessionDep, SettingsDep
from app.removal import ModelInUse, jobs_training_from
from app.schemas.common import IdQuery, Limit, Offset, errors
from app.schemas.experiments import ExperimentCreate, ExperimentIdPath, ExperimentPublic, ExperimentsPublic
from core import catalogue, jobstate, search
from core.jobspec import Hyperparameters
from core.jobstate import ACTIVE_STATES
from core.queue import TRAIN_TASK, enqueue
from core.settings import get_settings
from core.tables import Dataset, Experiment, Job

log = logging.getLogger("tuneserve.api.experiments")
router = APIRouter(prefix="/experiments", tags=["experiments"], dependencies=[Authenticated],
                   responses=errors(400, 401, 404, 409, 413, 422, 429, 503))

# Every model sees the same data order and head initialisation: the comparison is of models.
SHARED_ONLY = {"seed"}


def _get_experiment_or_404(session: Session, principal: Principal, experiment_id: str) -> Experiment:
    experiment = principal.visible(crud.get_experiment(session, experiment_id=experiment_id))
    if experiment is None:
        raise HTTPException(404, f"No experiment with id {experiment_id!r}; GET /experiments lists them.")
    return experiment


def _hyperparameters_per_model(experiment_in: ExperimentCreate) -> dict[str, Hyperparameters]:
    """The shared hyperparameters with each model's overrides on top; 422 names what is wrong."""
    unknown = sorted(set(experiment_in.overrides) - set(experiment_in.base_models))
    if unknown:
        raise HTTPException(422, f"overrides name {unknown}, which are not in base_models "
                                 f"{experiment_in.base_models}; key each override by a base model as listed.")
    shared = experiment_in.hyperparameters.model_dump(mode="json", exclude_unset=True)
    out: dict[str, Hyperparameters] = {}
    for name in experiment_in.base_models:
        override = experiment_in.overrides.get(name, {})
        fixed = sorted(SHARED_ONLY & set(override))
        if fixed:
            raise HTTPException(422, f"overrides[{name!r}] sets {fixed}: every model of an experiment "
                                     "uses the same seed, so that they see the same data order. Set it in "
                                     "hyperparameters.")
        try:
            out[name] = Hyperparameters.model_validate({**shared, **override})
        except ValidationError as error:
            problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'hyperparameters'}: {e['msg']}"
                                 for e in error.errors())
            raise HTTPException(422, f"overrides[{name!r}]: {problems}") from error
    return out


@router.post("", response_model=ExperimentPublic, status_code=status.HTTP_201_CREATED)
def create_experiment(experiment_in: ExperimentCreate, session: SessionDep, settings: SettingsDep,
                      principal: PrincipalDep) -> ExperimentPublic:
    """Fine-tune several base models on one dataset: one queued job each, same split and seed."""
    dataset = principal.visible(session.get(Dataset, experiment_in.dataset_id))
    if dataset is None:
        raise HTTPException(404, f"No dataset with id {experiment_in.dataset_id!r}; upload one with "
                                 "POST /datasets.")
    if dataset.task not in catalogue.TRAINABLE_TASKS:
        raise HTTPException(422, f"Dataset {dataset.id} is a {dataset.task!r} dataset; experiments train "
                                 f"{' and '.join(sorted(catalogue.TRAINABLE_TASKS))} models.")
    names = [name.strip() for name in experiment_in.base_models]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise HTTPException(422, f"base_models lists {duplicates} more than once; each model trains once "
                                 "per experiment (vary hyperparameters in another experiment).")
    if len(names) > settings.max_experiment_models:
        raise HTTPException(422, f"{len(names)} base models; an experiment takes at most "
                                 f"{settings.max_experiment_models} (TUNESERVE_MAX_EXPERIMENT_MODELS).")
    experiment_in.base_models = names
    per_model = {name: catalogue.with_job_defaults(hp, dataset.task)
                 for name, hp in _hyperparameters_per_model(experiment_in).items()}
    allowed = catalogue.entry_for(dataset.task).metrics
    for name, hp in per_model.items():
        if hp.metric_for_best_model not in allowed:
            raise HTTPException(422, f"metric_for_best_model {hp.metric_for_best_model!r} (for {name!r}) "
                                     f"does not exist for {dataset.task} jobs; choose one of "
                                     f"{sorted(allowed)}.")
    try:
        resolved = {name: resolve_base_model(session, settings, principal, name) for name in names}
    except UnusableBaseModel as exc:
        raise HTTPException(422, str(exc)) from exc
    spec = experiment_in.search
    if spec is not None:
        for name, hp in per_model.items():
            problem = search.validate_against(spec, hp.model_dump(mode="json"))
            if problem:
                raise HTTPException(422, f"{problem}{f' (for {name!r})' if len(names) > 1 else ''}; "
                                         "fix the range or the values listed.")
        chat_only = sorted(set(catalogue.CHAT_ONLY_FIELDS) & set(spec.space))
        if chat_only and dataset.task != "chat":
            raise HTTPException(422, f"search.space names {chat_only}, which apply to chat jobs only; "
                                     f"dataset {dataset.id} is {dataset.task} (classifiers are fully "
                                     "fine-tuned).")
    adds = len(names) if spec is None else spec.parallel
    active = jobs_crud.count_active_jobs(session, tenant_id=principal.tenant_id)
    if active + adds > settings.max_active_jobs_per_key:
        raise HTTPException(429, f"this key has {active} queued or running jobs and the experiment adds "
                                 f"{adds}; the limit is {settings.max_active_jobs_per_key} "
                                 "(TUNESERVE_MAX_ACTIVE_JOBS_PER_KEY): wait for jobs to finish, then retry",
                            headers={"Retry-After": "60"})

    experiment = crud.create_experiment(session, values={
        "tenant_id": principal.tenant_id, "name": experiment_in.name, "dataset_id": dataset.id,
        "task": dataset.task, "base_models": names,
        "hyperparameters": experiment_in.hyperparameters.model_dump(mode="json"),
        # Each override as validated (coerced and in the job's terms), not as sent.
        "overrides": {name: {k: per_model[name].model_dump(mode="json")[k] for k in override}
                      for name, override in experiment_in.overrides.items()},
        "primary_metric": catalogue.with_job_defaults(experiment_in.hyperparameters,
                                            dataset.task).metric_for_best_model,
    })
    if spec is not None:
        return _start_search(session, settings.database_url, experiment, spec, per_model, resolved)
    jobs: list[Job] = []
    for name in names:
        base_model, base_model_id = resolved[name]
        hp = per_model[name]
        jobs.append(jobs_crud.create_job(session, values={
            "dataset_id": dataset.id, "tenant_id": principal.tenant_id, "base_model": base_model,
            "base_model_id": base_model_id, "task": dataset.task, "experiment_id": experiment.id,
            "best_metric_name": hp.metric_for_best_model, "hyperparameters": hp.model_dump(mode="json"),
        }))
    experiment.job_ids = [job.id for job in jobs]
    session.commit()
    _enqueue_all(session, experiment, jobs)
    return _public(session, experiment, detailed=True)


def _start_search(session: Session, database_url: str, experiment: Experiment, spec: search.SearchSpec,
                  per_model: dict[str, Hyperparameters],
                  resolved: dict[str, tuple[str, str | None]]) -> ExperimentPublic:
    """The study's first `parallel` trials as jobs; the worker that ends a trial asks for the next."""
    space = spec.model_dump(mode="json")["space"]
    if len(experiment.base_models) > 1:
        space[search.BASE_MODEL] = list(experiment.base_models)
    experiment.search = {
        **spec.model_dump(mode="json"), "space": space,
        "greater_is_better": catalogue.greater_is_better(experiment.task, experiment.primary_metric),
        "resolved": {name: list(value) for name, value in resolved.items()},
        "per_model": {name: hp.model_dump(mode="json") for name, hp in per_model.items()},
    }
    session.commit()
    job_ids = search.queue_trials(session, database_url, experiment.id)
    session.commit()
    jobs = [job for job in (session.get(Job, job_id) for job_id in job_ids) if job is not None]
    _enqueue_all(session, experiment, jobs)
    return _public(session, experiment, detailed=True, database_url=database_url)


def _enqueue_all(session: Session, experiment: Experiment, jobs: list[Job]) -> None:
    """After the commit, as POST /jobs does; if the broker stops answering, the jobs it did not
    take are marked failed, and the ones it took run."""
    for i, job in enumerate(jobs):
        try:
            enqueue(TRAIN_TASK, job.id)
        except Exception as exc:
            log.exception("could not enqueue job %s of experiment %s", job.id, experiment.id)
            error = (f"The job could not be queued: the broker did not answer ({type(exc).__name__}). "
                     "Check GET /readyz.")
            for lost in jobs[i:]:
                if jobstate.fail_queued(session, job_id=lost.id, error=error, error_kind="environment"):
                    jobs_crud.add_event(session, job_id=lost.id, kind="failed", message=error)
            session.commit()
            raise HTTPException(503, f"The broker did not answer, so {len(jobs) - i} of the experiment's "
                                     f"jobs could not be queued; they are marked failed (experiment "
                                     f"{experiment.id}). Check GET /readyz, then delete the experiment and "
                                     "create it again.") from exc


def _public(session: Session, experiment: Experiment, *, detailed: bool,
            jobs: list[Job] | None = None, database_url: str | None = None) -> ExperimentPublic:
    if jobs is None:
        jobs = crud.jobs_of(session, experiments=[experiment])[experiment.id]
    metric = experiment.primary_metric
    greater = catalogue.greater_is_better(experiment.task, metric)
    state = board.state_of(experiment, jobs)
    out: dict[str, Any] = {
        "id": experiment.id, "name": experiment.name, "dataset_id": experiment.dataset_id,
        "task": experiment.task, "state": state, "progress": board.progress_of(jobs),
        "base_models": experiment.base_models, "hyperparameters": experiment.hyperparameters,
        "overrides": experiment.overrides, "primary_metric": metric, "greater_is_better": greater,
        "created_at": experiment.created_at, "jobs": board.job_rows(experiment, jobs),
    }
    if detailed:
        ids = [job.id for job in jobs]
        rows, baselines = board.leaderboard(
            experiment, jobs, crud.metric_points_of(session, job_ids=ids),
            crud.training_events_of(session, job_ids=ids), greater)
        final = state not in ACTIVE_STATES
        out.update(leaderboard=rows, baselines=baselines,
                   recommendation=board.recommend(rows, metric, greater, final))
    if experiment.search is not None:
        shown = {k: experiment.search[k] for k in ("space", "trials", "sampler", "pruner", "parallel")}
        shown["budget"] = experiment.search.get("budget")
        shown["budget_ended"] = experiment.search.get("budget_ended")
        shown["spent"] = search.spent(experiment, jobs)
        if detailed:
            shown["trial_outcomes"] = search.trial_outcomes(session, experiment, jobs)
        if detailed and database_url:
            shown.update(search.summary(database_url, experiment))
        out["search"] = shown
    return ExperimentPublic.model_validate(out)


@router.get("", response_model=ExperimentsPublic)
def list_experiments(
    session: SessionDep, principal: PrincipalDep, dataset_id: IdQuery = None, limit: Limit = 100,
    offset: Offset = 0,
) -> ExperimentsPublic:
    """List experiments, newest first, with each job's state (GET one for its leaderboard)."""
    rows, count = crud.list_experiments(session, principal=principal, dataset_id=dataset_id,
                                        limit=limit, offset=offset)
    jobs = crud.jobs_of(session, experiments=rows)
    return ExperimentsPublic(data=[_public(session, e, detailed=False, jobs=jobs[e.id]) for e in rows],
                             count=count)


@router.get("/{experiment_id}", response_model=ExperimentPublic)
def read_experiment(experiment_id: ExperimentIdPath, session: SessionDep, settings: SettingsDep,
                    principal: PrincipalDep) -> ExperimentPublic:
    """One experiment: each job's state and progress, the leaderboard with the baselines, and the
    recommended model."""
    experiment = _get_experiment_or_404(session, principal, experiment_id)
    return _public(session, experiment, detailed=True, database_url=settings.database_url)


@router.post("/{experiment_id}/cancel", response_model=ExperimentPublic)
def cancel_experiment(experiment_id: ExperimentIdPath, session: SessionDep,
                      principal: PrincipalDep) -> ExperimentPublic:
    """Cancel every job of the experiment still queued (at once) or running (within one step)."""
    experiment = _get_experiment_or_404(session, principal, experiment_id)
    jobs = crud.jobs_of(session, experiments=[experiment])[experiment.id]
    if experiment.search is not None and any(job.state in ACTIVE_STATES for job in jobs):
        # First, so that no worker ending a trial queues another (it reads the flag under a lock
        # on this row); then the trials queued until now are all in the list.
        experiment.cancel_requested = True
        session.commit()
        jobs = crud.jobs_of(session, experiments=[experiment])[experiment.id]
    touched = 0
    for job in jobs:
        if jobstate.cancel_queued(session, job_id=job.id):
            jobs_crud.add_event(session, job_id=job.id, kind="cancelled",
                                message=f"Cancelled before it started (experiment {experiment.id}).")
            touched += 1
        elif jobstate.request_cancel(session, job_id=job.id):
            jobs_crud.add_event(session, job_id=job.id, kind="cancel_requested",
                                message=f"Cancel requested with experiment {experiment.id}; the worker stops "
                                        "after the current optimizer step.")
            touched += 1
    if not touched:
        raise HTTPException(409, f"Every job of experiment {experiment_id} already ended; there is nothing "
                                 "to cancel.")
    experiment.cancel_requested = True
    session.commit()
    for job in jobs:
        session.refresh(job)
    return _public(session, experiment, detailed=False, jobs=jobs)


@router.delete("/{experiment_id}", status_code=204, response_class=Response)
async def delete_experiment(
    experiment_id: ExperimentIdPath, session: SessionDep, removal: RemovalDep, principal: PrincipalDep,
    delete_models: bool = Query(False, description="Also delete the jobs' tuned models (kept by default)."),
) -> Response:
    """Delete a stopped experiment and its jobs, each as DELETE /jobs/{id} deletes it (rows and
    files). 409 while a job is queued or running. Tuned models stay unless `delete_models=true`."""
    experiment, jobs = await run_in_threadpool(_experiment_and_jobs, session, principal, experiment_id)
    active = [f"{job.id} ({job.state})" for job in jobs if job.state in ACTIVE_STATES]
    if active:
        raise HTTPException(409, f"Experiment {experiment_id} still has jobs queued or running: "
                                 f"{', '.join(active)}. Cancel it first (POST /experiments/{experiment_id}/"
                                 "cancel) and delete it once they have stopped.")
    if delete_models:
        # Checked for every model before anything goes, so a refusal leaves the experiment whole.
        for job in jobs:
            users = await run_in_threadpool(jobs_training_from, session, model_id=job.model_id)
            if users:
                raise HTTPException(409, f"Model {job.model_id} of experiment {experiment_id} is the base of "
                                         f"job(s) {', '.join(users)}; wait for them or delete the experiment "
                                         "without delete_models=true.")
    for job in jobs:
        try:
            await removal.remove_job(job, delete_model=delete_models)
        except ModelInUse as exc:  # a job from the model was queued since the check above
            raise HTTPException(409, str(exc)) from exc
    await run_in_threadpool(_delete_experiment_row, session, experiment)
    return Response(status_code=204)


def _experiment_and_jobs(session: Session, principal: Principal,
                         experiment_id: str) -> tuple[Experiment, list[Job]]:
    experiment = _get_experiment_or_404(session, principal, experiment_id)
    return experiment, crud.jobs_of(session, experiments=[experiment])[experiment.id]


def _delete_experiment_row(session: Session, experiment: Experiment) -> None:
    if experiment.search is not None:
        search.delete_study(get_settings().database_url, experiment.id)
    crud.delete_experiment(session, experiment=experiment)
    session.commit()
